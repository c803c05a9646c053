"""RolloutProgressBar: Lightning's tqdm bar, counting steps for step-driven runs and showing the
rollout phase while a step samples, grades and scores.

An AEPO step spends minutes in its rollout before `training_step` runs. The rollout step reports
its phases with `ares_lit.progress.report_phase(trainer, phase, done, total)`; this bar shows
them in its postfix (`phase=grading 12/16, ...`), refreshed at once, and clears them when the step
ends. The main bar reads `step 3/8` for a run bounded by `trainer.max_steps` (Lightning's own
bar shows `Epoch 0`, and its Rich bar `Epoch 0/-2`, since such a run has `max_epochs=-1`), and
`epoch 1/3` over the epoch's batches otherwise.

It is the run's only progress bar (Lightning refuses two). With `trainer.enable_progress_bar:
false` Lightning refuses any bar in the callback list, so a config that lists this one must drop
it there (the CLI does).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["RolloutProgressBar", "phase_text"]


def phase_text(phase: str, done: int | None = None, total: int | None = None) -> str:
    """`grading 3/8`, `grading 3` or `grading`: what the bar shows for a reported phase."""
    if done is None:
        return phase
    return f"{phase} {done}/{total}" if total is not None else f"{phase} {done}"


class RolloutProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` with a step display and the current rollout phase.

    Args:
        refresh_rate: update the bar every this many steps (or batches); 0 disables it.
        process_position: the bar's line, for several trainers in one terminal.
        leave: keep each epoch's finished bar on screen (epoch-driven runs).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.phase: str | None = None  # what the step is doing now, e.g. "generation 4/16"; None between steps
        self._last_phase: str | None = None
        self._last_refresh = 0.0

    # ------------------------------------------------------------------ the main bar

    @staticmethod
    def counts_steps(trainer: pl.Trainer) -> bool:
        """True when `max_steps` ends the run (no epoch limit): the bar then counts optimizer steps."""
        return trainer.max_steps > 0 and trainer.max_epochs in (None, -1)

    def description(self, trainer: pl.Trainer) -> str:
        """`step 3/8` for a step-driven run, `epoch 1/3` (1-based) otherwise."""
        if self.counts_steps(trainer):
            return f"step {trainer.global_step}/{trainer.max_steps}"
        limit = trainer.max_epochs
        return f"epoch {trainer.current_epoch + 1}" + (f"/{limit}" if limit is not None and limit > 0 else "")

    @property
    def train_description(self) -> str:  # the new bar's first frame already reads "step 0/8"
        return self.description(self.trainer) if self._trainer is not None else super().train_description

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.counts_steps(trainer):
            # One bar for the whole run, over optimizer steps: an AEPO step may take several
            # optimizer steps per batch, and a resumed run starts at its restored step.
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step
            bar.n = trainer.global_step
        self.train_progress_bar.set_description(self.description(trainer), refresh=False)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.counts_steps(trainer):  # Lightning's per-epoch bar over batches
            super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(self.description(trainer))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.phase = None
        if not self.counts_steps(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        if self._should_update(trainer.global_step, bar.total) and not bar.disable:
            bar.set_description(self.description(trainer), refresh=False)
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also refreshes

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.counts_steps(trainer):
            super().on_train_epoch_end(trainer, pl_module)
        elif not self.train_progress_bar.disable:  # the step bar lives on across epochs
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.phase = None
        super().on_validation_end(trainer, pl_module)

    # ------------------------------------------------------------------ rollout phases

    def on_rollout_phase(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        """Show `phase` (with `done`/`total`) in the active bar's postfix (`ares_lit.progress.report_phase`).

        A new phase, or a finished one, refreshes at once; progress within a phase refreshes at
        most once per tqdm `mininterval` (0.1 s), so a per-item report cannot flood the terminal.
        """
        self.phase = phase_text(phase, done, total)
        bar = self._active_bar()
        if bar is None:
            return
        now = time.monotonic()
        if phase != self._last_phase or done == total or now - self._last_refresh >= bar.mininterval:
            trainer = self.trainer
            metrics = self.get_metrics(trainer, trainer.lightning_module) if bar is self._train_progress_bar else {}
            bar.set_postfix({"phase": self.phase, **metrics})
            self._last_phase, self._last_refresh = phase, now

    def _active_bar(self):
        """The training bar while it is shown, else the validation (or sanity-check) bar; None if neither."""
        if self._trainer is None or self.is_disabled:
            return None
        for bar in (self._train_progress_bar, self._val_progress_bar):
            if bar is not None and not bar.disable:
                return bar
        return None
