"""Token-budget micro-batching and the skipped policy pass, on a tiny random Qwen2 (real HF model,
real HF generate, real Lightning fits).

Padding must not change results: scores and gradients with budgets (rows sorted by length, each
micro-batch cut to its own width) equal the untrimmed single-batch values; a fit that reuses the
hf engine's log-probs and entropy logs the same losses as one that runs the policy pass.
"""

import csv

import lightning.pytorch as pl
import pytest
import torch

from ares_lit.batch import RolloutBatch
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.aepo import AEPOModule
from ares_lit.modules.logprobs import response_logprobs
from ares_lit.rollout import SamplingConfig, build_engine
from callbacks.entropy_logging import EntropyLoggingCallback
from callbacks.rollout import RolloutCallback
from data_modules.prompts import PromptDataModule
from tests.callbacks.test_rollout import trainer, write_prompts, write_reward


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2"))


@pytest.fixture(scope="module")
def module(tiny):
    m = AEPOModule(model_path=tiny, mini_batch_size=12, micro_batch_size=12)
    m.configure_model()
    return m


def ragged(module, n=12, p=9, r=20, seed=0):
    """Rows of very different prompt (3..p) and response (1..r) lengths, verl's layout."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, module.policy.config.vocab_size, (n, p + r), generator=g)
    p_lens = torch.randint(3, p + 1, (n,), generator=g)
    r_lens = torch.randint(1, r + 1, (n,), generator=g)
    r_lens[0] = r
    mask = torch.cat([torch.arange(p)[None] >= (p - p_lens)[:, None], torch.arange(r)[None] < r_lens[:, None]], 1).long()
    return ids, mask, r


def test_budgeted_scores_equal_one_untrimmed_batch(module):
    ids, mask, r = ragged(module)
    want_lp, want_ent = response_logprobs(module.policy.eval(), ids, mask, r, 0.7, with_entropy=True)
    real = mask[:, -r:].bool()
    module.hparams.max_tokens_per_score_batch = 60  # several micro-batches of 1-3 rows
    try:
        module.reset_pad_stats()
        lp, ent = module.score(module.policy, ids, mask, r, 0.7, True)
    finally:
        module.hparams.max_tokens_per_score_batch = None
    torch.testing.assert_close(lp[real], want_lp[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[real], want_ent[real], atol=1e-5, rtol=1e-5)
    assert float(lp[~real].abs().sum()) == 0.0  # nothing computed past a response
    real_n, computed, _ = module.pad_stats["score_policy"]
    assert real_n == int(mask.sum()) and computed < mask.numel()  # fewer positions than the full width
    assert module._pad_fractions()["rollout/pad_fraction"] == pytest.approx(1 - real_n / computed)


def rollout_batch(module, seed=1):
    ids, mask, r = ragged(module, seed=seed)
    g = torch.Generator().manual_seed(seed)
    old, _ = module.score(module.policy, ids, mask, r, 1.0)
    n = ids.shape[0]
    return RolloutBatch(
        input_ids=ids, attention_mask=mask, response_mask=mask[:, -r:].bool(),
        old_log_probs=old + 0.05 * torch.randn(n, r, generator=g), ref_log_probs=old + 0.2 * torch.randn(n, r, generator=g),
        advantages=torch.randn(n, generator=g), bucket=torch.arange(n) % 3,
        window_mask=torch.rand(n, r, generator=g) > 0.7,
    )  # fmt: skip


def grads_and_metrics(module, rb, budget, rows):
    module.hparams.max_tokens_per_micro_batch, module.hparams.micro_batch_size = budget, rows
    module.policy.zero_grad(set_to_none=True)
    mini = torch.arange(rb.size)
    (norm,) = module._normalizers(rb, [mini])
    kl_sum, tokens, micros = 0.0, 0.0, 0
    for loss, metrics, _, micro in module.mini_batch_losses(rb, mini, norm, None):
        loss.backward()
        n_tok = float(micro["response_mask"].sum())
        kl_sum, tokens, micros = kl_sum + float(metrics["kl"]) * n_tok, tokens + n_tok, micros + 1
    grads = torch.cat([p.grad.flatten() for p in module.policy.parameters()])
    return grads, kl_sum / tokens, micros


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-sum"])
def test_budgeted_micro_batches_give_the_single_batch_gradient(module, loss_agg):
    rb = rollout_batch(module)
    module.hparams.loss_agg = loss_agg
    try:
        whole, kl_whole, one = grads_and_metrics(module, rb, None, rb.size)
        parts, kl_parts, many = grads_and_metrics(module, rb, 80, rb.size)
    finally:
        module.hparams.loss_agg, module.hparams.max_tokens_per_micro_batch, module.hparams.micro_batch_size = "token-mean", None, 12
    assert one == 1 and many >= 4
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=1e-4)
    assert kl_parts == pytest.approx(kl_whole, rel=1e-5)


def test_bad_budget_fails_at_construction():
    with pytest.raises(ValueError, match="max_tokens_per_micro_batch must be >= 1"):
        AEPOModule(max_tokens_per_micro_batch=0)
    with pytest.raises(ValueError, match="max_tokens_per_score_batch must be >= 1"):
        AEPOModule(max_tokens_per_score_batch=-5)
    with pytest.raises(ValueError, match="policy_scoring must be one of"):
        RolloutCallback(engine="hf", policy_scoring="never")


def test_hf_engine_reports_the_trainers_log_probs_and_entropy(module):
    """Untruncated sampling: the recorded log-softmax is the trainer's, so are its entropies."""
    tok = module.tokenizer
    engine = build_engine("hf", model=module.policy, tokenizer=tok)
    assert engine.reports_trainer_scores
    prompts = [tok("What is 2 + 3?", add_special_tokens=False).input_ids, tok("Say hi", add_special_tokens=False).input_ids]
    groups = engine.generate(prompts, SamplingConfig(n=3, temperature=0.7, max_tokens=10, seed=0))
    for p, group in zip(prompts, groups):
        for c in group:
            ids = torch.tensor([p + c.token_ids])
            lp, ent = response_logprobs(module.policy.eval(), ids, torch.ones_like(ids), len(c.token_ids), 0.7, True)
            torch.testing.assert_close(torch.tensor([c.logprobs]), lp, atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.tensor([c.entropy]), ent, atol=1e-4, rtol=0)
            assert float(ent.max()) > 0.1  # a real distribution, not zeros
    truncated = engine.generate(prompts[:1], SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_tokens=6, seed=0))
    assert all(c.entropy is None for c in truncated[0])  # the truncated policy's entropy is not H_t


def losses(tmp_path, tiny, policy_scoring):
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    pl.seed_everything(0)
    rollout = RolloutCallback(engine="hf", n=4, max_new_tokens=10, reward_fn=f"{reward}:f", seed=3, policy_scoring=policy_scoring, filter_groups=False)
    model = AEPOModule(model_path=tiny, lr=1e-2, mini_batch_size=4, micro_batch_size=2, kl_coef=0.05)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny, batch_size=2, max_prompt_length=96)
    trainer(tmp_path, [rollout, EntropyLoggingCallback()], max_steps=4).fit(model, data)  # 2 rollout steps x 2 mini-batches
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    keys = ("train/loss", "train/pg_loss", "train/kl_loss", "rollout/policy_pass_skipped")
    return [{k: float(r[k]) for k in keys} for r in rows if r.get("train/loss")]


def test_skipping_the_policy_pass_keeps_the_losses(tmp_path, tiny):
    """Two mini-batches per step, so the second one is off-policy: the engine's values stand for π_old."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    auto, always = losses(tmp_path / "a", tiny, "auto"), losses(tmp_path / "b", tiny, "always")
    assert len(auto) == len(always) == 2
    assert {r["rollout/policy_pass_skipped"] for r in auto} == {1.0}
    assert {r["rollout/policy_pass_skipped"] for r in always} == {0.0}
    for a, b in zip(auto, always):
        for k in ("train/loss", "train/pg_loss", "train/kl_loss"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), (k, a, b)
    assert auto[0]["train/loss"] != auto[1]["train/loss"]  # two different steps, not a constant
