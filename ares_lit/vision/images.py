"""Reading one image of a data row, whatever form it arrives in.

A row's image may be a file path (absolute, or relative to the data file's folder), raw bytes
(PNG/JPEG/...), a PIL image, or a `datasets` Image feature (decoded: a PIL image; undecoded: a
dict with "bytes" and/or "path"). Every failure, a missing file, corrupt bytes, an unknown form,
raises `ImageError` with the reason, so that callers can skip the row and count it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

__all__ = ["ImageError", "load_image", "image_reason"]


class ImageError(ValueError):
    """An image that cannot be used; `reason` is "missing_image" or "bad_image"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_image(value: Any, base_dir: str | os.PathLike | None = None):
    """The image as an RGB `PIL.Image`, fully decoded (so corrupt data fails here, not later).

    Args:
        value: a path (str / PathLike), bytes, a PIL image, or a dict {"bytes": ..., "path": ...}.
        base_dir: folder that relative paths are resolved against (the data file's folder).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, dict):  # datasets.Image(decode=False) and parquet exports
            data, path = value.get("bytes"), value.get("path")
            value = data if data else path
        if isinstance(value, (bytes, bytearray, memoryview)):
            source: Any = io.BytesIO(bytes(value))
            what = f"{len(value)} bytes"
        elif isinstance(value, (str, os.PathLike)) and str(value).strip():
            path = Path(value).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise ImageError("missing_image", f"image file {str(path)!r} does not exist")
            source, what = path, str(path)
        else:
            raise ImageError("bad_image", f"unsupported image value of type {type(value).__name__}")
        try:
            image = Image.open(source)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageError("bad_image", f"cannot decode image ({what}): {err}") from err
    if image.width < 1 or image.height < 1:
        raise ImageError("bad_image", f"image has size {image.width}x{image.height}")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_reason(err: Exception) -> str:
    """The drop-count key for an image failure."""
    return getattr(err, "reason", "bad_image")
