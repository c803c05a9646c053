"""Fault injection for the end-to-end tests: a real signal, sent by the run to itself at a chosen moment.

`SignalAt` is listed under `trainer.callbacks` of a test's overlay. When the step reports `phase`
(ares_lit/progress.py: generation, grading, scoring, update) during step `step` (0-based: the
trainer's global_step when the step began), it sends `signal` to its own process with os.kill:
the handler under test sees a real signal, at a deterministic point of a real step.
"""

import os
import signal as _signal

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
