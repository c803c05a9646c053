"""End to end: `python -m ares_lit fit --config configs/coldstart.yaml` on a tiny random Qwen2. (The
exported folder as the AEPO stage's model: tests/e2e/test_quickstart.py runs the README's chain.)

Real parts throughout: the CLI, the Trainer, the curation (grading included), the tiny HF model,
the TensorBoard event files, which are read back, and the exported HF folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer


ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, config, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / config), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def coldstart_overlay(tmp: Path, path: str = "builtin:coldstart") -> Path:
    overlay = tmp / "coldstart_overlay.yaml"
    overlay.write_text(
        f"""
trainer:
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp / "runs"}, name: coldstart}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp / "ckpt"}, save_last: true, save_top_k: 0}}
model:
  init_args:
    model_path: builtin:tiny-qwen2
    lr: 3.0e-3
    warmup_steps: 0
    lr_schedule: constant
    export_dir: {tmp / "hf_model"}
    validation: {{n: 2, max_tokens: 16}}
data:
  init_args:
    path: {path}
    val_size: 6
    builtin_size: 64
    size: 40
    batch_size: 4
    max_length: 256
    cache_dir: {tmp / "curation"}
"""
    )
    return overlay


def test_coldstart_fit_curates_trains_validates_and_exports(tmp_path):
    res = run(tmp_path, "configs/coldstart.yaml", "--config", str(coldstart_overlay(tmp_path)))
    assert res.returncode == 0, res.stderr[-4000:]
    assert "cold-start curation: 40 selected" in res.stdout
    run_dir = next((tmp_path / "runs" / "coldstart").glob("version_*"))
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == 10  # 40 problems / batch 4, one epoch
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses  # it learns
    tags = set(acc.Tags()["scalars"])
    assert {"train/nll", "train/tokens", "train/pad_fraction", "data/usable_rows", "data/dropped_no_correct_trace"} <= tags
    assert any(t.startswith("bracket/") and t.endswith("/nll") for t in tags)
    assert any(t.startswith("curation/") and t.endswith("/L0") for t in tags)
    assert "curation/report/text_summary" in acc.Tags()["tensors"]
    assert {"curation/brackets", "curation/lengths"} <= set(acc.Tags()["images"])
    # Validation on the held-out split (configs/coldstart.yaml): the whole hold-out before the first
    # step and after the epoch, per source and level.
    assert [e.step for e in acc.Scalars("val/overall/avg_at_n")] == [0, 10]
    assert [e.step for e in acc.Scalars("val/builtin_math/easy/length")] == [0, 10]
    assert {"val/builtin_math/hard/pass_at_2", "val/overall/maj_at_2"} <= tags
    assert "val at step 10:" in res.stdout
    report = json.loads((run_dir / "curation_report.json").read_text())
    assert report["selected"] == 40 and sum(report["brackets_selected"].values()) == 40
    # The export reloads with transformers, tokenizer and chat template included.
    export = tmp_path / "hf_model"
    AutoModelForCausalLM.from_pretrained(export)
    assert AutoTokenizer.from_pretrained(export).chat_template
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


def test_pool_without_usable_rows_fails_before_the_model_loads(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"source": "s", "question": "What is 1 + 1?", "answer": "2", "k": 3, "n": 8, "traces": ["<think>1+1</think> \\boxed{3}"]},
        {"source": "s", "question": "What is 1 + 2?", "k": 3, "n": 8, "traces": ["\\boxed{3}"]},
        {"source": "s", "question": "What is 1 + 3?", "answer": "4", "traces": ["\\boxed{4}"]},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(tmp_path, "configs/coldstart.yaml", "--config", str(coldstart_overlay(tmp_path, str(pool))), timeout=300)
    assert res.returncode != 0
    assert "no usable problems in pool.jsonl" in res.stderr
    assert "'no_correct_trace': 1" in res.stderr and "'no_answer': 1" in res.stderr and "'no_pass_rate': 1" in res.stderr
    assert "Loading weights" not in res.stderr + res.stdout
