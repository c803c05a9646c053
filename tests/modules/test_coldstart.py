"""AdaptiveColdstartModule loss on a tiny random Qwen2: hand-computed NLL, prompt masking, KL term."""

import pytest
import torch
import torch.nn.functional as F

from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.coldstart import AdaptiveColdstartModule, label_logprobs
from ares_lit.prompting import build_prompt_text
from data_modules.coldstart import collate_sft

RESPONSES = [
    "<think>\n12 plus 7 is 19.\n</think>\n\\boxed{19}",
    "<think>\nx\n</think>\n\\boxed{3}",
    "<think>\nWait, let me check: 10 + 7 = 17, 17 + 2 = 19. Therefore 19.\n</think>\nThe answer is \\boxed{19}.",
]
QUESTIONS = ["What is 12 + 7?", "Solve x - 1 = 2.", "What is 10 + 9?"]
BRACKETS = [0, 4, 8]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny")))


def make_module(model_dir, **kw):
    module = AdaptiveColdstartModule(model_path=model_dir, **kw)
    module.configure_model()
    return module


def make_batch(tokenizer):
    feats = []
    for q, r, b in zip(QUESTIONS, RESPONSES, BRACKETS):
        prompt = tokenizer(build_prompt_text(tokenizer, q), add_special_tokens=False).input_ids
        resp = tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        feats.append({"prompt_ids": prompt, "response_ids": resp, "bracket": b})
    return collate_sft(feats, tokenizer.pad_token_id, 8), feats


def hand_nll(model, batch):
    """Plain full forward + cross_entropy, prompt and padding ignored (-100), token mean."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100)


def test_loss_equals_hand_computed_nll(model_dir):
    module = make_module(model_dir)
    batch, feats = make_batch(module.tokenizer)
    loss, stats = module.compute_loss(batch)
    expected = hand_nll(module.policy, batch)
    assert float(stats["tokens"]) == sum(len(f["response_ids"]) for f in feats)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # Per-bracket logs: the mean NLL of each row's response tokens (one row per bracket here).
    logs = module._bracket_logs(batch, stats["_nll_tok"], stats["_rows"])
    with torch.no_grad():
        logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for i, b in enumerate(BRACKETS):
        row_nll = F.cross_entropy(logits[i, :-1].float(), batch["labels"][i, 1:], ignore_index=-100)
        assert logs[f"bracket/{b}of8/nll"] == pytest.approx(float(row_nll), abs=1e-5)
        assert logs[f"bracket/{b}of8/tokens"] == len(feats[i]["response_ids"])


def test_chunking_does_not_change_the_loss(model_dir):
    module = make_module(model_dir)
    batch, _ = make_batch(module.tokenizer)
    whole, _ = module.compute_loss(batch)
    module.hparams.logit_budget_mb = 1e-3  # ~1 KB: one token row per chunk
    chunked, _ = module.compute_loss(batch)
    torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=1e-6)


def test_prompt_positions_carry_no_loss(model_dir):
    """Final hidden state t only feeds logits t; those of prompt positions must not reach the loss."""
    module = make_module(model_dir)
    batch, feats = make_batch(module.tokenizer)
    prompt_lens = [len(f["prompt_ids"]) for f in feats]
    edit: dict = {}
    captured: dict = {}

    def hook(_mod, _inp, out):
        h = out.last_hidden_state
        if edit:
            h = h.clone()
            for i, positions in edit.items():
                h[i, positions] += 10.0 * torch.randn_like(h[i, positions])
        h.retain_grad()
        captured["h"] = h
        out.last_hidden_state = h
        return out

    handle = module.policy.get_decoder().register_forward_hook(hook)
    try:
        base, _ = module.compute_loss(batch)
        base.backward()
        grad = captured["h"].grad
        for i, p in enumerate(prompt_lens):
            r = len(feats[i]["response_ids"])
            assert torch.count_nonzero(grad[i, : p - 1]) == 0  # prompt predictions: no gradient at all
            assert (grad[i, p - 1 : p - 1 + r].abs().sum(-1) > 0).all()  # every response prediction has one
            assert torch.count_nonzero(grad[i, p - 1 + r :]) == 0  # padding: none
        # Perturbing the prompt positions' logits (via their hidden states) leaves the loss unchanged ...
        edit.update({i: slice(0, p - 1) for i, p in enumerate(prompt_lens)})
        same, _ = module.compute_loss(batch)
        assert torch.equal(same.detach(), base.detach())
        # ... while the last prompt position, which predicts the first response token, does count.
        edit.clear()
        edit.update({0: slice(prompt_lens[0] - 1, prompt_lens[0])})
        moved, _ = module.compute_loss(batch)
        assert abs(float(moved.detach()) - float(base.detach())) > 1e-4
    finally:
        handle.remove()


def test_kl_term_is_zero_when_policy_equals_reference(model_dir):
    betas = [0.1 * k for k in range(9)]
    module = make_module(model_dir, kl_betas=betas)
    assert module.reference is not None and not any(n.startswith("_reference") for n in module.state_dict())
    batch, _ = make_batch(module.tokenizer)
    loss, stats = module.compute_loss(batch)
    assert float(stats["kl"]) == 0.0 and float(stats["kl_loss"]) == 0.0
    assert torch.equal(loss.detach(), stats["nll"])


def test_kl_term_weights_k3_by_bracket(model_dir):
    betas = [0.1 * k for k in range(9)]
    module = make_module(model_dir, kl_betas=betas)
    with torch.no_grad():
        for p in module.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch, _ = make_batch(module.tokenizer)
    loss, stats = module.compute_loss(batch)
    with torch.no_grad():
        lp, rows = label_logprobs(module.policy, batch["input_ids"], batch["attention_mask"], batch["labels"])
        ref, _ = label_logprobs(module.reference, batch["input_ids"], batch["attention_mask"], batch["labels"])
    d = (ref - lp).double()
    k3 = d.exp() - d - 1  # no clamping needed at these magnitudes
    beta = torch.tensor(betas, dtype=torch.float64)[torch.tensor(BRACKETS)[rows]]
    expected_kl_loss = float((beta * k3).sum() / k3.numel())
    assert float(stats["kl"]) > 1e-4
    assert float(stats["kl_loss"]) == pytest.approx(expected_kl_loss, rel=1e-4)
    assert float(loss) == pytest.approx(float(stats["nll"]) + expected_kl_loss, rel=1e-5)
    # Bracket 0 has β = 0: dropping the other rows' tokens leaves no KL loss.
    only_hard = {**batch, "labels": batch["labels"].clone()}
    only_hard["labels"][1:] = -100
    _, hard_stats = module.compute_loss(only_hard)
    assert float(hard_stats["kl"]) > 0 and float(hard_stats["kl_loss"]) == 0.0


def test_wrong_number_of_betas_is_refused(model_dir):
    module = make_module(model_dir, kl_betas=[0.1, 0.2])
    with pytest.raises(ValueError, match="kl_betas needs 1 value or bracket_n \\+ 1 = 9 values"):
        module._check_betas(8)
    with pytest.raises(ValueError, match="kl_betas must be null or a non-empty list"):
        AdaptiveColdstartModule(model_path=model_dir, kl_betas=[])
