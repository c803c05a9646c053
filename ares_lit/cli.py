"""The `python -m ares_lit` command line: a LightningCLI whose model and data are chosen by class_path.

A YAML config picks a stage, e.g. `python -m ares_lit fit --config configs/aepo.yaml`, and every
field can be overridden on the command line (`--trainer.max_steps 5`, `--model.init_args.lr 1e-6`,
`--rollout.n 8`). `--print_config` prints the fully resolved config with every default;
`--model.help CLASS` and `--rollout.help callbacks.rollout.RolloutCallback` print each field's description.

The AEPO stage's rollout settings live in a top-level `rollout:` group (the RolloutCallback, exposed
the way Lightning exposes a callback with `add_lightning_class_args`), so that `--rollout.n=8
--rollout.temperature=1.0` works; the callback is put first in the Trainer's callback list. A
config that still lists `callbacks.rollout.RolloutCallback` under `trainer.callbacks` runs as
before; giving both is an error that says what to move where.

Errors in the config or the data print one line (ares_lit/cli_errors.py) and exit with status 2;
`--debug` (anywhere on the command line) shows the full traceback instead. A run that fails before
its first training step removes the log folder (runs/<name>/version_N) it created.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import threading
import traceback
import warnings
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DeepSpeedStrategy

from ares_lit.atomic_io import DISK_FULL, NO_ROOM_HINT, AtomicCheckpointIO, atomic_deepspeed_checkpoints, check_deepspeed_checkpoint
from ares_lit.cli_errors import HINT, AresArgumentParser, short_error
from ares_lit.launch import prepare_launch
from callbacks.preemption import PreemptionCallback
from callbacks.rollout import RolloutCallback

# TensorBoard under runs/ unless a config says otherwise.
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs"},
    },
}

# Exceptions that, raised before the first training step, are a config or data error: one line.
SETUP_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, ImportError)


class _RunState:
    """Where the current `main` call is: set by AresCLI's hooks, read by `main`'s error handler."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.training = False  # the first training batch has started
        self.new_log_dir: str | None = None  # a log folder this run creates (removed if it fails to start)
        self.log_dir: str | None = None  # the logger's folder (named when TensorBoard cannot write)


_STATE = _RunState()


class _TrainingStarted(Callback):
    def on_train_batch_start(self, *args, **kwargs) -> None:
        _STATE.training = True


class AresCLI(LightningCLI):
    """LightningCLI with `fit`, `validate` and `test`; models and data by class_path; `rollout:`.

    `validate` and `test` sample and grade the DataModule's hold-out (`data.val_path` /
    `data.val_size`) as `fit`'s validation does (ares_lit/modules/validation.py). `predict` is not
    offered: no ares_lit module has a predict step (use `python -m ares_lit.infer` or `.evaluate`).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = dict(LightningCLI.subcommands())
        commands.pop("predict", None)
        return commands

    def add_arguments_to_parser(self, parser) -> None:
        # Subclass mode, not required: `rollout: null` (the cold start) adds no callback; a YAML
        # `rollout: {n: 4, ...}` without class_path means callbacks.rollout.RolloutCallback.
        parser.add_lightning_class_args(RolloutCallback, "rollout", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        # `trainer.enable_progress_bar: false` wins over a progress bar listed in the config's
        # callbacks (configs/*.yaml list callbacks.progress.RolloutProgressBar): Lightning refuses the pair.
        if trainer.enable_progress_bar is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks if not _is_a(c, ProgressBar)]
        _check_rollout(config)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # The rollout callback first: its on_train_batch_start makes the batch the others log
        # and time (the progress bar's step time includes the rollout).
        rollout = self._get(self.config_init, "rollout")
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        listed = trainer_config.get("callbacks") or []
        listed = list(listed) if isinstance(listed, list) else [listed]
        # Preemption (SIGTERM, SLURM's SIGUSR1) saves at the end of the step: on unless listed with other arguments.
        preemption = [] if any(_is_a(c, PreemptionCallback) for c in listed) else [PreemptionCallback()]
        trainer_config["callbacks"] = ([rollout] if rollout is not None else []) + listed + [_TrainingStarted()] + preemption
        trainer = self._instantiate_trainer(trainer_config, [])
        if isinstance(trainer.strategy, DeepSpeedStrategy):  # folders, written by DeepSpeed, not checkpoint_io
            atomic_deepspeed_checkpoints(trainer.strategy)  # a kill mid-save leaves `latest` on a complete save
        elif type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a failed save keeps the previous last.ckpt
        return trainer

    def before_fit(self) -> None:
        # Before any model loads: the SLURM layout must match the Trainer (ares_lit/launch.py).
        prepare_launch(self.trainer, self.datamodule)
        _check_resume_folder(self.config[self.subcommand].get("ckpt_path"), self.trainer)
        logger = self.trainer.logger
        log_dir = getattr(logger, "log_dir", None) if logger is not None else None
        _STATE.log_dir = log_dir
        if log_dir and not os.path.isdir(log_dir) and self.trainer.is_global_zero:
            new = os.path.abspath(log_dir)  # and the parents it creates (runs/aepo on a first run)
            while not os.path.isdir(os.path.dirname(new)) and os.path.dirname(new) != new:
                new = os.path.dirname(new)
            _STATE.new_log_dir = new

    before_validate = before_test = before_fit


def _check_resume_folder(ckpt_path: str | None, trainer: Trainer) -> None:
    """Before any model loads: an interrupted DeepSpeed save named by --ckpt_path (or found by `last`) stops the run."""
    if ckpt_path == "last":
        dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        found = [p for d in dirs for p in d.glob("last*.ckpt")]
        path = max(found, key=os.path.getmtime) if found else None  # Lightning's pick: the newest
    else:
        path = Path(ckpt_path) if ckpt_path and ckpt_path not in ("best", "hpc", "registry") else None
    if path is not None and path.is_dir():
        check_deepspeed_checkpoint(path)


def _import(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def _is_a(entry, base: type) -> bool:
    """A trainer.callbacks entry (a class_path Namespace, or an instance) is a `base`."""
    class_path = getattr(entry, "class_path", None)
    if class_path is None:
        return isinstance(entry, base)
    cls = _import(class_path)
    return isinstance(cls, type) and issubclass(cls, base)


def _check_rollout(config) -> None:
    """One place for the rollout settings, and only on a stage that makes rollouts."""
    listed = [c for c in (config.trainer.callbacks or []) if _is_a(c, RolloutCallback)]
    if listed and config.get("rollout") is not None:
        raise ValueError(
            "rollout settings are given twice: callbacks.rollout.RolloutCallback under trainer.callbacks and a "
            "top-level `rollout:` (or --rollout.*). Move the callback's init_args to `rollout:` and remove it from "
            "trainer.callbacks (see configs/aepo.yaml)"
        )
    model = config.get("model")
    model_cls = _import(model.class_path) if getattr(model, "class_path", None) else None
    if model_cls is not None and getattr(model_cls, "uses_rollouts", False) and config.get("rollout") is None and not listed:
        raise ValueError(
            f"{model.class_path} trains on rollouts and this config has no `rollout:` block (the rollout engine, n, "
            "temperature, ...): add one, as configs/aepo.yaml does"
        )
    _check_context(config, listed)
    if config.get("rollout") is not None and model_cls is not None and not getattr(model_cls, "uses_rollouts", False):
        raise ValueError(
            f"rollout settings apply to the AEPO stage only; {model.class_path} makes no rollouts: "
            "remove `rollout:` / --rollout.* from this run"
        )


def _check_context(config, listed) -> None:
    """The prompt and the response fit the model's context (its config.json; no model loads)."""
    from ares_lit.models.resolve import model_context

    rollout = config.get("rollout") or (listed[0] if listed else None)
    args = getattr(rollout, "init_args", rollout) if rollout is not None else None
    model_args = getattr(config.get("model"), "init_args", None)
    data_args = getattr(config.get("data"), "init_args", None)
    if args is None or model_args is None or data_args is None:
        return
    new, prompt = args.get("max_new_tokens"), data_args.get("max_prompt_length")
    context = model_context(model_args.get("model_path") or "")
    if isinstance(new, int) and isinstance(prompt, int) and context and prompt + new > context:
        raise ValueError(
            f"data.max_prompt_length {prompt} + rollout.max_new_tokens {new} exceed the context of "
            f"{model_args.get('model_path')} ({context} tokens): lower rollout.max_new_tokens or data.max_prompt_length"
        )


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing litlogger / litmodels" advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_console() -> None:
    """The console shows what the run does: no advertisements, no warnings about library internals.

    Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates (a FutureWarning per dataloader,
    nothing a user can act on). vLLM's log level is set where its engine starts (ares_lit/rollout).
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def main(args: list[str] | None = None, run: bool = True) -> AresCLI:
    """`python -m ares_lit`; `run=False` builds the model, data and Trainer without calling a subcommand."""
    _quiet_console()
    debug = "--debug" in (sys.argv[1:] if args is None else args)
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [a for a in sys.argv if a != "--debug"]
    else:
        args = [a for a in args if a != "--debug"]
    AresArgumentParser.debug = debug
    _STATE.reset()
    _quiet_disk_full_in_threads()
    try:
        return AresCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_class=AresArgumentParser,
            args=args,
            run=run,
        )
    except SETUP_ERRORS as exc:
        if debug or _STATE.training:
            raise
        if _STATE.new_log_dir and os.path.isdir(_STATE.new_log_dir):
            shutil.rmtree(_STATE.new_log_dir, ignore_errors=True)  # a failed start leaves no empty version_N
        sys.stderr.write(f"error: {short_error(exc)}\n       {HINT}\n")
        raise SystemExit(2) from None
    except OSError as exc:
        if debug or exc.errno not in DISK_FULL:
            raise
        sys.stderr.write(f"error: {_what_was_not_written(exc)}\n       {NO_ROOM_HINT} resume with --ckpt_path=last\n")
        raise SystemExit(1) from None


def _what_was_not_written(exc: OSError) -> str:
    """A full disk's message. TensorBoard writes from a thread and re-raises its error, without a file name,
    at the next log call: name the run's log folder instead."""
    if exc.filename or not any("tensorboard" in f.filename for f in traceback.extract_tb(exc.__traceback__)):
        return str(exc)
    where = f" in {_STATE.log_dir}" if _STATE.log_dir else ""
    return f"[Errno {exc.errno}] could not write TensorBoard's event file{where} ({exc.strerror}); the last checkpoint is intact"


def _quiet_disk_full_in_threads() -> None:
    """A full disk in TensorBoard's writer thread is reported once, by the main thread, not as a thread's traceback."""
    default = threading.excepthook
    if getattr(default, "ares_lit_quiet", False):  # main() ran before in this process
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL:
            return
        default(args)

    hook.ares_lit_quiet = True
    threading.excepthook = hook
