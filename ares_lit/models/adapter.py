"""A PEFT LoRA adapter folder as a `model_path`: merged once into a cached Hugging Face folder.

`python -m ares_lit.export --adapter_only` (and every LoRA run, beside its merged `hf_model`)
writes an adapter folder: adapter_config.json, adapter_model.safetensors and the tokenizer. Its
config names the base model (`base_model_name_or_path`). `infer`, `evaluate` and `fit` accept
such a folder wherever they take a model: `merged_folder` merges base + adapter into
`<cache>/merged/<key>` the first time (key = a hash of the adapter's files and the base path),
built in a temp folder and renamed into place under a lock (models/cache.py), and reuses it afterwards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["adapter_base", "merged_folder"]

MARKER = "ares_merged_from.json"  # written last: a folder that has it is complete


def adapter_base(folder: str | Path) -> str | None:
    """The base model an adapter folder names (its adapter_config.json), or None for other folders."""
    config = Path(folder).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return str(base) if base else None


def _key(folder: Path, base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def merged_folder(folder: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The cached merged model of adapter `folder` (built on first use; see the module docstring)."""
    import torch
    from transformers import AutoTokenizer

    from ares_lit.models.cache import build_once
    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.models.smollm2 import default_cache_dir, save_cached_model
    from ares_lit.modules.export import save_image_processor
    from ares_lit.modules.policy import load_pretrained

    folder = Path(folder).expanduser().resolve()
    base = adapter_base(folder)
    if base is None:
        raise ValueError(f"{folder} is not a PEFT adapter folder (no adapter_config.json naming its base model)")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "merged"
    target = root / _key(folder, base)

    def merge(tmp: Path) -> None:
        from peft import PeftModel

        base_path = resolve_model_path(base)
        dtype = json.loads((Path(base_path) / "config.json").read_text()).get("torch_dtype") or "float32"
        model = load_pretrained(base_path, getattr(torch, str(dtype).removeprefix("torch."), torch.float32))
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        merged.config.use_cache = True
        save_cached_model(merged, tmp)
        source = folder if (folder / "tokenizer_config.json").is_file() else Path(base_path)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp))
        save_image_processor(base_path, tmp)
        (tmp / MARKER).write_text(json.dumps({"adapter": str(folder), "base": base}) + "\n")  # last: complete

    if not (target / MARKER).is_file():
        print(f"[ares_lit] merging the LoRA adapter {folder} into its base {base} (once): {target}", flush=True)
    return build_once(target, lambda path: (path / MARKER).is_file(), merge)
