"""Evaluate as a training run validated: `python -m ares_lit.evaluate --like_run runs/aepo/version_0`.

A run folder is a Lightning log folder (`runs/<name>/version_N`) holding the `config.yaml` that
LightningCLI saves there. From it evaluate takes, for every option not given on the command line:

- sampling and grading: the `model.init_args.validation` block (`n`, `k`, `temperature`, `top_p`,
  `top_k`, `max_tokens`, `seed`, `answer_fallback`, `grade_timeout`; a run without the block
  validated with `EvalSettings`' defaults, so those are the run's settings). Its `batch_size` is
  not taken: validation batches come from the DataModule, and evaluate's `--batch_size` is only
  the unit of resuming;
- prompting: `data.init_args.prompt_suffix` and `system_prompt` (the DataModule's defaults where
  the config omits them);
- the model: the run's export (`model.init_args.export_dir`, else `<run>/hf_model`; else
  `<run>/huggingface`, what `python -m ares_lit.export --local_dir <run>` writes);
- the data, only when `--data` is not given: the run's held-out problems, `data.init_args.val_path`
  read with the run's column keys, `builtin_seed` and prompt-length limit (`max_prompt_length`; the
  cold-start DataModule's `max_length`), its first `val_size` problems (`--limit`); or, for an AEPO
  run without `val_path`, the `val_size` rows its DataModule held out of `data.init_args.path`.
  With `--data` given, `--limit` and `--max_prompt_length` keep evaluate's defaults.

Without `--like_run`, a `--model_path` folder exported from a run implies it (`find_run`: the run
its `ares_export.json` names, else the folder around it); `--no_like_run` turns that off.

Precedence: a flag on the command line > the run's setting > evaluate's default (`DEFAULTS` here
for sampling and grading: the validation block of the embedded configs, `configs/aepo.yaml` and
`configs/coldstart.yaml`, so that evaluate without a run and validation during fit agree).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

from ares_lit.evaluation.runner import EvalSettings
from ares_lit.prompting import ARES_PROMPT_SUFFIX

__all__ = ["DEFAULTS", "RUN_KEYS", "RunConfig", "find_run", "resolve", "settings_header"]

DEFAULTS: dict[str, Any] = {
    "n": 4, "k": None, "temperature": 0.7, "top_p": 1.0, "top_k": -1, "max_tokens": 128, "seed": 0,
    "answer_fallback": "last_number", "grade_timeout": 5.0,
}  # fmt: skip
"""evaluate's own sampling and grading defaults: the embedded configs' `model.init_args.validation`."""
VALIDATION_KEYS = ("n", "k", "temperature", "top_p", "top_k", "max_tokens", "seed", "answer_fallback", "grade_timeout")
PROMPT_KEYS = ("prompt_suffix", "system_prompt")
DATA_KEYS = ("data", "limit", "max_prompt_length")
RUN_KEYS = ("model_path", *DATA_KEYS, *VALIDATION_KEYS, *PROMPT_KEYS)
"""The options a run can set, in the order the header shows them."""
_SOURCE_KEYS = ("question_key", "answer_key", "image_key", "id_key", "split")
_NOT_SETTINGS = ("like_run", "no_like_run", "sources")
EXPORT_INFO = "ares_export.json"  # ares_lit.modules.export's record of an export (its run: `log_dir`)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _class_defaults(block: dict) -> dict:
    """The `init_args` of a `{class_path, init_args}` block, completed with the class's own defaults."""
    args = dict(block.get("init_args") or {})
    module, _, name = str(block.get("class_path") or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
        params = inspect.signature(cls.__init__).parameters if cls is not None else {}
    except (ImportError, AttributeError, TypeError, ValueError):
        params = {}  # a class this install lacks: the config's own values only
    for key, p in params.items():
        if p.default is not p.empty:
            args.setdefault(key, p.default)
    return args


class RunConfig:
    """What a run folder's `config.yaml` says about evaluating like it. `origin` names the run in errors."""

    def __init__(self, folder: str | Path, origin: str) -> None:
        import yaml

        self.folder, self.origin = Path(folder), origin
        if not self.folder.is_dir():
            raise ValueError(f"{origin}: no such folder")
        path = self.folder / "config.yaml"
        if not path.is_file():
            raise ValueError(
                f"{origin}: the folder has no config.yaml (the config LightningCLI saves into a run's log folder, "
                "e.g. runs/aepo/version_0); pass a run's version folder"
            )
        try:
            self.config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{origin}: {path} is not valid YAML ({_one_line(err)})") from err
        model = self.config.get("model") if isinstance(self.config, dict) else None
        if not isinstance(model, dict) or not isinstance(model.get("init_args", {}), dict):
            raise ValueError(f"{origin}: {path} is not a training config (it has no model.init_args)")
        self.model = dict(model.get("init_args") or {})
        data = self.config.get("data")
        self.data = _class_defaults(data) if isinstance(data, dict) else {}

    def settings(self) -> dict[str, Any]:
        """Sampling, grading and prompting as the run's validation did them."""
        block = self.model.get("validation") or {}
        if isinstance(block, dict) and "init_args" in block:
            block = block["init_args"] or {}
        if not isinstance(block, dict):
            raise ValueError(f"{self.origin}: model.init_args.validation is not a mapping; got {block!r}")
        values = {f.name: f.default for f in fields(EvalSettings)} | {"k": None} | block  # None: EvalSettings' defaults
        out = {key: values[key] for key in VALIDATION_KEYS}
        if out["k"] is not None:
            out["k"] = ",".join(str(k) for k in out["k"]) if isinstance(out["k"], (list, tuple)) else str(out["k"])
        out.update({key: self.data[key] for key in PROMPT_KEYS if key in self.data})
        return out

    def held_out(self, given: set[str]) -> dict[str, Any]:
        """`data`, `limit` and `max_prompt_length` of the run's validation problems; raises if it had none."""
        d = self.data
        coldstart = "max_length" in d and "max_prompt_length" not in d
        spec: dict[str, Any] = {key: d[key] for key in _SOURCE_KEYS if key in d and key not in given}
        val_path, val_size = d.get("val_path"), int(d.get("val_size") or 0)
        if val_path:
            spec["path"] = str(val_path)
            if coldstart:  # ColdstartDataModule reads val_path with PromptDataModule's split and no id key
                spec.pop("split", None), spec.pop("id_key", None)
                if str(val_path).startswith(("builtin:math", "builtin:chain")):
                    spec.pop("image_key", None)
            if d.get("builtin_seed"):
                spec["builtin_seed"] = int(d["builtin_seed"])
        elif val_size and not coldstart and d.get("path"):
            spec.update(path=str(d["path"]), val_size=val_size, seed=int(d.get("seed") or 0))
            spec.update({k: int(d[k]) for k in ("builtin_seed", "builtin_size") if d.get(k) is not None})
        else:
            raise ValueError(
                f"{self.origin}: the run has no held-out data (data.init_args.val_path and val_size are unset); "
                "pass --data"
            )
        if str(spec["path"]).startswith("builtin:"):
            spec.pop("split", None)  # the bundled sets have no splits to pick
        out: dict[str, Any] = {"data": [json.dumps(spec)], "limit": val_size if val_path else 0}
        length = d.get("max_length" if coldstart else "max_prompt_length")
        if length:
            out["max_prompt_length"] = int(length)
        return out

    def _fit_roots(self) -> list[Path]:
        """Where a relative `export_dir` may be: the fit's working folder, from the logger's
        `save_dir/name/version` (when the run folder ends so), and the current folder."""
        roots = []
        logger = (self.config.get("trainer") or {}).get("logger")
        logger = logger[0] if isinstance(logger, list) and logger else logger
        args = (logger.get("init_args") or {}) if isinstance(logger, dict) else {}
        save_dir, name = args.get("save_dir"), args.get("name")
        if save_dir and not Path(str(save_dir)).is_absolute():
            parts = Path(str(save_dir)).parts + ((str(name),) if name else ())
            run = self.folder.resolve()
            if len(run.parts) > len(parts) + 1 and run.parts[-len(parts) - 1 : -1] == parts:
                roots.append(run.parents[len(parts)])
        return [*roots, Path(".")]

    def model_path(self) -> str:
        """The run's exported model folder; raises, saying how to make one, when there is none."""
        export_dir = self.model.get("export_dir")
        candidates = []
        if export_dir:
            p = Path(str(export_dir)).expanduser()
            candidates = [p] if p.is_absolute() else [root / p for root in self._fit_roots()]
        elif export_dir is None:
            candidates = [self.folder / "hf_model"]
        candidates.append(self.folder / "huggingface")  # python -m ares_lit.export --local_dir <run>
        for c in candidates:
            if (c / "config.json").is_file():
                return str(c)
        expected = f"{candidates[0]} (written at the end of fit)" if export_dir != "" else "none (export_dir is '')"
        raise ValueError(
            f"{self.origin}: the run has no exported model: expected {expected} or {self.folder / 'huggingface'}; "
            f"make one from its checkpoint with `python -m ares_lit.export --local_dir {self.folder}` "
            "(it writes <run>/huggingface), or pass --model_path"
        )


def find_run(model_path: str | None) -> Path | None:
    """The run a model folder was exported from: the `log_dir` its `ares_export.json` records (an
    export made by ares_lit), else its parent (`<run>/hf_model`, `<run>/huggingface`) or, for
    `<run>/checkpoints/<model>`, its grandparent; the first of them that has a `config.yaml`."""
    if not model_path:
        return None
    p = Path(model_path).expanduser()
    if not p.is_dir():
        return None
    try:
        log_dir = json.loads((p / EXPORT_INFO).read_text()).get("log_dir")
    except (OSError, ValueError, AttributeError):
        log_dir = None
    if log_dir and (Path(log_dir).expanduser() / "config.yaml").is_file():
        return Path(log_dir).expanduser()
    p = p.resolve()
    for folder in (p.parent, p.parent.parent if p.parent.name == "checkpoints" else None):
        if folder is not None and (folder / "config.yaml").is_file():
            rel = Path(os.path.relpath(folder))
            return rel if not rel.parts or rel.parts[0] != ".." else folder
    return None


def resolve(args, given: set[str]) -> None:
    """Fill `args` from a run where the command line did not set them; sets `args.like_run` (the run
    folder used, or None) and `args.sources` (option -> "command line", "run" or "default")."""
    run, taken = None, {}
    like_run = getattr(args, "like_run", None)
    if like_run:
        run = RunConfig(like_run, f"--like_run {like_run}")
    elif not getattr(args, "no_like_run", False) and (folder := find_run(args.model_path)) is not None:
        try:
            run = RunConfig(folder, f"the run {folder} (the folder around --model_path; --no_like_run ignores it)")
        except ValueError as err:
            print(f"[ares_lit] not evaluating like the run around --model_path: {_one_line(err)}", flush=True)
    if run is not None:
        taken.update(run.settings())
        if "data" not in given:
            taken.update(run.held_out(given))
        if "model_path" not in given:
            taken["model_path"] = run.model_path()
    args.like_run = str(run.folder) if run is not None else None
    for key, value in taken.items():
        if key not in given:
            setattr(args, key, value)
    if "k" in taken and "k" not in given and args.k:  # the run's ks, as far as a command-line --n allows
        ks = [k for k in args.k.split(",") if int(k) <= args.n]
        args.k = ",".join(ks) if ks else None
    args.sources = {
        key: "command line" if key in given else "run" if key in taken else "default"
        for key in vars(args)
        if key not in _NOT_SETTINGS
    }
    if args.model_path is None:
        raise ValueError("--model_path is required (or --like_run DIR: the run's exported model)")
    if not args.data:
        raise ValueError("--data is required (or --like_run DIR: the run's held-out data)")


def _show(key: str, value: Any) -> str:
    if key == "data":
        names = []
        for spec in value:
            obj = json.loads(spec) if str(spec).lstrip().startswith("{") else {"path": spec}
            names.append(str(obj.get("path")) + (f" (its {obj['val_size']}-row hold-out)" if obj.get("val_size") else ""))
        return ",".join(names)
    if key == "prompt_suffix":
        return "ARES" if value == ARES_PROMPT_SUFFIX else repr(value if len(value) <= 24 else value[:21] + "...")
    return str(value)


def settings_header(args, ks: list[int]) -> str:
    """A few lines: each setting a run can set, its value and where it came from."""
    items, named = [], False
    for key in RUN_KEYS:
        value = ks if key == "k" else getattr(args, key)
        value = ",".join(map(str, value)) if key == "k" else value
        where = args.sources.get(key, "default")
        if where == "run" and not named:
            where, named = f"run {args.like_run}", True
        items.append(f"{key}={_show(key, value)} ({where})")
    return textwrap.fill(
        ", ".join(items), width=118, initial_indent="[ares_lit] settings: ", subsequent_indent="  ",
        break_long_words=False, break_on_hyphens=False,
    )
