"""Shared fixtures for the DataModule tests: an offline tiny BPE tokenizer with a chat template,
and the tiny random Qwen2.5-VL (built once into the ares_lit cache)."""

import pytest
from transformers import AutoTokenizer

from ares_lit.models.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_tokenizer(path)
    return str(path)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="session")
def vl_path():
    from ares_lit.models.resolve import resolve_model_path

    return resolve_model_path("builtin:tiny-qwen2.5-vl")
