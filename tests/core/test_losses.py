"""Loss aggregation, the policy-loss registry and its losses (docs/algorithm.md "Policy loss")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    aggregate,
    cispo_policy_loss,
    get_policy_loss,
    gspo_policy_loss,
    policy_loss,
    register_policy_loss,
)

V = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
M = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregate_modes_hand_worked():
    assert float(aggregate(V, M, "token-mean")) == pytest.approx(40 / 6)
    # sequence 3 has no tokens and is left out of sequence means
    assert float(aggregate(V, M, "seq-mean-token-mean")) == pytest.approx((2.5 + 15) / 2)
    assert float(aggregate(V, M, "seq-mean-token-sum")) == pytest.approx((10 + 30) / 2)
    assert float(aggregate(V, M, "seq-mean-token-sum-norm")) == pytest.approx((10 + 30) / 2 / 4)
    assert float(aggregate(V, M, "seq-mean-token-sum-norm", horizon=8)) == pytest.approx((10 + 30) / 2 / 8)


def test_aggregate_global_normalizer_makes_micro_batches_add_up():
    whole = aggregate(V, M, "token-mean")
    parts = sum(aggregate(V[i : i + 1], M[i : i + 1], "token-mean", normalizer=6) for i in range(3))
    assert float(parts) == pytest.approx(float(whole))
    whole = aggregate(V, M, "seq-mean-token-mean")
    parts = sum(aggregate(V[i : i + 1], M[i : i + 1], "seq-mean-token-mean", normalizer=2) for i in range(3))
    assert float(parts) == pytest.approx(float(whole))


def test_aggregate_ignores_garbage_outside_mask_and_rejects_unknown_modes():
    garbage = torch.where(M.bool(), V, torch.full_like(V, math.nan))
    for mode in AGG_MODES:
        assert float(aggregate(garbage, M, mode)) == pytest.approx(float(aggregate(V, M, mode)))
    with pytest.raises(ValueError, match="unknown loss aggregation 'token-sum-x'"):
        aggregate(V, M, "token-sum-x")


def test_policy_loss_branches_hand_worked():
    # token 0: A=+1, ratio e^0.5 > 1.3 -> clipped at 1.3  -> loss -1.3
    # token 1: A=+1, ratio 1          -> -1
    # token 2: A=-1, ratio e^2 (7.39) -> max(7.39, 1.3) = 7.39 > c=3 -> dual clip -> 3
    # token 3: A=-1, ratio e^-1 (0.37) -> max(0.37, 0.8) = 0.8
    logp = torch.tensor([[0.5, 0.0, 2.0, -1.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, metrics = policy_loss(logp, old, adv, mask)
    assert float(loss) == pytest.approx((-1.3 - 1.0 + 3.0 + 0.8) / 4, abs=1e-6)
    assert float(metrics["clipfrac"]) == pytest.approx(2 / 4, abs=1e-6)  # tokens 0 and 3
    assert float(metrics["clipfrac_lower"]) == pytest.approx(1 / 4, abs=1e-6)  # token 2
    assert float(metrics["ppo_kl"]) == pytest.approx(-(0.5 + 2.0 - 1.0) / 4, abs=1e-6)


def test_sequence_advantages_broadcast_over_tokens():
    logp = torch.randn(3, 5) * 0.3
    old = torch.randn(3, 5) * 0.3
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = (torch.rand(3, 5) > 0.3).float()
    a, _ = policy_loss(logp, old, adv, mask)
    b, _ = policy_loss(logp, old, adv[:, None].expand(3, 5), mask)
    assert float(a) == float(b)


def test_gradient_on_policy_is_minus_advantage_over_tokens():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, _ = policy_loss(logp, torch.zeros(2, 3), adv, mask)
    loss.backward()
    expect = -adv[:, None] * mask / 5
    torch.testing.assert_close(logp.grad, expect)


@given(
    st.integers(1, 4), st.integers(1, 8), st.sampled_from(AGG_MODES), st.sampled_from(["vanilla", "gspo", "cispo"]),
    st.integers(0, 2**31 - 1),
)
def test_loss_and_gradient_ignore_masked_tokens(b, t, mode, name, seed):
    policy_loss = get_policy_loss(name)
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(b, t, generator=g) * 0.5
    old = torch.randn(b, t, generator=g) * 0.5
    adv = torch.randn(b, generator=g)
    mask = torch.rand(b, t, generator=g) > 0.4
    noise = torch.randn(b, t, generator=g) * 10
    x = logp.clone().requires_grad_(True)
    y = torch.where(mask, logp, logp + noise).requires_grad_(True)
    la, _ = policy_loss(x, old, adv, mask, agg=mode)
    lb, _ = policy_loss(y, torch.where(mask, old, old - noise), adv, mask, agg=mode)
    la.backward()
    lb.backward()
    assert abs(la.detach().item() - lb.detach().item()) < 1e-5
    assert bool((x.grad[~mask] == 0).all()) and bool((y.grad[~mask] == 0).all())
    torch.testing.assert_close(x.grad[mask], y.grad[mask])


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="clip_dual"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), clip_dual=1.0)


def test_registry_names_and_errors():
    assert {"vanilla", "gspo", "cispo"} <= set(POLICY_LOSSES)
    assert get_policy_loss("vanilla") is policy_loss
    assert get_policy_loss("gspo") is gspo_policy_loss and get_policy_loss("cispo") is cispo_policy_loss
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2'; choose one of"):
        get_policy_loss("ppo2")
    with pytest.raises(ValueError, match="'gspo' is already registered"):
        register_policy_loss("gspo")(policy_loss)


def test_a_new_loss_is_one_decorated_function():
    @register_policy_loss("reinforce_test")
    def reinforce(log_probs, old_log_probs, advantages, mask, clip_low=0.2, clip_high=0.3, clip_dual=3.0,
                  agg="token-mean", *, normalizer=None, horizon=None):
        per_token = -advantages.unsqueeze(-1) * log_probs
        return aggregate(per_token, mask, agg, normalizer=normalizer, horizon=horizon), {}

    try:
        loss, _ = get_policy_loss("reinforce_test")(torch.full((1, 2), -2.0), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
        assert float(loss) == 2.0
    finally:
        POLICY_LOSSES.pop("reinforce_test")


def test_gspo_hand_worked():
    # sequence 0: token log-ratios 0.1, 0.3 -> s = e^0.2 = 1.221 inside [0.8, 1.3]: loss -s, gradient -s per token
    # sequence 1: log-ratios 0.5 x 3 -> s = e^0.5 = 1.649 > 1.3 with A > 0: clipped, loss -1.3, no gradient
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.3, 9.0], [0.5, 0.5, 0.5]], requires_grad=True)  # 9.0 is padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    loss, metrics = gspo_policy_loss(logp, old, torch.tensor([1.0, 1.0]), mask)
    s = math.exp(0.2)
    assert float(loss.detach()) == pytest.approx((-2 * s - 3 * 1.3) / 5, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-s / 5, -s / 5, 0.0], [0.0, 0.0, 0.0]]))
    assert float(metrics["clipfrac"]) == pytest.approx(3 / 5, abs=1e-6)  # a whole sequence is clipped
    assert float(metrics["clipfrac_lower"]) == 0.0
    assert float(metrics["ppo_kl"]) == pytest.approx(-(0.1 + 0.3 + 1.5) / 5, abs=1e-6)


def test_gspo_ratio_is_per_sequence():
    """Permuting tokens inside a sequence changes nothing: only the mean log-ratio counts."""
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(3, 6, generator=g), -torch.rand(3, 6, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5])
    mask = torch.ones(3, 6, dtype=torch.bool)
    perm = torch.randperm(6, generator=g)
    a, _ = gspo_policy_loss(logp, old, adv, mask, clip_low=0.01, clip_high=0.01)
    b, _ = gspo_policy_loss(logp[:, perm], old[:, perm], adv, mask, clip_low=0.01, clip_high=0.01)
    assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_cispo_hand_worked_keeps_gradient_of_clipped_tokens():
    # r = e^0.5 -> 1.3 (clipped), 1, e^-1 -> 0.8 (clipped); L = -sg(r_hat)·A·logπ, token-mean
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.0, 0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, metrics = cispo_policy_loss(logp, old, adv, torch.ones(1, 3))
    assert float(loss.detach()) == pytest.approx((1.3 + 2.0 - 0.4) / 3, abs=1e-6)
    loss.backward()
    # PPO's clip would give the clipped tokens 0 gradient; CISPO keeps -r_hat·A / n for every token
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.3 / 3, -1.0 / 3, 0.8 / 3]]))
    assert float(metrics["clipfrac"]) == pytest.approx(2 / 3, abs=1e-6)
    assert float(metrics["ppo_kl"]) == pytest.approx(-(0.5 + 0.0 - 1.0) / 3, abs=1e-6)
