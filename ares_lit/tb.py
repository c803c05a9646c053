"""The run's TensorBoard writer, for the panels that `LightningModule.log` cannot draw (text,
histograms, figures)."""

from __future__ import annotations

from typing import Any

__all__ = ["tensorboard_writer"]


def tensorboard_writer(trainer: Any):
    """The `SummaryWriter` of the trainer's first TensorBoardLogger, or None when it has none."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None
