"""Every baseline overlay (configs/baselines/, issue #23) trains one step through the real CLI on the
tiny model, on top of configs/aepo.yaml + the `grpo` arm + configs/smoke.yaml (tiny-qwen2, hf
engine, the parity reward), and its own panel is read back from the TensorBoard event files.
One baseline runs in the default suite; the others are `slow` (CI runs them: `make test-slow`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
# baseline -> a panel only that method logs
PANELS = {
    "clip_cov": "train/clip_cov/ppo_clipfrac",
    "kl_cov": "train/kl_cov/selected_frac",
    "forking_tokens": "train/forking_frac",
    "entropy_bonus": "train/entropy_bonus",
    "adaptive_entropy": "train/entropy_coef",
    "overlong": "reward/length",
    "kimi_length": "reward/length",
    "shorter_better": "reward/length",
}
DEFAULT_SUITE = {"overlong"}


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_SUITE else pytest.param(n, marks=pytest.mark.slow) for n in sorted(PANELS)]
)
def test_baseline_trains_one_step_and_logs_its_panel(tmp_path, name):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    configs = ["configs/aepo.yaml", "configs/ablation/grpo.yaml", f"configs/baselines/{name}.yaml", "configs/smoke.yaml"]
    cmd = [sys.executable, "-m", "ares_lit", "fit", *[a for c in configs for a in ("--config", c)],
           "--trainer.max_steps=1", "--trainer.enable_progress_bar=false"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    acc = EventAccumulator(str(tmp_path / "runs" / "smoke" / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert len(acc.Scalars("train/pg_loss")) == 1
    assert PANELS[name] in tags, sorted(tags)
