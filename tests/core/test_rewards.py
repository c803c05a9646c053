"""Hierarchical entropy reward, bucket targets and α updates (docs/algorithm.md "Hierarchical entropy reward")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.buckets import EASY, HARD, MEDIUM
from ares_lit.core.alpha import update_alpha
from ares_lit.core.rewards import bucket_targets, entropy_shaping_reward, total_reward

F, KAPPA, S, C, W = (0.15, 0.25, 0.35), (2.0, 3.0, 4.0), (2.0, 2.5, 3.0), (1.0, 1.0, 1.2), (0.6, 0.8, 1.0)


def scalar_reward(n, t, d, correct, alpha):
    """Independent scalar transcription of the spec's formulas (plain math, no torch)."""

    def h(x, k):
        return x * x / (2 * k) if x <= k else x - k / 2

    def sig(x, s):
        return 1.0 / (1.0 + math.exp(-x / s))

    delta = n - t
    m = max(1.0, F[d] * max(t, 1.0))
    k, s, cap = KAPPA[d], S[d], alpha * C[d]
    if not correct:
        return sig(max(delta - m, 0.0), s) * cap * W[d]
    if d == EASY:
        return -min(cap, h(max(delta - m, 0.0), k) / (m + k) * cap)
    if d == MEDIUM:
        return -min(cap, h(max(abs(delta) - m, 0.0), k) / (m + k) * cap)
    if delta >= -m:
        return sig(delta + m, s) * cap
    return -min(cap, 0.5 * h(-delta - m, k) / (m + k) * cap)


def reward(n, t, d, correct, alpha):
    return float(
        entropy_shaping_reward(torch.tensor([float(n)]), t, torch.tensor([d]), torch.tensor([correct]), alpha)[0]
    )


def test_appendix_m_case_study():
    # alpha = 0.5, T = 28: a correct easy answer with N_HE = 51 gets -0.5.
    assert reward(51, 28.0, EASY, True, 0.5) == pytest.approx(-0.5, abs=1e-7)


def test_hand_worked_branches():
    # hard, correct, on target: m = 9.8, sigma(9.8 / 3) * 0.6
    assert reward(28, 28.0, HARD, True, 0.5) == pytest.approx(0.6 / (1 + math.exp(-9.8 / 3)), abs=1e-6)
    # hard, correct, far under target: x = 18 - 9.8 = 8.2 > 4 -> h = 6.2; -(0.5 * 6.2 / 13.8 * 0.6)
    assert reward(10, 28.0, HARD, True, 0.5) == pytest.approx(-(0.5 * 6.2 / 13.8 * 0.6), abs=1e-6)
    # medium, correct, within margin 7: no penalty
    assert reward(30, 28.0, MEDIUM, True, 0.5) == pytest.approx(0.0, abs=1e-7)
    # medium, correct, 3 under the margin: x = 3 <= kappa 3 -> h = 1.5; -(1.5 / 10 * 0.5)
    assert reward(18, 28.0, MEDIUM, True, 0.5) == pytest.approx(-(1.5 / 10 * 0.5), abs=1e-6)
    # incorrect medium below target: sigma(0) * 0.5 * 0.8
    assert reward(20, 28.0, MEDIUM, False, 0.5) == pytest.approx(0.2, abs=1e-7)
    # tiny targets: the margin never drops below 1
    assert reward(2.5, 0.0, EASY, True, 1.0) == pytest.approx(-(0.5625 / 3.0), abs=1e-6)


vals = st.tuples(
    st.integers(0, 200), st.floats(0, 150), st.integers(0, 2), st.booleans(), st.floats(0, 2)
)


@given(st.lists(vals, min_size=1, max_size=40))
def test_vectorized_matches_scalar_transcription(rows):
    n, t, d, c, a = (list(x) for x in zip(*rows))
    got = entropy_shaping_reward(
        torch.tensor(n, dtype=torch.float32), torch.tensor(t), torch.tensor(d), torch.tensor(c), torch.tensor(a)
    )
    expect = torch.tensor([scalar_reward(*r) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-5)


@given(st.lists(vals, min_size=1, max_size=40))
def test_reward_bounded_by_cap_and_easy_correct_never_positive(rows):
    n, t, d, c, a = (torch.tensor(list(x)) for x in zip(*rows))
    r = entropy_shaping_reward(n.float(), t.float(), d, c, a.float())
    cap = a.float() * torch.tensor(C)[d]
    assert bool((r.abs() <= cap + 1e-6).all())
    assert bool((r[(d == EASY) & c] <= 0).all())
    zero = entropy_shaping_reward(n.float(), t.float(), d, c, 0.0)
    assert bool((zero == 0).all())


def test_custom_constants_are_used():
    base = reward(51, 28.0, EASY, False, 0.5)
    louder = float(
        entropy_shaping_reward(
            torch.tensor([51.0]), 28.0, torch.tensor([0]), torch.tensor([False]), 0.5, wrong_scale=(1.2, 0.8, 1.0)
        )[0]
    )
    assert louder == pytest.approx(base * 2, rel=1e-6)
    with pytest.raises(ValueError, match="easy, medium, hard"):
        entropy_shaping_reward(torch.tensor([1.0]), 1.0, torch.tensor([0]), torch.tensor([True]), 0.5, huber_kappa=(1, 2))


def test_bucket_targets_means_empty_and_ema():
    n = torch.tensor([10.0, 20.0, 30.0, 50.0])
    b = torch.tensor([EASY, EASY, HARD, HARD])
    targets, mean, present = bucket_targets(n, b)
    assert present.tolist() == [True, False, True]
    assert targets[0] == 15 and targets[2] == 40 and math.isnan(float(targets[1]))
    prev = torch.tensor([5.0, 7.0, 100.0])
    targets, mean, _ = bucket_targets(n, b, previous=prev)
    assert targets.tolist() == [15.0, 7.0, 40.0]  # empty medium keeps its last target
    targets, _, _ = bucket_targets(n, b, previous=prev, momentum=0.25)
    torch.testing.assert_close(targets, torch.tensor([0.75 * 5 + 0.25 * 15, 7.0, 0.75 * 100 + 0.25 * 40]))


def test_update_alpha_signs_bounds_and_absent():
    alpha = torch.tensor([0.5, 0.5, 0.5])
    mean = torch.tensor([30.0, 10.0, 30.0])
    target = torch.tensor([20.0, 20.0, 20.0])
    out = update_alpha(alpha, mean, target, torch.tensor([True, True, True]), eta=0.01)
    torch.testing.assert_close(out, torch.tensor([0.6, 0.4, 0.4]))  # hard moves the other way
    out = update_alpha(alpha, mean, target, torch.tensor([True, False, True]), eta=1.0)
    assert out.tolist() == [2.0, 0.5, 0.0]  # clipped to [0, 2]; medium absent keeps alpha
    nan_target = torch.tensor([float("nan"), 20.0, 20.0])
    assert update_alpha(alpha, mean, nan_target, torch.ones(3, dtype=torch.bool), eta=0.01)[0] == 0.5


def test_total_reward():
    acc = torch.tensor([1.0, 0.0])
    ent = torch.tensor([-0.5, 0.3])
    fmt = torch.tensor([1.0, 0.0])
    assert total_reward(acc, ent).tolist() == pytest.approx([0.5, 0.3])
    assert total_reward(acc, ent, fmt, format_weight=0.1).tolist() == pytest.approx([0.6, 0.3])
