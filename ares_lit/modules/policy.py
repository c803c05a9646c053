"""Loading the policy (and its frozen reference) that both ARES stages train."""

from __future__ import annotations

import torch

__all__ = ["DTYPES", "load_policy", "load_pretrained", "freeze_vision_tower"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_pretrained(path: str, dtype: torch.dtype):
    """A causal LM, or a vision-language model (Qwen2.5-VL) through AutoModelForImageTextToText."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from ares_lit.vision import is_vision_language

    cls = AutoModelForImageTextToText if is_vision_language(AutoConfig.from_pretrained(path)) else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=dtype)


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop gradients into the vision encoder (and its merger); returns the number of frozen parameters."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise ValueError("freeze_vision_tower is set but the model has no vision tower (model.model.visual)")
    visual.requires_grad_(False)
    return sum(p.numel() for p in visual.parameters())


def load_policy(
    model_path: str,
    dtype: str,
    gradient_checkpointing: bool,
    with_reference: bool,
    freeze_vision: bool = False,
    strategy=None,
    lora=None,
):
    """Resolve `model_path` and load (resolved path, tokenizer, trainable policy, frozen reference or None).

    Under a ZeRO-3 `strategy` (inside Lightning's `configure_model`) the policy loads straight into
    shards, and the frozen reference, which DeepSpeed does not wrap, is built whole.

    With `lora` (a checked `LoraSettings`) the policy is a peft PeftModel and the reference is
    the same model with its adapter disabled (`AdapterOff`): no second copy is loaded.
    """
    from transformers import AutoTokenizer

    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.modules.zero import hf_zero3_loading, unpartitioned

    path = str(resolve_model_path(model_path))
    torch_dtype = DTYPES[dtype]
    tokenizer = AutoTokenizer.from_pretrained(path)
    with hf_zero3_loading(strategy):
        policy = load_pretrained(path, torch_dtype)
    policy.config.use_cache = False
    policy.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
    if freeze_vision:
        freeze_vision_tower(policy)
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if lora is not None:
        from ares_lit.modules.lora import AdapterOff, apply_lora

        policy = apply_lora(policy, lora)
        policy.train()
        return path, tokenizer, policy, AdapterOff(policy) if with_reference else None
    if with_reference:
        with unpartitioned(strategy):
            reference = load_pretrained(path, torch_dtype)
        reference.eval().requires_grad_(False)
    return path, tokenizer, policy, reference
