"""Reading data sources into rows, and the cells of a row into clean values.

Sources: the bundled sets (`builtin:math`, `builtin:visual` and their `:test` splits), local
.json / .jsonl / .parquet files, and `datasets` hub names. JSON and JSON lines are read here, line
by line, because `datasets` aborts a whole file on one bad line; unreadable lines are counted
(they become `malformed` drops), never raised. Parquet and hub data go through `load_dataset`.

Cold-start pools (`read_pool`): the bundled `builtin:coldstart` / `builtin:visual` pools
(data_modules/coldstart_pool.py) or a local file, with a fingerprint of their content for the cache.

Cells: `as_text` turns a question, answer or source into clean text (or MALFORMED), `image_values`
an image cell into a list, `choice_options` a multiple-choice cell into texts, `trace_candidates`
a pool's traces cell into (text, correct flag) pairs; `prompt_id` is the stable id of a row
without an id column.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "BUILTINS",
    "MALFORMED",
    "POOL_BUILTINS",
    "Source",
    "as_text",
    "choice_options",
    "image_values",
    "load_rows",
    "prompt_id",
    "read_pool",
    "read_prompt_source",
    "source_dir",
    "trace_candidates",
]

BUILTINS = ("builtin:math", "builtin:math:test", "builtin:visual", "builtin:visual:test", "builtin:chain", "builtin:chain:test")
POOL_BUILTINS = ("builtin:coldstart", "builtin:visual", "builtin:chain")  # cold-start pools (builtin:visual: images)
MALFORMED = object()  # sentinel: a value that cannot be used as text
_ID_SEP = "\x1f"  # unit separator: ("a", "bc") and ("ab", "c") must not hash alike


class Source(NamedTuple):
    """A data source, read: its rows, column names, unreadable lines, display name, and the
    folder that relative image paths resolve against (None for builtins and hub data)."""

    rows: list[Any]
    columns: list[str]
    unreadable: int
    name: str
    base_dir: Path | None


def prompt_id(question: str, answer: str) -> str:
    """Stable id of a prompt without an id column: sha1 of question + separator + answer, 16 hex."""
    return hashlib.sha1(f"{question}{_ID_SEP}{answer}".encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- cells
def image_values(value: Any) -> list[Any]:
    """A row's image cell as a list: None -> [], a list/tuple -> itself, one image -> [it]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def as_text(value: Any, numbers_ok: bool) -> Any:
    """The value as clean text, None when absent, or MALFORMED."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return MALFORMED
    if isinstance(value, bool):
        return MALFORMED
    if numbers_ok and isinstance(value, (int, float)):
        return str(value) if math.isfinite(value) else MALFORMED
    if not isinstance(value, str):
        return MALFORMED
    try:
        value.encode("utf-8")  # lone surrogates (e.g. JSON "\ud800") cannot be tokenized or saved
    except UnicodeEncodeError:
        return MALFORMED
    return value.strip()


def choice_options(value: Any) -> list[str] | dict[str, str] | None:
    """A multiple-choice cell as a list of texts or a {letter: text} dict; None when absent or unusable.

    Also reads the hub form {"label": [letters], "text": [texts]} (e.g. ARC). An unusable cell (not
    a list or dict, or an entry that is not text or a number) is ignored rather than dropping the
    row: the prompt still trains, it is just not graded as a choice.
    """
    if isinstance(value, dict) and set(value) == {"label", "text"}:
        labels, texts = value["label"], value["text"]
        if isinstance(labels, (list, tuple)) and isinstance(texts, (list, tuple)) and len(labels) == len(texts):
            value = dict(zip(labels, texts))
    if isinstance(value, dict):
        items = {as_text(k, numbers_ok=False): as_text(v, numbers_ok=True) for k, v in value.items()}
        if items and all(isinstance(k, str) and k and isinstance(v, str) for k, v in items.items()):
            return items
        return None
    if isinstance(value, (list, tuple)):
        texts = [as_text(v, numbers_ok=True) for v in value]
        return texts if texts and all(isinstance(t, str) for t in texts) else None
    return None


def trace_candidates(traces: Any) -> list[tuple[str, bool | None]] | None:
    """[(text, correct flag or None)] of the usable items of a traces cell (strings, or {"text",
    "correct"} dicts; blank or non-text items are skipped); None if the cell is not a list."""
    if not isinstance(traces, (list, tuple)):
        return None
    out = []
    for item in traces:
        flag = None
        if isinstance(item, dict):
            flag = item.get("correct")
            if not isinstance(flag, bool):
                flag = None
            item = item.get("text")
        text = as_text(item, numbers_ok=False)
        if text is not None and text is not MALFORMED and text:
            out.append((text, flag))
    return out


# ------------------------------------------------------------------------------------------- files
def _read_json_lines(data: bytes) -> tuple[list[Any], int]:
    """Rows of a JSON-lines file; unreadable lines (bad UTF-8, bad JSON) are counted, not raised."""
    rows, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            bad += 1
    return rows, bad


def _read_json(path: Path, split: str) -> tuple[list[Any], int]:
    """A .json file: an array of objects, {split: [...]}, columns {key: [values]}, or JSON lines."""
    data = path.read_bytes()
    try:
        whole = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return _read_json_lines(data)  # JSON lines saved as .json, or a broken file: go line by line
    if isinstance(whole, list):
        return whole, 0
    if isinstance(whole, dict):
        if isinstance(whole.get(split), list):
            return whole[split], 0
        if whole and all(isinstance(v, list) for v in whole.values()):
            lengths = {len(v) for v in whole.values()}
            if len(lengths) == 1:
                keys = list(whole)
                return [dict(zip(keys, vals)) for vals in zip(*whole.values())], 0
        return [whole], 0
    return [whole], 0


def load_rows(path: str, split: str) -> tuple[list[Any], list[str], int, str]:
    """(rows, column names, unreadable line count, display name) of a file or hub data set."""
    if path.startswith("builtin:"):
        raise ValueError(f"unknown builtin data set {path!r}; available: {list(BUILTINS)}")
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(
                f"data file {str(p)!r} does not exist (or is not a file); set --data.init_args.path"
            )
        if suffix == ".jsonl":
            rows, bad = _read_json_lines(p.read_bytes())
        elif suffix == ".json":
            rows, bad = _read_json(p, split)
        elif suffix == ".parquet":
            from datasets import load_dataset  # slow import

            ds = load_dataset("parquet", data_files=str(p), split="train")
            return list(ds), list(ds.column_names), 0, p.name
        else:
            raise ValueError(f"unsupported data file {p.name!r}; use .json, .jsonl or .parquet (or a hub name)")
        columns: dict[str, None] = {}
        for row in rows:
            if isinstance(row, dict):
                columns.update(dict.fromkeys(row))
        return rows, list(columns), bad, p.name
    from datasets import load_dataset

    try:
        ds = load_dataset(path, split=split)
    except Exception as err:  # re-raised with what to change
        raise ValueError(
            f"could not load {path!r} (split {split!r}) with datasets.load_dataset: {err}. Without a hub "
            "connection, point --data.init_args.path at a local .json/.jsonl/.parquet file or use 'builtin:math'."
        ) from err
    return list(ds), list(ds.column_names), 0, path


def source_dir(path: str) -> Path | None:
    """The folder that relative image paths of a local data file resolve against; None otherwise."""
    p = Path(path).expanduser()
    return p.resolve().parent if p.is_file() else None


def read_prompt_source(path: str, split: str, builtin_size: int, builtin_seed: int) -> Source:
    """A prompt source: a bundled set (test splits have TEST_SIZE problems), a file or a hub name."""
    if path in BUILTINS:
        if path.startswith("builtin:math"):
            from data_modules import builtin_math as builtin
        elif path.startswith("builtin:chain"):
            from data_modules import builtin_chain as builtin
        else:
            from data_modules import builtin_visual as builtin
        test = path.endswith(":test")
        n = builtin.TEST_SIZE if test else builtin_size
        rows: list[Any] = builtin.generate_problems(n, builtin_seed, split="test" if test else "train")
        return Source(rows, list(rows[0]), 0, path, None)
    rows, columns, unreadable, name = load_rows(path, split)
    return Source(rows, columns, unreadable, name, source_dir(path))


def read_pool(path: str, builtin_size: int, builtin_seed: int) -> tuple[Source, str]:
    """A cold-start pool and its fingerprint: sha256 of the file's bytes, or the builtin's settings."""
    if path in POOL_BUILTINS:
        from data_modules import coldstart_pool

        if path == "builtin:coldstart":
            rows: list[Any] = coldstart_pool.generate_pool(builtin_size, builtin_seed)
            columns = ["id", "source", "question", "answer", "level", "k", "n", "traces"]
        elif path == "builtin:chain":
            from data_modules import builtin_chain

            rows = builtin_chain.generate_pool(builtin_size, builtin_seed)
            columns = list(rows[0]) if rows else ["id", "source", "question", "answer", "level", "k", "n", "traces"]
        else:
            rows = coldstart_pool.generate_visual_pool(builtin_size, builtin_seed)
            columns = list(rows[0])
        return Source(rows, columns, 0, path, None), f"{path}/{builtin_size}/{builtin_seed}"
    if path.startswith("builtin:"):
        raise ValueError(
            f"unknown builtin pool {path!r}; use one of {', '.join(POOL_BUILTINS)} or a .json/.jsonl/.parquet file"
        )
    rows, columns, unreadable, name = load_rows(path, "train")
    fingerprint = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    return Source(rows, columns, unreadable, name, source_dir(path)), fingerprint
