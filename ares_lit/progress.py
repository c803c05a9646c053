"""Rollout phases on the progress bar: the step's code reports what it is doing, a progress-bar
callback (if one is attached) shows it.

    report_phase(trainer, "generation", done=3, total=8)

Every callback of the trainer that has an `on_rollout_phase(phase, done, total)` method is told;
with none attached this does nothing. It lets the rollout step report progress without importing
any callback (callbacks do not import each other). `current_phase(trainer)` is the phase last
reported, recorded before any callback is told (a signal handler reads it: callbacks/preemption.py).
"""

from __future__ import annotations

import weakref

__all__ = ["PHASES", "current_phase", "forget_last_step_metrics", "report_phase"]

_CURRENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

PHASES = ("weight_sync", "generation", "grading", "scoring", "update", "validation")


def report_phase(trainer, phase: str, done: int | None = None, total: int | None = None) -> None:
    """Tell the trainer's progress display that the step is in `phase` (`done` of `total` items)."""
    if trainer is None:
        return
    try:
        _CURRENT[trainer] = phase
    except TypeError:  # a stand-in without weak references (a test's namespace): nothing to record
        pass
    for callback in getattr(trainer, "callbacks", None) or []:
        hook = getattr(callback, "on_rollout_phase", None)
        if hook is not None:
            hook(phase, done, total)


def current_phase(trainer, clear: bool = False) -> str | None:
    """The phase `trainer`'s step last reported (None: none yet, or cleared); `clear` forgets it (a step ended)."""
    try:
        return _CURRENT.pop(trainer, None) if clear else _CURRENT.get(trainer)
    except TypeError:
        return None


def forget_last_step_metrics(trainer) -> None:
    """Make the metrics logged on the previous step (`on_step=True`, `on_epoch=False`) invisible to this one.

    Lightning keeps a metric's last `self.log` value until the epoch ends and logs it at every step,
    logged again or not. A step without an update (no informative group) logs no `train/*` or
    `grading/*` values, so its panels would show the previous step's numbers again, and
    `train/skipped_steps` would stay 1 after the first skip. Lightning clears `has_reset` when a
    key is logged again (`_ResultCollection.log`), so each step shows what it logged, and nothing else.
    """
    results = getattr(trainer, "_results", None)
    for metric in (results.values() if results is not None else ()):
        meta = getattr(metric, "meta", None)
        if meta is not None and meta.on_step and not meta.on_epoch and hasattr(metric, "has_reset"):
            metric.has_reset = True
