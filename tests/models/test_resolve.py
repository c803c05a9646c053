"""Tests for ares_lit.models.resolve: builtins, local folders, hub names, offline errors and the fast path check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ares_lit.models.resolve import BUILTIN_MODELS, check_model_path, resolve_model_path

ROOT = Path(__file__).resolve().parents[2]


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
    assert Path(path).parent == cache / "models" and Path(path).name.startswith("tiny-qwen2.5-vl-")  # + spec hash
    config = AutoConfig.from_pretrained(path)
    assert is_vision_language(config) and config.vision_config.depth == 2
    proc = VisionProcessor.from_pretrained(path)
    assert proc.tokenizer.convert_ids_to_tokens(config.image_token_id) == "<|image_pad|>"
    assert proc.merge_size == 2 and proc.patch_size == 14


def test_tiny_builtin_resolves_under_cache_and_loads(cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("builtin:tiny-qwen2")
    assert Path(path).parent == cache / "models" and re.fullmatch(r"tiny-qwen2-[0-9a-f]{10}", Path(path).name)
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


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_model_folder_passes_through(tmp_path):
    folder = _model_folder(tmp_path / "m")
    assert resolve_model_path(str(folder)) == str(folder)


def _one_line_error(value: str) -> str:
    with pytest.raises(ValueError) as err:
        check_model_path(value)
    message = str(err.value)
    assert "\n" not in message
    return message


def _assert_usage(message: str) -> None:
    assert "give an HF model folder (config.json + weights), a builtin:* name (" in message
    assert all(name in message for name in BUILTIN_MODELS) and "or a hub name like org/model" in message


@pytest.mark.parametrize(
    "value",
    ["runs/coldstart/version_3/hf_model", "runs/coldstart/", "./hf_model", "../hf_model", "~/no-such-ares-model",
     "/no/such/ares/model"],
)
def test_a_missing_local_looking_path_fails_at_once_even_online(value, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    message = _one_line_error(value)
    assert time.perf_counter() - started < 0.5
    assert message.startswith(f"model_path {value!r} is not a model folder: does not exist; ")
    _assert_usage(message)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_path(value)  # the resolver checks first


def test_an_empty_folder_is_not_a_model_folder(tmp_path):
    message = _one_line_error(str(tmp_path))
    assert message.startswith(f"model_path {str(tmp_path)!r} is not a model folder: has no config.json (it is empty); ")
    _assert_usage(message)


def test_a_folder_without_config_lists_what_it_holds(tmp_path):
    (tmp_path / "runs").mkdir()
    for name in ("tokenizer.json", "a.txt", *(f"f{i}.bin" for i in range(8))):
        (tmp_path / name).write_text("x")
    message = _one_line_error(str(tmp_path))
    assert "has no config.json (it holds: a.txt, f0.bin, f1.bin, f2.bin, f3.bin, f4.bin, f5.bin, f6.bin …); " in message
    (tmp_path / "f7.bin").unlink(), (tmp_path / "f6.bin").unlink(), (tmp_path / "f5.bin").unlink()
    assert "(it holds: a.txt, f0.bin, f1.bin, f2.bin, f3.bin, f4.bin, runs/, tokenizer.json); " in _one_line_error(str(tmp_path))


def test_a_file_and_a_relative_folder_on_disk_are_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.bin").write_text("x")
    assert "is not a model folder: is a file, not a folder; " in _one_line_error("weights.bin")
    (tmp_path / "org" / "model").mkdir(parents=True)  # one separator, but it exists: a local folder
    assert "is not a model folder: has no config.json (it is empty); " in _one_line_error("org/model")
    _model_folder(tmp_path / "org" / "model")
    assert resolve_model_path("org/model") == "org/model"


@pytest.mark.parametrize("value", ["org/model", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_hub_names_pass_through_online(value, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    check_model_path(value)
    assert resolve_model_path(value) == value


def test_hub_name_offline_raises_naming_the_option(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    message = _one_line_error("foo/bar")
    assert message.startswith("model_path 'foo/bar' is neither a local folder nor a builtin")
    assert "builtin:smollm2-135m-instruct" in message and "nor in the local HF cache" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_hub_name_offline_in_the_hf_cache_passes_through(monkeypatch, tmp_path):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc123"
    _model_folder(snapshot)
    (tmp_path / "hub" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("org/cached") == "org/cached"
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE=1"):
        check_model_path("org/uncached")


def test_an_empty_model_path_says_so():
    message = _one_line_error("")
    assert message.startswith("model_path is empty; give an HF model folder")


def test_checking_a_builtin_builds_nothing(cache):
    check_model_path("builtin:tiny-qwen2")
    assert not (cache / "models").exists()
    with pytest.raises(ValueError, match="unknown builtin model 'builtin:tiny'"):
        check_model_path("builtin:tiny")


def test_a_missing_local_path_fails_fast_without_offline_mode(tmp_path):
    """No HF_HUB_OFFLINE in a fresh interpreter: the check answers from the file system, never the hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import time\n"
        "from ares_lit.models.resolve import resolve_model_path\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    resolve_model_path('runs/coldstart/version_3/hf_model')\n"
        "except ValueError as err:\n"
        "    print(f'{time.perf_counter() - t:.3f}', err)\n"
    )
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    elapsed = time.perf_counter() - started
    assert res.returncode == 0, res.stderr
    seconds, message = res.stdout.strip().split(" ", 1)
    assert float(seconds) < 0.5 and elapsed < 5, (seconds, elapsed)
    assert message.startswith("model_path 'runs/coldstart/version_3/hf_model' is not a model folder: does not exist; ")


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
