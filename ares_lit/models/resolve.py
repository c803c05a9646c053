"""Turn a `model_path` config value into something `from_pretrained` and vLLM can load.

`builtin:<name>` names a model built or converted locally (no hub), a local folder is used as
is, and anything else is passed through as a hub name for users with a network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ares_lit.models.smollm2 import default_cache_dir, smollm2_instruct_path
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.models.tiny_vl import build_tiny_qwen2_5_vl

__all__ = ["resolve_model_path", "attached_policy_path", "BUILTIN_MODELS", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"


def _tiny_qwen2() -> Path:
    return build_tiny_qwen2(default_cache_dir() / "models" / "tiny-qwen2")


def _tiny_qwen2_5_vl() -> Path:
    return build_tiny_qwen2_5_vl(default_cache_dir() / "models" / "tiny-qwen2.5-vl")


# name -> function returning the local folder (building or converting it on first use).
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {
    "builtin:smollm2-135m-instruct": smollm2_instruct_path,
    "builtin:tiny-qwen2": _tiny_qwen2,
    "builtin:tiny-qwen2.5-vl": _tiny_qwen2_5_vl,
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_path(name_or_path: str) -> str:
    """`builtin:*` -> its local folder; an existing folder -> itself; else a hub name, unchanged.

    Raises ValueError for an unknown builtin, and for a hub name while HF_HUB_OFFLINE is set,
    before any model is loaded.
    """
    builtins = ", ".join(BUILTIN_MODELS)
    if name_or_path.startswith(BUILTIN_PREFIX):
        if name_or_path not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {name_or_path!r}; choose one of: {builtins}")
        return str(BUILTIN_MODELS[name_or_path]())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if _offline():
        raise ValueError(
            f"model_path {name_or_path!r} is neither a local folder nor a builtin ({builtins}), "
            "and HF_HUB_OFFLINE=1 forbids downloads"
        )
    return name_or_path


def attached_policy_path(datamodule) -> str | None:
    """The resolved `model_path` of the LightningModule attached to `datamodule`'s trainer, if any.

    DataModules use it to tokenize with the policy's own tokenizer when no tokenizer is configured.
    """
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    model_path = getattr(getattr(module, "hparams", None), "model_path", None)
    return str(resolve_model_path(model_path)) if model_path else None
