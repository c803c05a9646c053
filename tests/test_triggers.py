"""Trigger-word filter for HWE tokens: matches the decoded, lower-cased *sampled* token."""

import torch
from transformers import AutoTokenizer

from ares_lit.core import hwe_mask
from ares_lit.models.tiny import build_tiny_tokenizer
from ares_lit.triggers import DEFAULT_TRIGGER_WORDS, trigger_mask, trigger_token_ids


def test_trigger_ids_decode_to_trigger_words(tmp_path):
    build_tiny_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = trigger_token_ids(tok, ["wait", "but", "Therefore"])
    words = {tok.decode([i]).strip().lower() for i in ids.tolist()}
    assert words and words <= {"wait", "but", "therefore"}
    sample = tok(" Wait, but 12 is therefore 7", add_special_tokens=False).input_ids
    mask = trigger_mask(torch.tensor([sample]), ids)[0].tolist()
    decoded = [tok.decode([t]).strip().lower().strip(",") for t in sample]
    assert [d in {"wait", "but", "therefore"} for d in decoded] == mask
    assert any(mask) and not all(mask)
    assert "wait" in DEFAULT_TRIGGER_WORDS and "hmm" in DEFAULT_TRIGGER_WORDS


def test_trigger_mask_restricts_hwe_tokens():
    win = torch.tensor([[5.0, 5.0, 5.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    response = torch.tensor([[10, 11, 12]])
    triggers = trigger_mask(response, torch.tensor([11]))
    assert hwe_mask(win, valid, 1.0, triggers).tolist() == [[False, True, False]]
