"""Images in ARES prompts (Qwen2.5-VL): reading them, placeholders, pixels, 3-D positions."""

from ares_lit.vision.images import ImageError, image_reason, load_image
from ares_lit.vision.processor import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    MultimodalInputs,
    VisionProcessor,
    is_vision_language,
    merge_multimodal,
    mrope_position_ids,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "ImageError",
    "MultimodalInputs",
    "VisionProcessor",
    "image_reason",
    "is_vision_language",
    "load_image",
    "merge_multimodal",
    "mrope_position_ids",
]
