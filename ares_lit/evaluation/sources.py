"""Evaluation data sources: files, `datasets` names and the bundled held-out test splits.

A source is given on the command line as a path or name (`--data a.jsonl --data builtin:math`),
or as a JSON object with per-source keys:
`--data '{"path": "mc.jsonl", "question_key": "problem", "answer_key": "label", "name": "mc"}'`.
Rows are read, cleaned and tokenized by `PromptDataModule` (the training code), so bad rows are
skipped and counted exactly as in training, and images work the same way. `builtin:math` and
`builtin:visual` mean their held-out *test* splits here (`builtin:math:test`): problems drawn
from a part of the problem space that the training split never draws from (see
`data_modules/builtin_math.py`). Rows without a `source` column get the source's name.

A JSON source may also carry the DataModule settings of a training run (`--like_run` writes them):
`builtin_seed` / `builtin_size` (the bundled generators), and `val_size` with `seed`: the
hold-out that `PromptDataModule` takes out of `path` when a run has no `val_path` (the same rows,
drawn the same way; a builtin `path` then means its training split, whose hold-out was never
trained on).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Source", "parse_source", "check_columns", "check_sources", "load_problems"]

_TEST_SPLITS = {"builtin:math": "builtin:math:test", "builtin:visual": "builtin:visual:test", "builtin:chain": "builtin:chain:test"}
_KEYS = ("question_key", "answer_key", "image_key", "id_key", "split")
_OPTIONS = ("builtin_seed", "builtin_size", "val_size", "seed")  # PromptDataModule settings of a run's held-out data


@dataclass
class Source:
    """One evaluation data source."""

    path: str
    name: str = ""
    question_key: str = "question"
    answer_key: str = "answer"
    image_key: str | None = None
    id_key: str | None = None
    split: str = "test"
    options: dict = field(default_factory=dict)
    """PromptDataModule arguments (`_OPTIONS`); `val_size` means: the rows it holds out of `path`."""

    def as_dict(self) -> dict:
        return asdict(self)


def parse_source(spec: str, defaults: dict[str, Any]) -> Source:
    """A `--data` value (a path/name, or a JSON object with `path` and optional keys) as a Source."""
    spec = spec.strip()
    values = dict(defaults)
    if spec.startswith("{"):
        try:
            obj = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ValueError(f"--data {spec!r} starts with '{{' but is not valid JSON: {err}") from err
        unknown = set(obj) - {"path", "name", *_KEYS, *_OPTIONS}
        if "path" not in obj or unknown:
            raise ValueError(
                f"--data JSON needs 'path' and may have 'name', {', '.join(_KEYS + _OPTIONS)}; got keys {sorted(obj)}"
            )
        options = {k: obj[k] for k in _OPTIONS if k in obj}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in options.values()):
            raise ValueError(f"--data JSON: {', '.join(_OPTIONS)} must be integers; got {options}")
        values.update({k: obj[k] for k in _KEYS if k in obj})
        path = str(obj["path"])
        name = str(obj.get("name") or (Path(path).name if Path(path).suffix else path))
    else:
        path, name, options = spec, spec, {}
        if Path(spec).suffix.lower() in (".json", ".jsonl", ".parquet"):
            name = Path(spec).name  # a file's name, not its folder, labels its rows
    if options.get("val_size"):  # a run's hold-out of its training source: never trained on
        return Source(path=path, name=name, options=options, **{k: values[k] for k in _KEYS if k in values})
    if path in ("builtin:math:train", "builtin:visual:train", "builtin:chain:train"):
        raise ValueError(f"--data {path!r}: evaluate on the held-out test split ({path.rsplit(':', 1)[0]}), not on training data")
    path = _TEST_SPLITS.get(path, path)
    name = name if name not in _TEST_SPLITS.values() else name.rsplit(":", 1)[0]
    return Source(path=path, name=name, options=options, **{k: values[k] for k in _KEYS if k in values})


def check_sources(sources: list[Source]) -> None:
    """Fail on a missing local file before anything else loads."""
    for s in sources:
        if s.path.startswith("builtin:"):
            continue
        p = Path(s.path).expanduser()
        if p.suffix.lower() in (".json", ".jsonl", ".parquet") and not p.is_file():
            raise ValueError(f"--data: file {s.path!r} does not exist")


def _datamodule(source: Source, tokenizer_path: str, max_prompt_length: int, builtin_seed: int, **prompting):
    from data_modules.prompts import PromptDataModule

    options = {"builtin_seed": builtin_seed, **source.options}
    return PromptDataModule(
        path=source.path,
        tokenizer_path=tokenizer_path,
        question_key=source.question_key,
        answer_key=source.answer_key,
        image_key=source.image_key,
        id_key=source.id_key,
        split=source.split,
        max_prompt_length=max_prompt_length,
        batch_size=1,
        shuffle=False,
        **options,
        **prompting,
    )


def _as_option_error(err: Exception) -> ValueError:
    """PromptDataModule's messages name `--data.init_args.X`; here the option is `--X`."""
    text = str(err).replace("--data.init_args.path", "--data").replace("--data.init_args.", "--")
    text = text.replace("data.question_key", "--question_key").replace("data.answer_key", "--answer_key")
    text = text.replace("data.image_key", "--image_key").replace("data.id_key", "--id_key")
    return ValueError(text)


def check_columns(sources: list[Source], max_prompt_length: int, builtin_seed: int = 0) -> None:
    """Read every source and check its configured columns, before any tokenizer or model loads."""
    for s in sources:
        dm = _datamodule(s, "unused", max_prompt_length, builtin_seed)
        try:
            dm.check_columns()
        except (ValueError, FileNotFoundError) as err:
            raise _as_option_error(err) from err


def load_problems(
    sources: list[Source],
    tokenizer,
    tokenizer_path: str,
    max_prompt_length: int,
    builtin_seed: int = 0,
    limit: int = 0,
    **prompting,
) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """All sources' usable prompt records, in order (the first `limit` of each; 0 = all), and the
    skipped-row counts per source. `prompting` holds `prompt_suffix` / `system_prompt`."""
    problems: list[dict] = []
    drops: dict[str, dict[str, int]] = {}
    for s in sources:
        dm = _datamodule(s, tokenizer_path, max_prompt_length, builtin_seed, **prompting)
        dm.tokenizer = tokenizer
        try:
            dm.setup("test")
        except (ValueError, FileNotFoundError) as err:
            raise _as_option_error(err) from err
        records = dm.val_records if s.options.get("val_size") else dm.train_records
        for record in records[: limit or None]:
            record["source"] = record.get("source") or s.name  # the row's `source` column, else the source's name
            problems.append(record)
        drops[s.name] = dict(dm.drop_counts)
    return problems, drops
