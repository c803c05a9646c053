"""The chunked log-prob/entropy pass agrees with a plain full-logits forward, values and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ares_lit.core import token_entropy
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.logprobs import position_ids_from_mask, response_logprobs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    # 3 rows: prompts left-padded to 5, responses right-padded to 6
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :2] = 0  # shorter prompt
    mask[2, 9:] = 0  # shorter response
    return ids, mask


def _reference(model, ids, mask, r, temperature):
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
    logits = logits[:, -r - 1 : -1] / temperature
    lsm = logits.log_softmax(-1)
    return lsm.gather(-1, ids[:, -r:].unsqueeze(-1)).squeeze(-1), token_entropy(logits.detach())


@pytest.mark.parametrize("budget", [1, 1 << 30])  # one token per chunk, and a single chunk
def test_values_match_full_forward(tiny_model, budget):
    ids, mask = _batch(tiny_model.config.vocab_size)
    with torch.no_grad():
        ref_lp, ref_ent = _reference(tiny_model, ids, mask, 6, 0.7)
        lp, ent = response_logprobs(tiny_model, ids, mask, 6, temperature=0.7, with_entropy=True, budget_bytes=budget)
    valid = mask[:, -6:].bool()
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget", [1, 1 << 40], ids=["checkpointed-chunks", "one-chunk-no-checkpoint"])
def test_gradients_match_full_forward(tiny_model, budget):
    ids, mask = _batch(tiny_model.config.vocab_size)
    valid = mask[:, -6:].float()
    tiny_model.zero_grad()
    ref_lp, _ = _reference(tiny_model, ids, mask, 6, 1.0)
    (ref_lp * valid).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    lp, _ = response_logprobs(tiny_model, ids, mask, 6, budget_bytes=budget)
    (lp * valid).sum().backward()
    for n, p in tiny_model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    tiny_model.zero_grad()


def test_entropy_is_the_same_with_and_without_gradients(tiny_model):
    """The training pass (gradients) and the scoring pass (no gradients) share one entropy formula."""
    ids, mask = _batch(tiny_model.config.vocab_size)
    with torch.no_grad():
        _, ent = response_logprobs(tiny_model, ids, mask, 6, temperature=0.7, with_entropy=True, budget_bytes=1)
    lp, ent_grad = response_logprobs(tiny_model, ids, mask, 6, temperature=0.7, with_entropy=True, budget_bytes=1)
    assert lp.requires_grad and not ent_grad.requires_grad
    torch.testing.assert_close(ent_grad, ent, atol=0, rtol=0)
