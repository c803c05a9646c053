"""Saving a trained policy as a Hugging Face folder (shared by both ARES stages and `python -m ares_lit.export`)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch

__all__ = ["export_hf", "export_at_fit_end", "save_image_processor"]


def save_image_processor(source: str | Path, target: str | Path) -> bool:
    """Copy a vision-language model's image processor from `source` to `target`; False for a text model.

    Without it the folder does not load as a Qwen2.5-VL model in vLLM or `VisionProcessor`.
    """
    import warnings

    from transformers import AutoConfig, AutoImageProcessor

    from ares_lit.vision import is_vision_language

    if not is_vision_language(AutoConfig.from_pretrained(str(source))):
        return False
    with warnings.catch_warnings():  # "requires torchvision ... falling back to the PIL backend" on CPU
        warnings.simplefilter("ignore")
        AutoImageProcessor.from_pretrained(str(source)).save_pretrained(str(target))
    return True


def export_hf(
    model,
    tokenizer,
    target: str | Path,
    what: str = "policy",
    state_dict: dict[str, torch.Tensor] | None = None,
    source: str | Path | None = None,
) -> Path:
    """Save `model` and `tokenizer` to `target`, a folder that transformers and vLLM load.

    Args:
        state_dict: the weights to write instead of `model`'s own (gathered ZeRO-3 weights, or a
            checkpoint's); `model` then supplies only the config and the tied-weight layout.
        source: the folder the model was loaded from; a VL model's image processor is copied from it.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    # Inference default for whoever loads the folder (a VL model keeps use_cache in its text config).
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    use_cache = getattr(config, "use_cache", False)
    config.use_cache = True
    model.save_pretrained(str(target), safe_serialization=True, state_dict=state_dict)
    config.use_cache = use_cache
    tokenizer.save_pretrained(str(target))
    if source is not None:
        save_image_processor(source, target)
    print(f"[ares_lit] exported the {what} to {target}", flush=True)
    return target


def export_at_fit_end(module: pl.LightningModule, export_dir: str | None, what: str) -> None:
    """The `on_fit_end` export: `export_dir`, else `<log_dir>/hf_model`; "" disables it.

    Under DeepSpeed ZeRO-3 every rank takes part in gathering the weights (one parameter at a
    time), and rank 0 writes them.
    """
    from ares_lit.modules.zero import gathered_state_dict, zero3_enabled

    if export_dir == "":
        return
    trainer = module.trainer
    if export_dir is None:
        export_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "hf_model")
    state_dict = None
    if zero3_enabled(trainer.strategy):
        state_dict = gathered_state_dict(module.policy, trainer.is_global_zero)
    if trainer.is_global_zero:
        source = getattr(module, "resolved_model_path", None)
        export_hf(module.policy, module.tokenizer, export_dir, what, state_dict=state_dict, source=source)
    trainer.strategy.barrier("ares_export")
