"""Numerical parity with verl 0.9.1 on the same inputs.

verl is installed (without its heavy runtime dependencies) by `make install` purely as a test
oracle: ares_lit never imports it.
"""

import numpy as np
import pytest
import torch

import verl.utils.torch_functional as verl_F
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos

from verl.workers.config import ActorConfig, PolicyLossConfig

from ares_lit.core import (
    AGG_MODES,
    aggregate,
    get_policy_loss,
    grpo_advantages,
    kl_estimate,
    policy_loss,
    rloo_advantages,
    token_entropy,
)


def _batch(seed=0, bsz=24, length=17):
    g = torch.Generator().manual_seed(seed)
    # groups of 2, 4 and 8 (verl treats singletons differently by design; see grpo_advantages)
    sizes = [2, 4, 8, 2, 8]
    ids = np.concatenate([np.full(n, 100 + i) for i, n in enumerate(sizes)])
    g_perm = torch.randperm(len(ids), generator=g).numpy()
    ids = ids[g_perm]
    bsz = len(ids)
    lengths = torch.randint(1, length + 1, (bsz,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = torch.randint(0, 2, (bsz,), generator=g).float() + torch.rand(bsz, generator=g) * 0.5
    token_rewards = torch.zeros(bsz, length)
    token_rewards[torch.arange(bsz), lengths - 1] = rewards
    logp = -torch.rand(bsz, length, generator=g) * 3
    old = logp + torch.randn(bsz, length, generator=g) * 0.4
    ref = logp + torch.randn(bsz, length, generator=g) * 0.6
    return ids, mask, rewards, token_rewards, logp, old, ref


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_grpo_matches_verl(scale_by_std):
    ids, mask, rewards, token_rewards, *_ = _batch()
    theirs, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, ids, norm_adv_by_std_in_grpo=scale_by_std)
    ours = grpo_advantages(rewards, torch.as_tensor(ids), scale_by_std=scale_by_std)[:, None] * mask
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_rloo_matches_verl():
    ids, mask, rewards, token_rewards, *_ = _batch(1)
    theirs, _ = core_algos.compute_rloo_outcome_advantage(token_rewards, mask, ids)
    ours = rloo_advantages(rewards, torch.as_tensor(ids))[:, None] * mask
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_agg_loss_matches_verl(mode):
    _, mask, _, _, logp, old, _ = _batch(2)
    values = (logp - old) ** 2
    theirs = core_algos.agg_loss(values, mask, mode)
    torch.testing.assert_close(aggregate(values, mask, mode), theirs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("adv_shape", ["sequence", "token"])
def test_policy_loss_matches_verl(mode, adv_shape):
    ids, mask, rewards, _, logp, old, _ = _batch(3)
    adv = grpo_advantages(rewards, torch.as_tensor(ids))
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    config = OmegaConf.create(
        {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.3, "clip_ratio_c": 3.0, "global_batch_info": {}}
    )
    theirs, their_metrics = core_algos.compute_policy_loss_vanilla(old, logp, adv_tok, mask, mode, config)
    ours, metrics = policy_loss(
        logp, old, adv if adv_shape == "sequence" else adv_tok, mask, clip_low=0.2, clip_high=0.3, clip_dual=3.0, agg=mode
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    assert metrics["clipfrac"].item() == pytest.approx(their_metrics["actor/pg_clipfrac"], abs=1e-6)
    assert metrics["clipfrac_lower"].item() == pytest.approx(their_metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    assert metrics["ppo_kl"].item() == pytest.approx(their_metrics["actor/ppo_kl"], abs=1e-6)
    assert 0 < metrics["clipfrac"].item() < 1  # the batch exercises clipping


@pytest.mark.parametrize("kind", ["k1", "kl", "k2", "mse", "k3", "low_var_kl", "abs"])
def test_kl_matches_verl(kind):
    *_, logp, _, ref = _batch(4)
    logp = logp.clone()
    logp[0, 0] = -60.0  # exercises the ±20 / ±10 clamps of k3
    torch.testing.assert_close(kl_estimate(logp, ref, kind), core_algos.kl_penalty(logp, ref, kind), atol=0, rtol=0)


def test_entropy_matches_verl():
    logits = torch.randn(3, 11, 2000) * 4
    torch.testing.assert_close(token_entropy(logits), verl_F.entropy_from_logits(logits), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(token_entropy(logits, budget_bytes=1), verl_F.entropy_from_logits(logits), atol=2e-5, rtol=1e-5)


def _actor_config(clip_low=0.2, clip_high=0.3, policy_loss=None, **global_batch_info):
    """verl's GSPO, CISPO, Clip-Cov and KL-Cov losses insist on an ActorConfig (they read
    clip_ratio_low/high; the last two also its policy_loss options)."""
    return ActorConfig(
        strategy="fsdp", rollout_n=8, ppo_micro_batch_size_per_gpu=4, clip_ratio=clip_low,
        clip_ratio_low=clip_low, clip_ratio_high=clip_high, global_batch_info=global_batch_info,
        policy_loss=PolicyLossConfig(**(policy_loss or {})),
    )


def _loss_inputs(seed):
    """Token and sequence ratios far enough from 1 that clipping fires (verl multiplies by the mask,
    so the values off the mask stay finite here)."""
    ids, mask, rewards, _, logp, old, _ = _batch(seed)
    adv = grpo_advantages(rewards, torch.as_tensor(ids))
    g = torch.Generator().manual_seed(seed)
    seq_shift = torch.randn(len(ids), 1, generator=g) * 0.3  # GSPO: sequence ratios on both sides of the clip
    old = old - seq_shift
    return mask, adv, logp, old


@pytest.mark.parametrize("name", ["gspo", "cispo"])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("adv_shape", ["sequence", "token"])
def test_gspo_and_cispo_match_verl(name, mode, adv_shape):
    """Loss, gradient and metrics equal verl 0.9.1's `compute_policy_loss_gspo` / `_cispo`."""
    mask, adv, logp, old = _loss_inputs(5)
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    theirs_lp = logp.clone().requires_grad_(True)
    theirs, their_metrics = core_algos.get_policy_loss_fn(name)(old, theirs_lp, adv_tok, mask, mode, _actor_config())
    theirs.backward()
    ours_lp = logp.clone().requires_grad_(True)
    ours, metrics = get_policy_loss(name)(
        ours_lp, old, adv if adv_shape == "sequence" else adv_tok, mask.bool(), clip_low=0.2, clip_high=0.3, agg=mode
    )
    ours.backward()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, atol=1e-7, rtol=1e-6)
    for key, their_key in (("clipfrac", "pg_clipfrac"), ("clipfrac_lower", "pg_clipfrac_lower"), ("ppo_kl", "ppo_kl")):
        assert metrics[key].item() == pytest.approx(their_metrics[f"actor/{their_key}"], abs=1e-6)
    assert 0.05 < metrics["clipfrac"].item() < 0.95  # the batch exercises clipping
    assert ours_lp.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vanilla", "gspo", "cispo"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_match_verl_global_batch_normalisation(name, mode):
    """Our `normalizer` / `horizon` per micro-batch = verl's global_batch_info (batch_num_tokens,
    global_batch_size, loss_scale_factor): micro-batch losses add up to the mini-batch's, as in verl."""
    mask, adv, logp, old = _loss_inputs(6)
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    tokens, seqs = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    normalizer = tokens if mode == "token-mean" else seqs
    horizon = 40  # a fixed horizon for seq-mean-token-sum-norm, longer than the padded length
    info = {"dp_size": 1, "batch_num_tokens": tokens, "global_batch_size": seqs, "loss_scale_factor": horizon}
    if name == "vanilla":
        config = OmegaConf.create(
            {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.3, "clip_ratio_c": 3.0, "global_batch_info": info}
        )
    else:
        config = _actor_config(**info)
    total = 0.0
    for rows in torch.arange(len(adv)).split(5):
        ours, _ = get_policy_loss(name)(logp[rows], old[rows], adv[rows], mask[rows], agg=mode, normalizer=normalizer, horizon=horizon)
        theirs, _ = core_algos.get_policy_loss_fn(name)(old[rows], logp[rows], adv_tok[rows], mask[rows], mode, config)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
        total += float(ours)
    whole, _ = get_policy_loss(name)(logp, old, adv, mask, agg=mode, horizon=horizon)
    assert total == pytest.approx(float(whole), rel=1e-5, abs=1e-6)


# Ratios large enough that several of the ~210 tokens are selected (clip_cov: 6 of about 13
# candidates, so the random draw matters); the paper's bounds; β given (verl's config says 0.1).
COV_OPTIONS = {
    "clip_cov": {"clip_cov_ratio": 0.03, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0},
    "kl_cov": {"kl_cov_ratio": 0.03, "ppo_kl_coef": 1.0},
}
COV_METRICS = {"clip_cov": (("clipfrac", "pg_clipfrac"), ("ppo_kl", "ppo_kl")), "kl_cov": (("ppo_kl", "ppo_kl"),)}


def _cov_pair(name, mode, logp, old, adv, adv_tok, mask, seed=11, **global_batch_info):
    """(theirs, their_metrics, their grad, ours, metrics, our grad); both draw from torch's global RNG
    seeded with `seed` (verl's clip_cov calls torch.randperm without a generator; ours too without one)."""
    theirs_lp, ours_lp = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    config = _actor_config(policy_loss={"loss_mode": name, **COV_OPTIONS[name]}, **global_batch_info)
    info = global_batch_info
    norm = {}
    if info:  # our normalizer / horizon for verl's global_batch_info
        norm = {"horizon": info["loss_scale_factor"]}
        norm["normalizer"] = info["batch_num_tokens"] if mode == "token-mean" else info["global_batch_size"]
    with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was for other tests
        torch.manual_seed(seed)
        theirs, their_metrics = core_algos.get_policy_loss_fn(name)(old, theirs_lp, adv_tok, mask, mode, config)
        torch.manual_seed(seed)
        ours, metrics = get_policy_loss(name)(
            ours_lp, old, adv, mask.bool(), clip_low=0.2, clip_high=0.3, agg=mode, **norm, **COV_OPTIONS[name]
        )
    theirs.backward()
    ours.backward()
    return theirs, their_metrics, theirs_lp.grad, ours, metrics, ours_lp.grad


@pytest.mark.parametrize("name", ["clip_cov", "kl_cov"])
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("adv_shape", ["sequence", "token"])
def test_clip_cov_and_kl_cov_match_verl(name, mode, adv_shape):
    """Loss, gradient and metrics equal verl 0.9.1's `compute_policy_loss_clip_cov` / `_kl_cov`,
    clip_cov's random choice included (the same draw from the same RNG state)."""
    mask, adv, logp, old = _loss_inputs(5)
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    theirs, their_metrics, their_grad, ours, metrics, grad = _cov_pair(
        name, mode, logp, old, adv if adv_shape == "sequence" else adv_tok, adv_tok, mask
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, their_grad, atol=1e-7, rtol=1e-6)
    for key, their_key in COV_METRICS[name]:
        assert metrics[key].item() == pytest.approx(their_metrics[f"actor/{their_key}"], abs=1e-6)
    n = int(mask.sum())
    if name == "clip_cov":  # int(0.03 n) tokens lose their gradient, among unclipped ones
        assert metrics["clipfrac"].item() == pytest.approx(int(0.03 * n) / n)
        assert 0.05 < metrics["clip_cov/ppo_clipfrac"].item() < 0.95  # PPO's clip fires too
    else:
        assert metrics["kl_cov/selected_frac"].item() == pytest.approx(int(0.03 * n) / n)


def test_clip_cov_draw_is_random_seeded_and_a_generator_draws_as_verl():
    """Another seed selects other tokens (so the test above checks the draw); a CPU generator seeded
    s draws what verl draws after torch.manual_seed(s)."""
    mask, adv, logp, old = _loss_inputs(5)
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    a = _cov_pair("clip_cov", "token-mean", logp, old, adv, adv_tok, mask, seed=11)
    b = _cov_pair("clip_cov", "token-mean", logp, old, adv, adv_tok, mask, seed=12)
    assert not torch.equal(a[5] == 0, b[5] == 0)
    lp = logp.clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)  # the global RNG's state does not matter with a generator
        ours, _ = get_policy_loss("clip_cov")(
            lp, old, adv, mask, **COV_OPTIONS["clip_cov"], generator=torch.Generator().manual_seed(11)
        )
    ours.backward()
    torch.testing.assert_close(ours, a[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lp.grad, a[2], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["clip_cov", "kl_cov"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_clip_cov_and_kl_cov_global_batch_normalisation_matches_verl(name, mode):
    """Per micro-batch, our `normalizer` / `horizon` = verl's global_batch_info, as for the other losses
    (each micro-batch selects its own tokens, in verl as here)."""
    mask, adv, logp, old = _loss_inputs(6)
    adv_tok = adv[:, None].expand_as(mask).contiguous()
    tokens, seqs = int(mask.sum()), int((mask.sum(-1) > 0).sum())
    info = {"dp_size": 1, "batch_num_tokens": tokens, "global_batch_size": seqs, "loss_scale_factor": 40}
    for rows in torch.arange(len(adv)).split(12):
        theirs, _, their_grad, ours, _, grad = _cov_pair(
            name, mode, logp[rows], old[rows], adv[rows], adv_tok[rows], mask[rows], **info
        )
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad, their_grad, atol=1e-7, rtol=1e-6)
