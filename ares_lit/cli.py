"""The `python -m ares_lit` command line: a LightningCLI whose model and data are chosen by class_path.

A YAML config picks a stage, e.g. `python -m ares_lit fit --config configs/aepo.yaml`, and every
field can be overridden on the command line (`--trainer.max_steps 5`, `--model.init_args.lr 1e-6`).
`--print_config` prints the fully resolved config with every default.
"""

from __future__ import annotations

import importlib

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI

from ares_lit.launch import prepare_launch

# TensorBoard under runs/ unless a config says otherwise.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs"},
    },
}


class AresCLI(LightningCLI):
    """LightningCLI with `fit`, `validate` and `test`; models and data by class_path.

    `validate` and `test` sample and grade the DataModule's hold-out (`data.val_path` /
    `data.val_size`) as `fit`'s validation does (ares_lit/modules/validation.py). `predict` is not
    offered: no ares_lit module has a predict step (use `python -m ares_lit.infer` or `.evaluate`).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands.pop("predict", None)
        return commands

    def before_instantiate_classes(self) -> None:
        # `trainer.enable_progress_bar: false` wins over a progress bar listed in the config's
        # callbacks (configs/*.yaml list callbacks.progress.RolloutProgressBar): Lightning refuses the pair.
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.enable_progress_bar is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks if not _is_progress_bar(c)]

    def before_fit(self) -> None:
        # Before any model loads: the SLURM layout must match the Trainer (ares_lit/launch.py).
        prepare_launch(self.trainer, self.datamodule)

    before_validate = before_test = before_fit


def _is_progress_bar(entry) -> bool:
    class_path = getattr(entry, "class_path", None)
    if class_path is None:
        return isinstance(entry, ProgressBar)
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def main(args: list[str] | None = None) -> AresCLI:
    return AresCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
