"""Writes that never leave a half-written file in place of a good one (issue #26, README "Faults we test").

- `AtomicCheckpointIO`: Lightning's file checkpoints (single process, DDP) are written to
  `<path>.tmp`, then renamed over `<path>`. A full disk (ENOSPC), a file-size limit (EFBIG,
  `ulimit -f`) or a kill during the write leaves the previous `last.ckpt` as it was, and no temp
  file. The CLI installs it on every Trainer whose strategy uses Lightning's default
  `TorchCheckpointIO` (ares_lit/cli.py).
- `atomic_deepspeed_checkpoints`: DeepSpeed writes a folder, not a file (`last.ckpt/latest` and
  `last.ckpt/<tag>/*_states.pt`, a shard per rank). Each save goes to a new tag folder; the `latest`
  file, replaced atomically once every rank has written, is the commit; older tag folders are
  removed after it. A kill at any moment leaves `latest` naming a complete tag. The CLI installs it
  on every DeepSpeed strategy; `deepspeed_checkpoint_problem` names what an interrupted folder lacks,
  and loading such a folder stops with that message (resume and `python -m ares_lit.export`).
- `write_text_atomic`: the same for small result files (evaluate's `metrics.json`).
- `DISK_FULL`: the errnos that mean "no room"; the CLI turns them into a one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import types
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = [
    "AtomicCheckpointIO", "DISK_FULL", "IncompleteCheckpointError", "NO_ROOM_HINT", "atomic_deepspeed_checkpoints",
    "check_deepspeed_checkpoint", "deepspeed_checkpoint_problem", "disk_full_errno", "no_room", "write_text_atomic",
]  # fmt: skip

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


NO_ROOM_HINT = "the disk is full or a file-size limit (ulimit -f) was reached: free space, then"


def disk_full_errno(exc: BaseException) -> int | None:
    """The errno of a full disk behind `exc`, else None: an OSError's own, or the "(os error N)" that
    safetensors' Rust writer puts in its SafetensorError (not an OSError)."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in DISK_FULL else None
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found and int(found.group(1)) in DISK_FULL else None


def no_room(exc: BaseException, what: str, intact: str = "the previous file, if any, is intact") -> OSError:
    """The OSError to raise for a full disk: it names what could not be written and what survived."""
    number = disk_full_errno(exc) or errno.ENOSPC
    return OSError(number, f"could not write {what} ({os.strerror(number)}); {intact}")


@contextlib.contextmanager
def _undone_on_failure(undo: Any, what: str):
    """Run the block; on an OSError call `undo()` (remove what was half-written), then re-raise it, a full
    disk as `no_room(exc, what)`."""
    try:
        yield
    except OSError as exc:
        with contextlib.suppress(OSError):
            undo()
        raise no_room(exc, what) if disk_full_errno(exc) else exc


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through `<path>.tmp` and a rename; on failure remove the temp file and raise."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with _undone_on_failure(tmp.unlink, str(path)):
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that saves to a temp name and renames it over the checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = f"{path}.tmp"
        with _undone_on_failure(lambda: os.remove(tmp), f"the checkpoint {path}"):
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)
            os.replace(tmp, path)


class IncompleteCheckpointError(ValueError):
    """A DeepSpeed checkpoint folder whose save never finished."""


def deepspeed_checkpoint_problem(folder: str | Path) -> str | None:
    """What a DeepSpeed checkpoint folder lacks to be loadable; None when it is complete."""
    folder = Path(folder)
    latest = folder / "latest"
    if not latest.is_file():
        return "it has no 'latest' file: its first save never finished"
    tag = latest.read_text(encoding="utf-8").strip()
    if not tag or not (folder / tag).is_dir():
        return f"its 'latest' file names {tag!r}, which is not a folder in it"
    if not any((folder / tag).glob("*model_states.pt")):
        return f"its tag folder {tag!r} holds no model states"
    return None


def check_deepspeed_checkpoint(folder: str | Path) -> None:
    """Raise IncompleteCheckpointError, naming the folder and what it lacks, for an interrupted save."""
    problem = deepspeed_checkpoint_problem(folder)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"the DeepSpeed checkpoint {str(folder)!r} is incomplete ({problem}; a save was interrupted). Nothing "
            "was loaded. Delete that folder and start again, or pass --ckpt_path=PATH of a complete checkpoint"
        )


def _save(strategy: Any, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
    """DeepSpeedStrategy.save_checkpoint, committed by an atomic `latest` (see the module docstring)."""
    if storage_options is not None:
        raise TypeError("`storage_options` is not supported for DeepSpeed checkpoints (they are DeepSpeed's own folders)")
    folder = Path(strategy.broadcast(str(filepath)))  # every rank writes its shards into one folder
    tag = strategy.broadcast(f"step{int(checkpoint.get('global_step', 0)):07d}-{os.urandom(4).hex()}")
    client = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
    undo = (lambda: shutil.rmtree(folder / tag, ignore_errors=True)) if strategy.is_global_zero else (lambda: None)
    with _undone_on_failure(undo, f"the checkpoint {folder}"):
        strategy.deepspeed_engine.save_checkpoint(
            str(folder), client_state=client, tag=tag, save_latest=False,
            exclude_frozen_parameters=strategy.exclude_frozen_parameters,
        )  # fmt: skip
        strategy.barrier("ares_lit_deepspeed_save")
        if strategy.is_global_zero:
            write_text_atomic(folder / "latest", tag)  # the commit: until here `latest` names the previous save
    if strategy.is_global_zero:
        for old in folder.iterdir():
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    strategy.barrier("ares_lit_deepspeed_saved")


def _checked_load(strategy: Any, original: Any) -> Any:
    """DeepSpeedStrategy.load_checkpoint that follows `latest` to any tag (Lightning's own check insists on a
    `checkpoint/` subfolder) and refuses an interrupted save by name."""

    def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        path = Path(checkpoint_path)
        if not path.is_dir() or (strategy.load_full_weights and strategy.zero_stage_3):
            return original(checkpoint_path, weights_only)  # a single file: Lightning's path and messages
        check_deepspeed_checkpoint(path)
        module = strategy.lightning_module
        _, client_state = strategy.deepspeed_engine.load_checkpoint(
            str(path), load_optimizer_states=module.trainer.state.fn == "fit", load_lr_scheduler_states=False,
            load_module_strict=module.strict_loading,
        )  # fmt: skip
        if client_state is None:
            raise IncompleteCheckpointError(f"DeepSpeed could not load the checkpoint {str(path)!r}")
        return client_state

    return load_checkpoint


def atomic_deepspeed_checkpoints(strategy: Any) -> None:
    """Make a Lightning DeepSpeedStrategy's folder checkpoints atomic, and its loads refuse interrupted ones."""
    if getattr(strategy, "_ares_atomic_saves", False):
        return
    strategy.save_checkpoint = types.MethodType(_save, strategy)
    strategy.load_checkpoint = _checked_load(strategy, strategy.load_checkpoint)
    strategy._ares_atomic_saves = True
