"""Rollout phases on the progress bar: the step's code reports what it is doing, a progress-bar
callback (if one is attached) shows it.

    report_phase(trainer, "generation", done=3, total=8)

Every callback of the trainer that has an `on_rollout_phase(phase, done, total)` method is told;
with none attached this does nothing. It lets the rollout step report progress without importing
any callback (callbacks do not import each other).
"""

from __future__ import annotations

__all__ = ["PHASES", "report_phase"]

PHASES = ("weight_sync", "generation", "grading", "scoring", "update", "validation")


def report_phase(trainer, phase: str, done: int | None = None, total: int | None = None) -> None:
    """Tell the trainer's progress display that the step is in `phase` (`done` of `total` items)."""
    if trainer is None:
        return
    for callback in getattr(trainer, "callbacks", None) or []:
        hook = getattr(callback, "on_rollout_phase", None)
        if hook is not None:
            hook(phase, done, total)
