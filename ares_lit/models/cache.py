"""Atomic cache entries: built once, in a temp folder, renamed into place under a lock.

Every builtin model (the tiny random models, the converted SmolLM2) and every curated cold-start
set is a folder under `$ARES_LIT_CACHE` that several processes may want at once: DDP ranks,
parallel test workers, a training run and an `evaluate` beside it. `build_once` gives them one
rule:

- a folder at its final name is complete: it is only ever created by `os.replace` of a finished
  temp folder (`.<name>.tmp-*`, a sibling on the same file system), so a reader never sees a
  half-built entry, even one that reads without the lock;
- one process builds, under an exclusive `fcntl` lock on `.<name>.lock`; the others wait on the
  lock, then find the entry complete and reuse it;
- an entry's name carries the hash of its spec (`spec_name`), so a changed spec is built beside
  the old entry, never over it while another process reads it. An entry at the final name that
  is not complete (left by an older ares_lit that built in place, or damaged by hand) is moved
  aside first and deleted after the new one is in place;
- a temp folder left by a killed builder is ignored, and removed by the next build under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["build_once", "file_lock", "spec_name"]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (fcntl) on `path`, held for the block; released if the process dies."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def spec_name(base: str, spec: dict) -> str:
    """`<base>-<first 10 hex of sha256(spec)>`: the folder name of the entry built from `spec`."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    return f"{base}-{digest}"


def build_once(folder: str | Path, complete: Callable[[Path], bool], build: Callable[[Path], None]) -> Path:
    """The complete cache entry at `folder`, built by `build(tmp)` if no process has built it yet.

    `complete(path)` says whether a folder holds a finished entry (typically: its marker file
    matches the spec); `build(tmp)` writes the entry into the empty temp folder `tmp`, marker last.
    """
    folder = Path(folder)
    if complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if complete(folder):  # another process finished while we waited
            return folder
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # a killed builder's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            build(tmp)
            if not complete(tmp):
                raise RuntimeError(f"building the cache entry {folder} left it incomplete (its marker is missing)")
            umask = os.umask(0)  # mkdtemp makes the folder 0700: give it the usual permissions of a shared cache
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            old = None
            if os.path.lexists(folder):  # incomplete or foreign: aside first, deleted once the new one is in place
                old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
