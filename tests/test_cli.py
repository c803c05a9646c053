"""`python -m ares_lit` is a LightningCLI: subcommands, class_path selection, TensorBoard output."""

import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ares_lit", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check)


def test_help_lists_subcommands_and_no_predict():
    out = run_cli("--help").stdout
    for sub in ("fit", "validate", "test"):
        assert sub in out
    assert "predict" not in out  # no module has a predict step: it is not advertised
    res = run_cli("predict", "--help", check=False)
    assert res.returncode != 0 and "invalid choice" in res.stderr


def test_fit_from_yaml_with_class_path_and_override(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model:\n  class_path: tests.cli_models.TinyRegression\n  init_args:\n    lr: 0.05\n"
        "data:\n  class_path: tests.cli_models.TinyData\n"
        "trainer:\n  max_epochs: 4\n  accelerator: cpu\n  enable_progress_bar: false\n  log_every_n_steps: 1\n"
    )
    run_cli(
        "fit",
        "--config",
        str(config),
        "--model.init_args.lr=0.2",  # a LightningCLI override
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        cwd=tmp_path,
    )
    saved = next((tmp_path / "runs").rglob("config.yaml")).read_text()
    assert "lr: 0.2" in saved and "tests.cli_models.TinyRegression" in saved
    events = next((tmp_path / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == 32  # 4 epochs x 8 batches, logged every step
    assert losses[-1] < 0.1 * losses[0]  # it really trained
    assert list((tmp_path / "runs").rglob("*.ckpt"))


def test_unknown_class_path_fails_with_message(tmp_path):
    res = run_cli("fit", "--model", "tests.cli_models.DoesNotExist", "--data", "tests.cli_models.TinyData", cwd=tmp_path, check=False)
    assert res.returncode != 0
    assert "DoesNotExist" in res.stderr
