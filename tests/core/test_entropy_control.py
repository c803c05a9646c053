"""core/entropy_control.py: the forking-token threshold and mask (TRL's get_high_entropy_mask), the
entropy bonus term, and the adaptive coefficient (Skywork-OR1 as TRL runs it), on hand values."""

import math

import pytest
import torch

from ares_lit.core import AdaptiveEntropyCoef, aggregate, entropy_bonus, entropy_quantile, forking_mask, forking_threshold

# Two responses; the last two positions of row 1 are padding with the largest entropies, which must
# neither enter the quantile nor be kept.
H = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.7, 0.2, 5.0, 6.0]])
MASK = torch.tensor([[True, True, True, True], [True, True, False, False]])


def test_forking_threshold_and_mask_by_hand():
    # valid entropies sorted: 0.1 0.2 0.3 0.5 0.7 0.9 (n = 6)
    valid = H[MASK]
    # ρ = 0.2 → q = 0.8: rank 0.8·5 = 4 → exactly the 5th value, 0.7; H >= 0.7 keeps 0.7 and 0.9
    thr = forking_threshold(valid, 0.2)
    assert float(thr) == pytest.approx(0.7, abs=1e-6)
    assert forking_mask(H, MASK, thr).tolist() == [[False, False, True, False], [True, False, False, False]]
    # ρ = 0.5 → q = 0.5: rank 2.5 → 0.3 + 0.5·(0.5 − 0.3) = 0.4; keeps 0.5, 0.9, 0.7 (half)
    thr = forking_threshold(valid, 0.5)
    assert float(thr) == pytest.approx(0.4, abs=1e-6)
    assert forking_mask(H, MASK, thr).sum() == 3
    # `>=`: a token equal to the threshold is kept (ρ = 0.6 → q = 0.4, rank 2 → exactly 0.3)
    thr = forking_threshold(valid, 0.6)
    assert float(thr) == pytest.approx(0.3, abs=1e-6) and forking_mask(H, MASK, thr)[0, 3]
    # ρ = 1 keeps every valid token and no padding; ρ = 0 only the highest-entropy valid token
    assert torch.equal(forking_mask(H, MASK, forking_threshold(valid, 1.0)), MASK)
    assert forking_mask(H, MASK, forking_threshold(valid, 0.0)).tolist() == [[False, False, True, False], [False] * 4]
    # no valid token anywhere: nan threshold, nothing kept
    empty = forking_threshold(torch.zeros(0), 0.2)
    assert math.isnan(float(empty)) and not forking_mask(H, torch.zeros_like(MASK), empty).any()


def test_quantile_is_torch_quantile_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7, 100, 1001):
        x = torch.rand(n, generator=g) * 4
        for q in (0.0, 0.1, 0.2, 0.5, 0.8, 0.95, 1.0):
            assert torch.equal(entropy_quantile(x, q), torch.quantile(x, q)), (n, q)
    x64 = torch.rand(50, generator=g, dtype=torch.float64)
    assert torch.equal(entropy_quantile(x64, 0.8), torch.quantile(x64, 0.8))
    with pytest.raises(ValueError, match="top_quantile"):
        forking_threshold(x, 1.5)


def _trl_get_high_entropy_mask(entropies, mask, threshold):
    """TRL's own function (trl/trainer/grpo_trainer.py GRPOTrainer.get_high_entropy_mask), in one
    process: the accelerator's pad/gather are identities, as in TRL's tests/test_grpo_trainer.py."""
    from unittest.mock import Mock

    from trl import GRPOTrainer

    trainer = Mock(spec=GRPOTrainer)
    trainer.accelerator = Mock()
    trainer.accelerator.num_processes = 1
    trainer.accelerator.gather = lambda x: x
    trainer.accelerator.pad_across_processes = lambda x, dim=0, pad_index=0: x
    return GRPOTrainer.get_high_entropy_mask(trainer, entropies, mask, threshold)


def test_forking_mask_equals_trl_get_high_entropy_mask():
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(1)
    cases = [(H, MASK.long())]
    for b, t in ((3, 11), (8, 40), (1, 1)):
        lengths = torch.randint(0, t + 1, (b,), generator=g)
        cases.append((torch.rand(b, t, generator=g) * 3, (torch.arange(t)[None] < lengths[:, None]).long()))
    cases.append((torch.rand(2, 5, generator=g).round(decimals=1), torch.ones(2, 5, dtype=torch.long)))  # ties
    for entropies, mask in cases:
        for rho in (0.0, 0.2, 0.5, 0.8, 1.0):
            trl = _trl_get_high_entropy_mask(entropies, mask, 1 - rho)
            ours = forking_mask(entropies, mask, forking_threshold(entropies[mask.bool()], rho))
            assert torch.equal(ours, trl), (rho, entropies, mask)


def test_entropy_bonus_is_aggregated_like_the_policy_loss():
    keep = torch.tensor([[False, True, True, False], [True, False, False, False]])
    # token-mean over the mini-batch normalizer: Σ kept H / 10 (all valid tokens of the mini-batch count)
    assert float(entropy_bonus(H, MASK, "token-mean", keep, normalizer=10.0)) == pytest.approx((0.5 + 0.9 + 0.7) / 10)
    assert float(entropy_bonus(H, MASK)) == pytest.approx(float(H[MASK].mean()))
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        want = aggregate(H * keep, MASK, mode, normalizer=2.0, horizon=4.0)
        assert torch.equal(entropy_bonus(H, MASK, mode, keep, normalizer=2.0, horizon=4.0), want)
    h = H.clone().requires_grad_()
    entropy_bonus(h, MASK, "token-mean", keep).backward()
    assert torch.equal(h.grad != 0, keep)  # the gradient reaches the kept tokens only


def test_adaptive_coefficient_follows_trl_rule():
    ctl = AdaptiveEntropyCoef(coef=0.01, adaptive=True, target=1.0, delta=0.005, coef_min=0.0, coef_max=0.02)
    assert ctl.applied() == 0.0  # no measurement yet: the first step applies no bonus (TRL: last entropy = inf)
    trace = []
    # (Σ H, tokens) per optimizer step: mean 0.5, 0.8, 1.0 (= target: counts as below), 2.0, 1.5, 0.25
    for s, n in ((5.0, 10), (8.0, 10), (3.0, 3), (20.0, 10), (3.0, 2), (1.0, 4)):
        h = ctl.update(s, n)
        trace.append((h, round(ctl.coef, 10), round(ctl.applied(), 10)))
    assert trace == [
        (0.5, 0.015, 0.015),
        (0.8, 0.02, 0.02),  # capped at coef_max
        (1.0, 0.02, 0.02),  # H <= target: +δ, still capped; applied
        (2.0, 0.015, 0.0),  # above target: −δ, and the bonus is off next step
        (1.5, 0.01, 0.0),
        (0.25, 0.015, 0.015),
    ]
    assert ctl.update(0.0, 0) == 0.0  # no token: H = 0 / max(0, 1) (TRL's clamp)
    state = ctl.state_dict()
    other = AdaptiveEntropyCoef(coef=0.01, adaptive=True, target=1.0, delta=0.005, coef_min=0.0, coef_max=0.02)
    other.load_state_dict(state)
    assert other.state_dict() == state and other.applied() == ctl.applied()
    for _ in range(10):
        ctl.update(30.0, 10)
    assert ctl.coef == 0.0 and ctl.applied() == 0.0  # floored at coef_min
    const = AdaptiveEntropyCoef(coef=0.003)
    const.update(100.0, 1)
    assert const.applied() == 0.003  # a constant coefficient never moves nor gates
    with pytest.raises(ValueError, match="target"):
        AdaptiveEntropyCoef(adaptive=True)
