"""RolloutProgressBar on real, short Trainer runs (the tiny regression of tests/cli_models.py).

A stand-in for the rollout step reports phases through `ares_lit.progress.report_phase` from
`on_train_batch_start`, as callbacks/rollout.py does, and records what the bar holds right then;
the rendered bar (tqdm writes to stdout) is read back too.
"""

import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ares_lit.progress import report_phase
from callbacks.progress import RolloutProgressBar, phase_text
from tests.cli_models import TinyData, TinyRegression


class FakeRollout(pl.Callback):
    """Reports the phases of a rollout step and snapshots the bar after each report."""

    def __init__(self, bar: RolloutProgressBar, grading_items: int = 3) -> None:
        self.bar, self.grading_items, self.seen = bar, grading_items, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        report_phase(trainer, "weight_sync")
        self._snap(trainer)
        report_phase(trainer, "generation", 0, 2)
        report_phase(trainer, "generation", 2, 2)
        self._snap(trainer)
        for i in range(1, self.grading_items + 1):
            report_phase(trainer, "grading", i, self.grading_items)
        self._snap(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._snap(trainer)

    def _snap(self, trainer):
        bar = self.bar.train_progress_bar
        postfix = getattr(bar, "postfix", None) or ""  # tqdm has no postfix until one is set
        self.seen.append((trainer.global_step, bar.desc.removesuffix(": "), postfix, bar.n, bar.total))


class TwoUpdatesPerBatch(TinyRegression):
    """Like an AEPO step with two mini-batches: two optimizer steps per training batch."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__(lr)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        for half in torch.chunk(torch.arange(batch[0].shape[0]), 2):
            x, y = batch[0][half], batch[1][half]
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.log("train/loss", loss, prog_bar=True)


def fit(tmp_path, model, bar, *callbacks, **trainer_kwargs):
    trainer = pl.Trainer(
        accelerator="cpu", callbacks=[bar, *callbacks], logger=False, enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs,
    )
    trainer.fit(model, TinyData(n=64, batch_size=8))
    return trainer


def test_step_driven_run_counts_steps_and_shows_phases(tmp_path, capsys):
    bar = RolloutProgressBar()
    rollout = FakeRollout(bar)
    trainer = fit(tmp_path, TinyRegression(), bar, rollout, max_steps=5)
    assert trainer.max_epochs == -1  # what made Lightning's Rich bar print "Epoch 0/-2"

    # Per step: weight_sync, generation 2/2, grading 3/3 (each in the postfix), then the step ends.
    assert len(rollout.seen) == 5 * 4
    for step in range(5):
        sync, gen, grade, end = rollout.seen[4 * step : 4 * step + 4]
        for snap in (sync, gen, grade):
            assert snap[:2] == (step, f"step {step}/5") and snap[3:] == (step, 5)
        assert sync[2].startswith("phase=weight_sync")
        assert gen[2].startswith("phase=generation 2/2")
        assert grade[2].startswith("phase=grading 3/3")
        assert "phase=" not in end[2] and "train/loss" not in end[2]  # cleared; metrics shown
        assert end[:2] == (step + 1, f"step {step + 1}/5") and end[3:] == (step + 1, 5)
    assert bar.phase is None

    out = capsys.readouterr().out  # the rendered bar
    assert "step 5/5: 100%" in out and "| 5/5 [" in out
    assert "phase=grading 3/3" in out and "phase=generation 2/2" in out
    assert "Epoch" not in out


def test_the_bar_counts_optimizer_steps_not_batches(tmp_path):
    bar = RolloutProgressBar()
    rollout = FakeRollout(bar, grading_items=1)
    fit(tmp_path, TwoUpdatesPerBatch(), bar, rollout, max_steps=6)
    ends = [snap for i, snap in enumerate(rollout.seen) if i % 4 == 3]
    assert [(s[1], s[3], s[4]) for s in ends] == [("step 2/6", 2, 6), ("step 4/6", 4, 6), ("step 6/6", 6, 6)]


def test_epoch_driven_run_shows_epochs_from_one(tmp_path, capsys):
    bar = RolloutProgressBar()
    rollout = FakeRollout(bar, grading_items=1)
    fit(tmp_path, TinyRegression(), bar, rollout, max_epochs=2)
    descs = {snap[1] for snap in rollout.seen}
    assert descs == {"epoch 1/2", "epoch 2/2"}
    assert rollout.seen[-1][3:] == (8, 8)  # Lightning's per-epoch bar: 8 batches of 8
    assert "epoch 2/2: 100%" in capsys.readouterr().out


def test_progress_within_a_phase_is_throttled(tmp_path, capsys):
    bar = RolloutProgressBar()
    rollout = FakeRollout(bar, grading_items=2000)  # a per-item report, 2000 times in ~no time
    fit(tmp_path, TinyRegression(), bar, rollout, max_steps=1)
    out = capsys.readouterr().out
    assert "phase=grading 2000/2000" in out  # the last report always shows
    renders = out.count("phase=grading")
    assert 1 <= renders < 50, renders


def test_phase_text():
    assert phase_text("scoring") == "scoring"
    assert phase_text("generation", 3, 8) == "generation 3/8"
    assert phase_text("grading", 5) == "grading 5"


def test_reports_without_a_shown_bar_are_harmless(tmp_path):
    bar = RolloutProgressBar(refresh_rate=0)  # a disabled bar, as on every rank but 0
    rollout = FakeRollout(bar)
    fit(tmp_path, TinyRegression(), bar, rollout, max_steps=2)
    assert all(snap[2] == "" for snap in rollout.seen)
    RolloutProgressBar().on_rollout_phase("generation", 1, 2)  # before any trainer: nothing to show
    report_phase(None, "generation")


def test_lightning_refuses_the_bar_with_enable_progress_bar_false():
    """Why a config that lists the bar must drop it when it sets `enable_progress_bar: false`."""
    with pytest.raises(MisconfigurationException, match="enable_progress_bar=False"):
        pl.Trainer(callbacks=[RolloutProgressBar()], enable_progress_bar=False)


@pytest.mark.parametrize("enabled", [True, False])
def test_a_config_listing_the_bar_runs_with_the_bar_on_or_off(tmp_path, monkeypatch, capsys, enabled):
    """configs/*.yaml list the bar; `--trainer.enable_progress_bar=false` (as tests pass) must still run.

    Lightning refuses a listed bar with the flag off, so the CLI drops the bar (ares_lit/cli.py)."""
    from ares_lit.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model:\n  class_path: tests.cli_models.TinyRegression\n"
        "data:\n  class_path: tests.cli_models.TinyData\n"
        "trainer:\n  max_steps: 3\n  accelerator: cpu\n  logger: false\n  enable_checkpointing: false\n"
        "  callbacks:\n    - class_path: callbacks.progress.RolloutProgressBar\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ares_lit"])
    cli = main(["fit", "--config", str(config), f"--trainer.enable_progress_bar={str(enabled).lower()}"])
    assert cli.trainer.global_step == 3
    bars = [c for c in cli.trainer.callbacks if isinstance(c, ProgressBar)]
    assert [type(b).__name__ for b in bars] == (["RolloutProgressBar"] if enabled else [])
    assert ("step 3/3: 100%" in capsys.readouterr().out) == enabled
