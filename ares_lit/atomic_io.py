"""Writes that never leave a half-written file in place of a good one (issue #26, README "Faults we test").

- `AtomicCheckpointIO`: Lightning's file checkpoints (single process, DDP) are written to
  `<path>.tmp`, then renamed over `<path>`. A full disk (ENOSPC), a file-size limit (EFBIG,
  `ulimit -f`) or a kill during the write leaves the previous `last.ckpt` as it was, and no temp
  file. The CLI installs it on every Trainer whose strategy uses Lightning's default
  `TorchCheckpointIO` (ares_lit/cli.py); DeepSpeed writes its own folders.
- `write_text_atomic`: the same for small result files (evaluate's `metrics.json`).
- `DISK_FULL`: the errnos that mean "no room"; the CLI turns them into a one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "DISK_FULL", "write_text_atomic"]

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _no_room(exc: OSError, what: str) -> OSError:
    return OSError(exc.errno, f"could not write {what} ({exc.strerror}); the previous file, if any, is intact")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through `<path>.tmp` and a rename; on failure remove the temp file and raise."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _no_room(exc, str(path)) if exc.errno in DISK_FULL else exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that saves to a temp name and renames it over the checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = f"{path}.tmp"
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise _no_room(exc, f"the checkpoint {path}") if exc.errno in DISK_FULL else exc
