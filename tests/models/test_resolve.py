"""Tests for ares_lit.models.resolve: builtins, local folders, hub names and offline errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ares_lit.models.resolve import BUILTIN_MODELS, resolve_model_path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path))
    return tmp_path


def test_builtins_are_listed():
    assert set(BUILTIN_MODELS) == {"builtin:smollm2-135m-instruct", "builtin:tiny-qwen2", "builtin:tiny-qwen2.5-vl"}


def test_tiny_vl_builtin_resolves_under_cache_and_is_a_vl_model(cache):
    from transformers import AutoConfig

    from ares_lit.vision import VisionProcessor, is_vision_language

    path = resolve_model_path("builtin:tiny-qwen2.5-vl")
    assert Path(path) == cache / "models" / "tiny-qwen2.5-vl"
    config = AutoConfig.from_pretrained(path)
    assert is_vision_language(config) and config.vision_config.depth == 2
    proc = VisionProcessor.from_pretrained(path)
    assert proc.tokenizer.convert_ids_to_tokens(config.image_token_id) == "<|image_pad|>"
    assert proc.merge_size == 2 and proc.patch_size == 14


def test_tiny_builtin_resolves_under_cache_and_loads(cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("builtin:tiny-qwen2")
    assert Path(path) == cache / "models" / "tiny-qwen2"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok("What is 12 + 7?", return_tensors="pt").input_ids
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    # A second resolve reuses the folder rather than rebuilding it.
    mtime = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("builtin:tiny-qwen2") == path
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == mtime


def test_unknown_builtin_lists_the_builtins(cache):
    with pytest.raises(ValueError, match="unknown builtin model 'builtin:xyz'") as err:
        resolve_model_path("builtin:xyz")
    for name in BUILTIN_MODELS:
        assert name in str(err.value)
    assert not (cache / "models").exists()  # failed before any work


def test_local_folder_passes_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_hub_name_offline_raises_naming_the_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"model_path 'foo/bar' is neither a local folder nor a builtin") as err:
        resolve_model_path("foo/bar")
    assert "builtin:smollm2-135m-instruct" in str(err.value)
    assert "HF_HUB_OFFLINE=1" in str(err.value)


def test_hub_name_online_passes_through(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def _build_on_rank_one(rank: int, tmp: str) -> None:
    import torch.distributed as dist

    from ares_lit.models.tiny import build_tiny_qwen2

    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        if rank == 1:
            build_tiny_qwen2(f"{tmp}/tiny")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_a_nonzero_ddp_rank_builds_a_complete_cache_entry(tmp_path):
    """DDP rank 1 may take the build lock first; transformers' save_pretrained writes nothing on a
    rank other than 0, which left a folder with a tokenizer and a marker but no config or weights."""
    import torch.multiprocessing as mp
    from transformers import AutoConfig

    mp.start_processes(_build_on_rank_one, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    files = {p.name for p in (tmp_path / "tiny").iterdir()}
    assert {"config.json", "model.safetensors", "ares_tiny.json"} <= files, files
    assert AutoConfig.from_pretrained(tmp_path / "tiny").model_type == "qwen2"
