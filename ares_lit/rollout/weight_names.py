"""Trainer parameter names -> the checkpoint names vLLM loads, per architecture.

transformers renamed Qwen2-VL / Qwen2.5-VL modules in 4.52: the language model moved from
`model.layers.*` to `model.language_model.layers.*` and the vision tower from `visual.*` to
`model.visual.*`. The released Hub checkpoints (and so vLLM's loaders, whatever else they accept)
use the old names. Weight sync therefore sends every tensor under its Hub checkpoint name, from
whichever transformers version the trainer runs. Text-only models need no mapping.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["checkpoint_name", "to_checkpoint_names", "VL_ARCHITECTURES"]

VL_ARCHITECTURES = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")

# new-style prefix -> Hub checkpoint prefix (first match wins; order matters).
_QWEN_VL_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
    ("language_model.model.", "model."),  # vLLM-internal names, should a caller pass them
    ("language_model.lm_head.", "lm_head."),
)


def checkpoint_name(name: str, architecture: str | None) -> str:
    """The Hub checkpoint name of trainer parameter `name` for `architecture` (identity for text models)."""
    if architecture not in VL_ARCHITECTURES:
        return name
    for new, old in _QWEN_VL_PREFIXES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def to_checkpoint_names(
    named_tensors: Iterable[tuple[str, torch.Tensor]], architecture: str | None
) -> Iterable[tuple[str, torch.Tensor]]:
    """Lazily rename a (name, tensor) stream; tensors are passed through untouched."""
    return ((checkpoint_name(name, architecture), t) for name, t in named_tensors)
