"""End to end: GSPO and CISPO through `python -m ares_lit fit` on the tiny random Qwen2 (HF engine).

`--model.init_args.policy_loss` selects a registered loss (ares_lit/core/losses.py); the run must
train every step with a finite policy loss, read back from the TensorBoard event files.
"""

import math

import pytest

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import fit, scalars


@pytest.mark.parametrize("loss", ["gspo", "cispo"])
def test_policy_loss_runs_through_the_cli(tmp_path, loss):
    overlay = write_overlay(tmp_path, "hf", steps=2)
    res = fit(tmp_path, "--config", str(overlay), f"--model.init_args.policy_loss={loss}")
    assert res.returncode == 0
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    acc = scalars(run_dir)
    pg = acc.Scalars("train/pg_loss")
    assert [e.step for e in pg] == sorted({e.step for e in pg}) and len(pg) == 2, [(e.step, e.value) for e in pg]
    assert all(math.isfinite(e.value) for e in pg), [e.value for e in pg]
    assert all(math.isfinite(e.value) and 0.0 <= e.value <= 1.0 for e in acc.Scalars("train/clipfrac"))
    hparams = (run_dir / "hparams.yaml").read_text()
    assert f"policy_loss: {loss}" in hparams  # the run used the selected loss
