"""KL estimators and the dynamic KL controller (docs/algorithm.md "Dynamic KL")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.kl import DynamicKL, kl_estimate


def test_estimators_hand_worked():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    assert kl_estimate(logp, ref, "k1").tolist() == [1.0, -1.0]
    assert kl_estimate(logp, ref, "k2").tolist() == [0.5, 0.5]
    assert kl_estimate(logp, ref, "abs").tolist() == [1.0, 1.0]
    k3 = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(k3, torch.tensor([math.exp(-1) + 1 - 1, math.exp(1) - 1 - 1]))


def test_aliases_and_unknown():
    logp, ref = torch.randn(10), torch.randn(10)
    for alias, kind in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        assert torch.equal(kl_estimate(logp, ref, alias), kl_estimate(logp, ref, kind))
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")


def test_k3_clamps_like_low_var_kl():
    # log-ratios of +100 and -100 are clamped to ±20; both k3 values then exceed 10 and are capped.
    out = kl_estimate(torch.tensor([-100.0, 0.0, 0.0]), torch.tensor([0.0, -100.0, -2.0]), "k3")
    assert out.tolist() == pytest.approx([10.0, 10.0, math.exp(-2) + 2 - 1])
    assert torch.isfinite(kl_estimate(torch.tensor([-1e30]), torch.tensor([0.0]), "k3")).all()


@given(st.lists(st.floats(-8, 8), min_size=1, max_size=20))
def test_k3_nonnegative_and_zero_at_equality(values):
    logp = torch.tensor(values)
    ref = logp.flip(0)
    assert bool((kl_estimate(logp, ref, "k3") >= -1e-6).all())  # >= 0 up to fp32 rounding
    assert bool((kl_estimate(logp, logp, "k3") == 0).all())


def test_coefficients_relax_inside_windows():
    ctl = DynamicKL(kl_coef=0.01, rho=0.25)
    ctl.kappa = torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64)
    bucket = torch.tensor([0, 2])
    window = torch.tensor([[False, True, False], [True, True, False]])
    beta = ctl.coefficients(bucket, window)
    torch.testing.assert_close(beta, torch.tensor([[0.1, 0.025, 0.1], [0.1, 0.1, 0.4]]))


def test_update_rule_hand_worked():
    ctl = DynamicKL(kl_coef=0.01, targets=(0.02, 0.05, 0.1), rate=0.1)
    # easy: KL/δ - 1 = 0.5 -> clipped 0.2 -> 0.01 * 1.02; medium: 0.04/0.05 - 1 = -0.2 -> 0.01 * 0.98
    # hard: nan (no tokens) -> unchanged
    kappa = ctl.update(torch.tensor([0.03, 0.04, float("nan")]))
    torch.testing.assert_close(kappa, torch.tensor([0.0102, 0.0098, 0.01], dtype=torch.float64))
    for _ in range(400):  # pushes against the bounds
        ctl.update([1.0, 0.0, 1.0])
    assert ctl.kappa.tolist() == [1.0, 1e-4, 1.0]


def test_state_dict_round_trip_and_validation():
    ctl = DynamicKL()
    ctl.update([0.5, 0.0, 0.05])
    other = DynamicKL()
    other.load_state_dict(ctl.state_dict())
    assert torch.equal(other.kappa, ctl.kappa)
    with pytest.raises(ValueError, match="rho"):
        DynamicKL(rho=0.0)
    with pytest.raises(ValueError, match="targets"):
        DynamicKL(targets=(0.1, 0.1))
    with pytest.raises(ValueError, match="kappa_min <= kl_coef <= kappa_max"):
        DynamicKL(kl_coef=2.0)
