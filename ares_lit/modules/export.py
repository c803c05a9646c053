"""Saving a trained policy as a Hugging Face folder (shared by both ARES stages)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl

__all__ = ["export_hf", "export_at_fit_end"]


def export_hf(model, tokenizer, target: str | Path, what: str = "policy") -> Path:
    """Save `model` and `tokenizer` to `target`, a folder that transformers and vLLM load."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    use_cache = model.config.use_cache
    model.config.use_cache = True  # inference default for whoever loads the folder
    model.save_pretrained(str(target), safe_serialization=True)
    model.config.use_cache = use_cache
    tokenizer.save_pretrained(str(target))
    print(f"[ares_lit] exported the {what} to {target}", flush=True)
    return target


def export_at_fit_end(module: pl.LightningModule, export_dir: str | None, what: str) -> None:
    """The `on_fit_end` export: `export_dir`, else `<log_dir>/hf_model`; "" disables it."""
    if export_dir == "":
        return
    trainer = module.trainer
    if export_dir is None:
        export_dir = os.path.join(trainer.log_dir or trainer.default_root_dir, "hf_model")
    if trainer.is_global_zero:
        export_hf(module.policy, module.tokenizer, export_dir, what)
    trainer.strategy.barrier("ares_export")
