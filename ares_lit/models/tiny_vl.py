"""A tiny, random Qwen2.5-VL built locally: the multimodal default and the test model.

No pretrained vision-language model can be downloaded here, so `configs/*_vl.yaml` run on this:
a byte-level BPE tokenizer with Qwen's vision special tokens and a chat template that renders
{"type": "image"} content as `<|vision_start|><|image_pad|><|vision_end|>`, a 2-layer Qwen2.5-VL
text model (head_dim 64, M-RoPE sections 16/8/8) and a 2-block vision tower (patch 14, merge 2).
It shows the mechanics (images through data, rollouts, 3-D positions, losses), not learning.
"""

from __future__ import annotations

import json
from pathlib import Path

from ares_lit.models.smollm2 import save_cached_model
from ares_lit.models.tiny import MARKER, _built, build_tiny_tokenizer

__all__ = ["build_tiny_qwen2_5_vl", "VL_CHAT_TEMPLATE", "VISION_TOKENS"]

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's ChatML template, images only (no video), system prompt optional.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    max_position_embeddings: int = 4096,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 64,
    seed: int = 0,
    versioned: bool = False,
) -> Path:
    """Save a random Qwen2_5_VLForConditionalGeneration (fp32), tokenizer and image processor; reuse if present.

    Built atomically under a lock (ares_lit/models/cache.py); `versioned` names the folder
    `<out_dir>-<spec hash>`, as the builtin cache does.
    """
    out = Path(out_dir)
    spec = {
        "kind": "qwen2_5_vl",
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "vision_depth": vision_depth,
        "vision_hidden": vision_hidden,
        "max_position_embeddings": max_position_embeddings,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "seed": seed,
    }
    if hidden_size // num_heads != 64:
        raise ValueError("the tiny VL model needs head_dim 64 (M-RoPE sections 16/8/8); use hidden_size = 64 * num_heads")
    from ares_lit.models.cache import build_once, spec_name

    if versioned:
        out = out.with_name(spec_name(out.name, spec))
    args = (hidden_size, num_layers, num_heads, vision_depth, vision_hidden, max_position_embeddings, min_pixels, max_pixels, seed)
    # DDP ranks (and parallel tests) may ask at once: one builds (atomically), the others wait and reuse it.
    return build_once(out, lambda folder: _built(folder / MARKER, spec), lambda tmp: _build(tmp, spec, *args))


def _build(out: Path, spec: dict, hidden_size, num_layers, num_heads, vision_depth, vision_hidden,
           max_position_embeddings, min_pixels, max_pixels, seed) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = build_tiny_tokenizer(out, model_max_length=max_position_embeddings)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=1,
            max_position_embeddings=max_position_embeddings,
            rope_scaling={"type": "mrope", "mrope_section": [16, 8, 8]},
            tie_word_embeddings=True,
            **special,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        **special,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special)
    save_cached_model(model, out)
    Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    ).save_pretrained(str(out))
    (out / MARKER).write_text(json.dumps(spec))
