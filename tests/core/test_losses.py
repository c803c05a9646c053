"""Loss aggregation, the policy-loss registry and its losses (docs/algorithm.md "Policy loss")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.cov_losses import clip_cov_policy_loss, kl_cov_policy_loss
from ares_lit.core.losses import (
    AGG_MODES,
    POLICY_LOSSES,
    PolicyLossOptions,
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
    st.integers(1, 4), st.integers(1, 8), st.sampled_from(AGG_MODES),
    st.sampled_from(["vanilla", "gspo", "cispo", "clip_cov", "kl_cov"]), st.integers(0, 2**31 - 1),
)
def test_loss_and_gradient_ignore_masked_tokens(b, t, mode, name, seed):
    loss_fn = get_policy_loss(name)
    # clip_cov draws at random: the same draw for both calls (a wide band, so that it selects something)
    opts = {"clip_cov_ratio": 0.3, "clip_cov_lb": -10.0, "clip_cov_ub": 10.0} if name == "clip_cov" else {}

    def policy_loss(*args, **kwargs):
        extra = {"generator": torch.Generator().manual_seed(seed)} if name == "clip_cov" else {}
        return loss_fn(*args, **kwargs, **opts, **extra)

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
    assert {"vanilla", "gspo", "cispo", "clip_cov", "kl_cov"} <= set(POLICY_LOSSES)
    assert get_policy_loss("vanilla") is policy_loss
    assert get_policy_loss("gspo") is gspo_policy_loss and get_policy_loss("cispo") is cispo_policy_loss
    assert get_policy_loss("clip_cov") is clip_cov_policy_loss and get_policy_loss("kl_cov") is kl_cov_policy_loss
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


# ------------------------------------------------------------------ clip_cov / kl_cov
# Two sequences of 4 tokens, A = +2 and -2 (mean 0), log-probs 0, -1, -2, -3 in both (mean -1.5):
# Cov = A·(logπ + 1.5) = [[3, 1, -1, -3], [-3, -1, 1, 3]]. In the band (1, 5), strictly: (0,0) and (1,3).
COV_LOGP = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -1.0, -2.0, -3.0]])
COV_ADV = torch.tensor([2.0, -2.0])
COV_MASK = torch.ones(2, 4, dtype=torch.bool)
A_TOK = COV_ADV[:, None].expand(2, 4)


def _clip_cov(old, **kwargs):
    logp = COV_LOGP.clone().requires_grad_(True)
    loss, metrics = clip_cov_policy_loss(logp, old, COV_ADV, COV_MASK, **kwargs)
    loss.backward()
    return loss.detach(), metrics, logp.grad


def test_clip_cov_hand_worked_zeroes_the_gradient_of_the_selected_tokens():
    # ratio 1 everywhere, so PPO clips nothing; clip_cov_ratio 0.25: max(int(0.25·8), 1) = 2 = both candidates
    loss, metrics, grad = _clip_cov(COV_LOGP.clone(), clip_cov_ratio=0.25)
    selected = torch.zeros(2, 4, dtype=torch.bool)
    selected[0, 0] = selected[1, 3] = True  # cov 3; the cov-1 tokens sit on the band's open edge
    torch.testing.assert_close(grad, torch.where(selected, 0.0, -A_TOK / 8))
    assert bool((grad[selected] == 0).all()) and bool((grad[~selected] != 0).all())
    assert float(loss) == pytest.approx(float((-A_TOK)[~selected].sum()) / 8)  # a selected token's value is 0, too
    assert float(metrics["clipfrac"]) == pytest.approx(2 / 8)
    assert float(metrics["clip_cov/ppo_clipfrac"]) == 0.0 and float(metrics["ppo_kl"]) == 0.0
    # a token PPO clips is no candidate: (0,0) with ratio e^0.5 > 1.3 and A > 0 leaves only (1,3)
    old = COV_LOGP.clone()
    old[0, 0] = -0.5
    _, metrics, grad = _clip_cov(old, clip_cov_ratio=1.0)
    assert float(metrics["clipfrac"]) == pytest.approx(1 / 8) and float(metrics["clip_cov/ppo_clipfrac"]) == pytest.approx(1 / 8)
    assert grad[0, 0] == 0 and grad[1, 3] == 0 and bool((grad[0, 1:] != 0).all())
    # a band that admits nothing: the loss is PPO's clipped surrogate without dual clip
    ppo, _ = policy_loss(COV_LOGP, old, COV_ADV, COV_MASK, clip_dual=1e9)
    assert float(_clip_cov(old, clip_cov_lb=5.0, clip_cov_ub=5.0)[0]) == pytest.approx(float(ppo))


def test_clip_cov_draw_is_one_of_the_candidates_reproducible_from_the_generator():
    # default ratio 2e-4: max(int(2e-4·8), 1) = 1 token of the 2 candidates, drawn at random
    picks = []
    for seed in range(12):
        _, metrics, grad = _clip_cov(COV_LOGP.clone(), generator=torch.Generator().manual_seed(seed))
        zero = (grad == 0).nonzero().tolist()
        assert len(zero) == 1 and zero[0] in ([0, 0], [1, 3]) and float(metrics["clipfrac"]) == pytest.approx(1 / 8)
        again = _clip_cov(COV_LOGP.clone(), generator=torch.Generator().manual_seed(seed))[2]
        assert torch.equal(grad, again)
        picks.append(tuple(zero[0]))
    assert set(picks) == {(0, 0), (1, 3)}


def test_kl_cov_hand_worked_penalises_the_top_covariance_tokens():
    # logπ - logπ_old = 0.1 everywhere (r = e^0.1); ratio 0.25: k = 2, the two tokens of cov 3
    logp = COV_LOGP.clone().requires_grad_(True)
    loss, metrics = kl_cov_policy_loss(logp, COV_LOGP - 0.1, COV_ADV, COV_MASK, kl_cov_ratio=0.25, ppo_kl_coef=0.5)
    loss.backward()
    r = math.exp(0.1)
    selected = torch.zeros(2, 4, dtype=torch.bool)
    selected[0, 0] = selected[1, 3] = True
    # -A·r sums to 0 (mean A = 0): only the penalty 0.5·|0.1| of the 2 selected tokens remains, / 8
    assert float(loss.detach()) == pytest.approx(2 * 0.5 * 0.1 / 8, abs=1e-6)
    torch.testing.assert_close(logp.grad, (-A_TOK * r + 0.5 * selected) / 8)
    assert float(metrics["kl_cov/selected_frac"]) == pytest.approx(2 / 8)
    assert float(metrics["ppo_kl"]) == pytest.approx(0.1)  # verl's: the mean of |logπ - logπ_old|
    assert float(metrics["clipfrac"]) == 0.0 and float(metrics["clipfrac_lower"]) == 0.0


@given(st.integers(1, 4), st.integers(1, 8), st.floats(1e-4, 1.0), st.floats(0.0, 2.0), st.integers(0, 2**31 - 1))
def test_kl_cov_is_the_unclipped_surrogate_plus_the_penalty_on_the_top_covariance_tokens(b, t, ratio, beta, seed):
    g = torch.Generator().manual_seed(seed)
    logp, old = torch.randn(b, t, generator=g) * 0.5, torch.randn(b, t, generator=g) * 0.5
    adv, mask = torch.randn(b, generator=g), torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    loss, metrics = kl_cov_policy_loss(logp, old, adv, mask, kl_cov_ratio=ratio, ppo_kl_coef=beta)
    surrogate = aggregate(-adv[:, None] * torch.exp(logp - old), mask)
    a = adv[:, None].expand(b, t)[mask]
    cov = (a - a.mean()) * (logp[mask] - logp[mask].mean())
    n, k = int(mask.sum()), max(1, int(int(mask.sum()) * ratio))
    assert float(metrics["kl_cov/selected_frac"]) == pytest.approx(k / n)
    top = torch.topk(cov, k).indices
    penalty = beta * (logp - old)[mask].abs()[top].sum() / n
    assert float(loss) == pytest.approx(float(surrogate + penalty), rel=1e-5, abs=1e-6)


def test_cov_ratios_must_be_in_unit_interval():
    args = (COV_LOGP, COV_LOGP, COV_ADV, COV_MASK)
    with pytest.raises(ValueError, match=r"clip_cov_ratio must be in \(0, 1\]; got 0.0"):
        clip_cov_policy_loss(*args, clip_cov_ratio=0.0)
    with pytest.raises(ValueError, match=r"kl_cov_ratio must be in \(0, 1\]; got 2.0"):
        kl_cov_policy_loss(*args, kl_cov_ratio=2.0)


def test_policy_loss_options_check_keys_and_seed_a_generator_per_step():
    message = r"^x.kw: policy loss 'kl_cov' takes no option 'kl_cov_coef'; accepted: \['kl_cov_ratio', 'ppo_kl_coef'\]$"
    with pytest.raises(ValueError, match=message):
        PolicyLossOptions("kl_cov", {"kl_cov_coef": 1.0}, "x.kw")
    with pytest.raises(ValueError, match="policy loss 'vanilla' takes no option 'clip_low'; accepted: none"):
        PolicyLossOptions("vanilla", {"clip_low": 0.1})  # the module passes the common arguments itself
    with pytest.raises(ValueError, match="policy_loss_kwargs.clip_cov_lb must be a number; got '1'"):
        PolicyLossOptions("clip_cov", {"clip_cov_lb": "1"})
    assert PolicyLossOptions("cispo")(3, 4, 5) == {}  # no generator for a loss that draws nothing
    opts = PolicyLossOptions("clip_cov", {"clip_cov_ratio": 0.1})
    first = opts(0, 7, 1)
    assert first["clip_cov_ratio"] == 0.1
    a = torch.randperm(1000, generator=first["generator"])
    b = torch.randperm(1000, generator=opts(0, 7, 1)["generator"])  # the same step continues the stream
    fresh = PolicyLossOptions("clip_cov")
    assert torch.equal(torch.randperm(1000, generator=fresh(0, 7, 1)["generator"]), a)  # a resumed run redraws a
    assert not torch.equal(a, b)
    others = [torch.randperm(1000, generator=fresh(*key)["generator"]) for key in ((1, 7, 1), (0, 8, 1), (0, 7, 0))]
    assert all(not torch.equal(a, o) for o in others)
