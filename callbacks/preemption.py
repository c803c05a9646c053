"""PreemptionCallback: SIGTERM or SLURM's SIGUSR1 saves a resumable checkpoint at the end of the step, then exits.

A signal can arrive at any moment: during the weight sync, generation, grading, scoring or the
update. Saving inside the signal handler (what Lightning's own SLURM handler does) would write a
state in the middle of a step: half an optimizer step, a controller that has seen half a batch.
This callback only records the signal. The step runs to its end, every callback updates its state
(κ, τ, the difficulty tracker), and then, at `on_train_batch_end`, the run saves `last.ckpt` in the
ModelCheckpoint's folder and exits with 128 + the signal number (143 for SIGTERM, 138 for SIGUSR1),
so that no wrapper mistakes a preempted run for a finished one. `--ckpt_path=last` (or the path it
prints) resumes it exactly: the same step, data position and controller state as an uninterrupted
run (tests/e2e/test_aepo_resume.py).

- A file checkpoint is written to a temporary name and renamed (the CLI's AtomicCheckpointIO), so
  a second kill during the save leaves the previous `last.ckpt` loadable. DeepSpeed writes a folder.
- Across ranks the decision is all-reduced at each step end: a signal seen by any rank stops all
  of them after the same step (SLURM signals every task; `kill` of one process signals one).
- Under SLURM, SIGUSR1 also requeues the job (`scontrol requeue`), as Lightning's own handler does;
  this callback replaces that handler, which would save in the middle of a step.
- The step must finish before the deadline: give SLURM a lead time longer than one step
  (`--signal=SIGUSR1@<seconds>`, configs/slurm/ares.sbatch). A signal that arrives before the first
  step (while models load) stops the run at once, as without this callback; the previous
  checkpoint is untouched.

The CLI adds this callback to every `fit` (ares_lit/cli.py); list it under `trainer.callbacks` to
change its arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from ares_lit.progress import current_phase, report_phase

__all__ = ["PreemptionCallback"]


class PreemptionCallback(pl.Callback):
    """Save and exit at the end of the step in which a preemption signal arrived.

    Args:
        signals: the signals that request a save and exit (names, e.g. SIGTERM, SIGUSR1, SIGINT).
        requeue: run `scontrol requeue <job id>` after the save. None (default): when the signal is
            SIGUSR1 and the run is a SLURM job.
    """

    def __init__(self, signals: list[str] | None = None, requeue: bool | None = None) -> None:
        names = ["SIGTERM", "SIGUSR1"] if signals is None else list(signals)
        bad = [n for n in names if not isinstance(getattr(signal, str(n), None), signal.Signals)]
        if bad or not names:
            raise ValueError(
                f"PreemptionCallback.signals: {bad or names} is not a list of signal names; use e.g. [SIGTERM, SIGUSR1]"
            )
        self.signals = [getattr(signal, n) for n in names]
        self.requeue = requeue
        self.received: signal.Signals | None = None
        self.phase: str | None = None  # the phase the signal arrived in (for the message)
        self._previous: dict = {}
        self._trainer: pl.Trainer | None = None

    # ------------------------------------------------------------------ signals
    def _handler(self, signum, frame) -> None:
        # Lightning's SIGTERM notifier (chained before this handler) makes its loops exit after the
        # batch, or in the middle of validation, without a checkpoint: this callback stops the run.
        connector = getattr(self._trainer, "_signal_connector", None)
        if connector is not None:
            connector.received_sigterm = False
        if self.received is None:
            self.received = signal.Signals(signum)
            self.phase = current_phase(self._trainer) if self._trainer is not None else None
            sys.stderr.write(
                f"[ares_lit] {self.received.name} received ({self.phase or 'between steps'}): the step finishes, "
                "then the run saves a checkpoint and exits\n"
            )
        previous = self._previous.get(signum)
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, frame)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before Lightning registers its own handlers (Trainer._run): it then keeps ours for SIGUSR1
        # (it adds its mid-step SLURM save only where no handler exists) and chains ours for SIGTERM.
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        self._trainer = trainer
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_validation_start(self, trainer, pl_module) -> None:
        report_phase(trainer, "validation")  # the phase a signal during validation names

    # ------------------------------------------------------------------ the save
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stop_if_signalled(trainer)
        current_phase(trainer, clear=True)  # between steps until the next one reports

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        # Where ModelCheckpoint saves after a validation run: a consistent point of the loop too.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: pl.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        received = self.received or signal.SIGTERM  # another rank's signal
        path = self._save(trainer)
        if trainer.is_global_zero:
            sys.stderr.write(
                f"[ares_lit] preempted by {received.name} during {self.phase or 'the step'} of step "
                f"{trainer.global_step}: saved {path} (step {trainer.global_step}); resume with "
                f"`python -m ares_lit fit ... --ckpt_path={path}`\n"
            )
            sys.stderr.flush()
            if self._should_requeue(received):
                _requeue()
        raise SystemExit(128 + int(received))

    def _should_requeue(self, received: signal.Signals) -> bool:
        if self.requeue is not None:
            return self.requeue
        return received == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ

    def _save(self, trainer: pl.Trainer) -> str:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folder = callback.dirpath
            name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        else:
            folder, name = os.path.join(trainer.default_root_dir, "checkpoints"), "last.ckpt"
        path = os.path.join(folder, name)
        trainer.save_checkpoint(path)  # atomic for a file (ares_lit/atomic_io.py); DeepSpeed writes a folder
        return path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, previous in self._previous.items():
                if signal.getsignal(sig) == self._handler:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def state_dict(self) -> dict:
        return {}


def _requeue() -> None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    try:
        rc = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        rc = None
    sys.stderr.write(f"[ares_lit] scontrol requeue {job}: {'done' if rc == 0 else f'failed ({rc})'}\n")
