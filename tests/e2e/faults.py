"""Fault injection for the end-to-end tests: a real signal, sent by the run to itself at a chosen moment.

`SignalAt` is listed under `trainer.callbacks` of a test's overlay. When the step reports `phase`
(ares_lit/progress.py: generation, grading, scoring, update) during step `step` (0-based: the
trainer's global_step when the step began), it sends `signal` to its own process with os.kill:
the handler under test sees a real signal, at a deterministic point of a real step.

`KillDuringSave` kills its own process with SIGKILL (nothing runs after it: no handler, no
finally) at a chosen moment of a chosen checkpoint save: half-way through one of the state files
DeepSpeed writes, just before the commit of `latest`, or just after it.
"""

import json
import os
import shutil
import signal as _signal
from pathlib import Path
from unittest import mock

import torch

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    def __init__(self, signal: str = "SIGTERM", phase: str = "generation", step: int = 1) -> None:
        self.signal, self.phase, self.step = getattr(_signal, signal), phase, step
        self.current: int | None = None  # global_step when the running step began
        self.fired = False

    # Not on_train_batch_start: the rollout runs in RolloutCallback's, which comes first. And not
    # global_step itself: the optimizer step inside `update` moves it.
    def on_train_start(self, trainer, pl_module) -> None:
        self.current = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.current = trainer.global_step

    def on_rollout_phase(self, phase: str, done=None, total=None) -> None:
        if not self.fired and phase == self.phase and self.current == self.step:
            self.fired = True
            os.kill(os.getpid(), self.signal)


_REWARD_CALLS: list[int] = []


def reward_first_call_only(responses, answers):
    """A `rollout.reward_fn`: the parity rule of configs/smoke_reward.py on its first call, then 0 for all.

    Every group after the first grading is all wrong, even after refills: steps 2 and up have no
    update (the skipped-step path of AEPOModule.training_step), deterministically.
    """
    _REWARD_CALLS.append(1)
    return [1.0 if len(r) % 2 == 0 and len(_REWARD_CALLS) == 1 else 0.0 for r in responses]


def _die() -> None:
    os.kill(os.getpid(), _signal.SIGKILL)


class KillDuringSave(pl.Callback):
    """SIGKILL during save number `save` (1-based) at `moment`:

    - "file1", "file2": the first / second `torch.save` of the save is written, cut to half its
      bytes, and the process dies (a kill while the file is written);
    - "commit": just before `latest` is replaced (every state file written, nothing committed);
    - "cleanup": just after (committed; the previous save's folder not yet removed).
    The patches are armed from this callback's on_save_checkpoint, which Lightning calls right
    before the strategy writes.
    """

    def __init__(self, save: int = 2, moment: str = "file1", record: str | None = None) -> None:
        self.save, self.moment, self.record, self.saves = save, moment, record, 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saves += 1
        if self.saves != self.save:
            return
        folder = Path(trainer.checkpoint_callback.dirpath)
        if self.record:  # what the checkpoint folder holds before this save: {relative path: bytes}
            files = {str(f.relative_to(folder)): f.read_bytes().hex() for f in sorted(folder.rglob("*")) if f.is_file()}
            Path(self.record).write_text(json.dumps(files))
        if self.moment.startswith("file"):
            which, real_save, calls = int(self.moment[4:]), torch.save, []

            def cut_save(obj, f, *args, **kwargs):
                real_save(obj, f, *args, **kwargs)
                calls.append(f)
                if len(calls) == which:
                    os.truncate(f, os.path.getsize(f) // 2)
                    _die()

            mock.patch.object(torch, "save", cut_save).start()
        elif self.moment == "commit":
            real_replace = os.replace

            def replace(src, dst, *args, **kwargs):
                if Path(dst).name == "latest":
                    _die()
                return real_replace(src, dst, *args, **kwargs)

            mock.patch.object(os, "replace", replace).start()
        elif self.moment == "cleanup":
            mock.patch.object(shutil, "rmtree", lambda *a, **k: _die()).start()
        else:
            raise ValueError(f"unknown moment {self.moment!r}")


class FileSizeLimitAt(pl.Callback):
    """At the start of step `step` (the trainer's global_step), cap the size of every file this process
    writes at what TensorBoard's event file already holds: the kernel's RLIMIT_FSIZE, which is what
    `ulimit -f` sets, so the next event written fails with a real EFBIG (Python ignores SIGXFSZ)."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            import resource

            events = max(Path(trainer.logger.log_dir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_size)
            resource.setrlimit(resource.RLIMIT_FSIZE, (events.stat().st_size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
