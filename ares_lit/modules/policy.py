"""Loading the policy (and its frozen reference) that both ARES stages train."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "load_policy"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(model_path: str, dtype: str, gradient_checkpointing: bool, with_reference: bool):
    """Resolve `model_path` and load (resolved path, tokenizer, trainable policy, frozen reference or None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ares_lit.models.resolve import resolve_model_path

    path = str(resolve_model_path(model_path))
    torch_dtype = DTYPES[dtype]
    tokenizer = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    policy.config.use_cache = False
    policy.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if with_reference:
        reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        reference.eval().requires_grad_(False)
    return path, tokenizer, policy, reference
