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

__all__ = ["PHASES", "current_phase", "report_phase"]

_CURRENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

PHASES = ("weight_sync", "generation", "grading", "scoring", "update", "validation")


def report_phase(trainer, phase: str, done: int | None = None, total: int | None = None) -> None:
    """Tell the trainer's progress display that the step is in `phase` (`done` of `total` items)."""
    if trainer is None:
        return
    _CURRENT[trainer] = phase
    for callback in getattr(trainer, "callbacks", None) or []:
        hook = getattr(callback, "on_rollout_phase", None)
        if hook is not None:
            hook(phase, done, total)


def current_phase(trainer, clear: bool = False) -> str | None:
    """The phase `trainer`'s step last reported (None: none yet, or cleared); `clear` forgets it (a step ended)."""
    return _CURRENT.pop(trainer, None) if clear else _CURRENT.get(trainer)
