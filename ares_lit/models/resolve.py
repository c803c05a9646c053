"""Turn a `model_path` config value into something `from_pretrained` and vLLM can load.

`builtin:<name>` names a model built or converted locally (no hub), a local folder is used as
is, and anything else is passed through as a hub name for users with a network.

`check_model_path` is the cheap part (milliseconds: no model is built, loaded or downloaded):
a value that looks like a path but is not a model folder fails in one line, before a tokenizer
would fail with an unrelated message ("You need to have sentencepiece or tiktoken installed") or
wait on a hub connection for a folder that was never written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ares_lit.models.smollm2 import default_cache_dir, smollm2_instruct_path
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.models.tiny_vl import build_tiny_qwen2_5_vl

__all__ = ["resolve_model_path", "check_model_path", "model_context", "BUILTIN_CONTEXT", "attached_policy_path", "BUILTIN_MODELS", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"


def _tiny_qwen2() -> Path:
    return build_tiny_qwen2(default_cache_dir() / "models" / "tiny-qwen2", versioned=True)


def _tiny_qwen2_5_vl() -> Path:
    return build_tiny_qwen2_5_vl(default_cache_dir() / "models" / "tiny-qwen2.5-vl", versioned=True)


# name -> function returning the local folder (building or converting it on first use).
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "builtin:smollm2-135m-instruct": smollm2_instruct_path,
    "builtin:tiny-qwen2": _tiny_qwen2,
    "builtin:tiny-qwen2.5-vl": _tiny_qwen2_5_vl,
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


_SEPARATORS = {"/", os.sep} | ({os.altsep} if os.altsep else set())
_SHOWN_ENTRIES = 8  # folder entries named in a "has no config.json" message


def _looks_local(name: str) -> bool:
    """A path rather than a hub name: absolute, ./ ../ ~, on disk, 2+ separators, or a trailing separator."""
    relative = tuple(f"{dots}{sep}" for dots in (".", "..") for sep in _SEPARATORS)
    if os.path.isabs(name) or name in (".", "..") or name.startswith(("~", *relative)):
        return True
    if name.endswith(tuple(_SEPARATORS)) or sum(name.count(c) for c in _SEPARATORS) >= 2:
        return True
    return os.path.lexists(os.path.expanduser(name))


def _contents(path: Path) -> str:
    try:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if not entries:
        return "it is empty"
    more = " …" if len(entries) > _SHOWN_ENTRIES else ""
    return "it holds: " + ", ".join(entries[:_SHOWN_ENTRIES]) + more


def _in_hub_cache(name: str) -> bool:
    """Whether the local HF cache holds `name`'s config.json (what an offline load needs first)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_model_path(name_or_path: str) -> None:
    """Fail fast on a `model_path` that cannot load; touches only the file system (milliseconds).

    - `builtin:*`: the name must be one of BUILTIN_MODELS (nothing is built here);
    - a value that looks local (absolute, `./`, `../`, `~`, present on disk, two or more path
      separators, or a trailing one) must be a folder with a config.json;
    - anything else is a hub name (`org/model`, or a bare name): accepted, except under
      HF_HUB_OFFLINE=1 when the local HF cache does not hold it.

    Raises ValueError with a one-line message naming the value and what to give instead.
    """
    builtins = ", ".join(BUILTIN_MODELS)
    name = str(name_or_path)
    if name.startswith(BUILTIN_PREFIX):
        if name not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {name!r}; choose one of: {builtins}")
        return
    usage = f"give an HF model folder (config.json + weights), a builtin:* name ({builtins}) or a hub name like org/model"
    if not name.strip():
        raise ValueError(f"model_path is empty; {usage}")
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            reason = "does not exist"
        elif not path.is_dir():
            reason = "is a file, not a folder"
        elif (path / "adapter_config.json").is_file():  # a LoRA adapter folder: its base must resolve
            from ares_lit.models.adapter import adapter_base

            base = adapter_base(path)
            if base is None:
                raise ValueError(f"model_path {name!r} is a LoRA adapter folder whose adapter_config.json names no base model")
            check_model_path(base)
            return
        elif not (path / "config.json").is_file():
            reason = f"has no config.json ({_contents(path)})"
        else:
            return
        raise ValueError(f"model_path {name!r} is not a model folder: {reason}; {usage}")
    if _offline() and not _in_hub_cache(name):
        raise ValueError(
            f"model_path {name!r} is neither a local folder nor a builtin ({builtins}) nor in the local HF cache, "
            "and HF_HUB_OFFLINE=1 forbids downloads (unset it to download from the hub, or give a local model folder)"
        )


# The context of each builtin (max_position_embeddings), known without building it.
BUILTIN_CONTEXT = {"builtin:smollm2-135m-instruct": 8192, "builtin:tiny-qwen2": 1024, "builtin:tiny-qwen2.5-vl": 4096}


def model_context(name_or_path: str) -> int | None:
    """max_position_embeddings of a builtin or a local folder's config.json (its text_config for a
    VL model); None when unknown (a hub name). Reads one small file: no model loads."""
    name = str(name_or_path)
    if name in BUILTIN_CONTEXT:
        return BUILTIN_CONTEXT[name]
    from ares_lit.models.adapter import adapter_base

    base = adapter_base(name) if not name.startswith(BUILTIN_PREFIX) else None
    if base is not None:  # a LoRA adapter folder: its base model's context
        return model_context(base)
    config = Path(name).expanduser() / "config.json"
    if name.startswith(BUILTIN_PREFIX) or not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") or (data.get("text_config") or {}).get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def resolve_model_path(name_or_path: str) -> str:
    """`builtin:*` -> its local folder; a local model folder -> itself; a LoRA adapter folder -> its
    base with the adapter merged (cached; models/adapter.py); else a hub name, unchanged.

    `check_model_path` runs first, so a bad value fails before any model is built or loaded.
    """
    name_or_path = str(name_or_path)
    check_model_path(name_or_path)
    if name_or_path.startswith(BUILTIN_PREFIX):
        return str(BUILTIN_MODELS[name_or_path]())
    path = Path(name_or_path).expanduser()
    if (path / "adapter_config.json").is_file():  # a LoRA adapter folder: its merged model, cached
        from ares_lit.models.adapter import merged_folder

        return str(merged_folder(path))
    return str(path) if path.is_dir() else name_or_path


def attached_policy_path(datamodule) -> str | None:
    """The resolved `model_path` of the LightningModule attached to `datamodule`'s trainer, if any.

    DataModules use it to tokenize with the policy's own tokenizer when no tokenizer is configured.
    """
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    model_path = getattr(getattr(module, "hparams", None), "model_path", None)
    return str(resolve_model_path(model_path)) if model_path else None
