"""GRPO, Dr.GRPO and RLOO advantages (docs/algorithm.md "Advantages")."""

import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    register_advantage,
    rloo_advantages,
)

groups_st = st.lists(
    st.tuples(st.integers(0, 6), st.floats(-5, 5, allow_nan=False, width=32)), min_size=1, max_size=40
)


def test_grpo_hand_worked():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0])
    g = torch.tensor([3, 3, 3, 3, 8])  # group 8 is a singleton
    adv = grpo_advantages(r, g)
    std = statistics.stdev([1.0, 0.0, 0.0, 1.0])  # unbiased, as torch.std
    expect = [(x - 0.5) / (std + 1e-6) for x in [1.0, 0.0, 0.0, 1.0]] + [0.0]
    torch.testing.assert_close(adv, torch.tensor(expect))


def test_identical_rewards_give_zero_not_nan():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


@given(groups_st)
def test_advantages_sum_to_zero_per_group(rows):
    g = torch.tensor([x[0] for x in rows])
    r = torch.tensor([x[1] for x in rows])
    for fn in (grpo_advantages, drgrpo_advantages, rloo_advantages):
        adv = fn(r, g)
        assert adv.shape == r.shape and adv.dtype == torch.float32
        for gid in g.unique():
            sel = g == gid
            assert abs(float(adv[sel].double().sum())) < 1e-3
            if int(sel.sum()) == 1:
                assert float(adv[sel]) == 0.0


@given(groups_st)
def test_drgrpo_and_rloo_match_loop_references(rows):
    g = [x[0] for x in rows]
    r = [float(x[1]) for x in rows]
    dr = drgrpo_advantages(torch.tensor(r), torch.tensor(g))
    rl = rloo_advantages(torch.tensor(r), torch.tensor(g))
    for i, (gi, ri) in enumerate(zip(g, r)):
        members = [r[j] for j in range(len(r)) if g[j] == gi]
        if len(members) == 1:
            assert dr[i] == 0 and rl[i] == 0
            continue
        others = [r[j] for j in range(len(r)) if g[j] == gi and j != i]
        assert abs(float(dr[i]) - (ri - statistics.fmean(members))) < 1e-4
        assert abs(float(rl[i]) - (ri - statistics.fmean(others))) < 1e-4


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-5, 5)), min_size=1, max_size=40), st.floats(0.1, 10), st.floats(-3, 3))
def test_grpo_invariant_to_affine_reward_changes(rows, scale, shift):
    g = torch.tensor([x[0] for x in rows])
    r = torch.tensor([x[1] for x in rows], dtype=torch.float64)
    a = grpo_advantages(r, g, eps=0.0)
    b = grpo_advantages(r * scale + shift, g, eps=0.0)
    finite = torch.isfinite(a) & torch.isfinite(b)
    torch.testing.assert_close(a[finite], b[finite], atol=2e-3, rtol=1e-3)


def test_group_ids_need_not_be_contiguous_or_sorted():
    r = torch.tensor([1.0, 5.0, 0.0, 7.0])
    g = torch.tensor([42, -1, 42, -1])
    torch.testing.assert_close(drgrpo_advantages(r, g), torch.tensor([0.5, -1.0, -0.5, 1.0]))


def test_registry():
    assert {"grpo", "drgrpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)
    assert get_advantage_estimator("rloo") is rloo_advantages
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        get_advantage_estimator("ppo")

    @register_advantage("test_constant")
    def constant(rewards, group_ids):
        return torch.ones_like(rewards)

    try:
        assert get_advantage_estimator("test_constant")(torch.zeros(2), torch.zeros(2)).tolist() == [1.0, 1.0]
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("test_constant")(lambda r, g: r)
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_constant")
