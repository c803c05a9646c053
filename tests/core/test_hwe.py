"""HWE threshold, tokens and windows (docs/algorithm.md "HWE threshold", "HWE tokens")."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.core.hwe import (
    HWEThreshold,
    count_hwe,
    hwe_mask,
    hwe_threshold,
    hwe_window_mask,
    sequence_quantiles,
    voting_quantiles,
)

masks = st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=6)


@given(masks, st.floats(0.0, 1.0))
def test_sequence_quantiles_match_torch_quantile(mask_rows, q):
    valid = torch.tensor(mask_rows)
    win = torch.rand(valid.shape) * 5
    got, has = sequence_quantiles(win, valid, q)
    for i in range(valid.shape[0]):
        vals = win[i][valid[i]]
        assert bool(has[i]) == (vals.numel() > 0)
        if vals.numel():
            assert abs(float(got[i]) - float(torch.quantile(vals.double(), q))) < 1e-5


def test_threshold_is_mean_of_per_sequence_quantiles():
    # Row 0 valid values 0..20 -> q95 = 19; row 1 values 100..104 -> q95 = 103.8.
    win = torch.zeros(2, 21)
    valid = torch.zeros(2, 21, dtype=torch.bool)
    win[0] = torch.arange(21.0)
    valid[0] = True
    win[1, :5] = torch.arange(100.0, 105.0)
    valid[1, :5] = True
    tau = hwe_threshold(win, valid, 0.95)
    assert abs(float(tau) - (19.0 + 103.8) / 2) < 1e-4
    assert abs(float(hwe_threshold(win, valid, 0.5)) - (10.0 + 102.0) / 2) < 1e-4


def test_threshold_median_option_and_empty_rows():
    win = torch.tensor([[1.0, 0.0], [2.0, 0.0], [9.0, 0.0], [5.0, 5.0]])
    valid = torch.tensor([[True, False], [True, False], [True, False], [False, False]])
    assert float(hwe_threshold(win, valid, 0.95, reduce="median")) == 2.0  # row 3 has no window
    assert abs(float(hwe_threshold(win, valid, 0.95)) - 4.0) < 1e-6
    assert math.isnan(float(hwe_threshold(win, torch.zeros_like(valid), 0.95)))
    with pytest.raises(ValueError, match="reduce"):
        hwe_threshold(win, valid, reduce="max")


def test_stateful_threshold_ema_and_state_dict():
    t = HWEThreshold(momentum=0.1)
    assert t.update(float("nan")) is None  # nothing yet
    assert t.update(2.0) == 2.0  # first value initialises
    assert abs(t.update(4.0) - (0.9 * 2.0 + 0.1 * 4.0)) < 1e-12
    assert abs(t.update(float("nan")) - 2.2) < 1e-12  # empty batch keeps tau
    clone = HWEThreshold(momentum=0.1)
    clone.load_state_dict(t.state_dict())
    assert clone.value == t.value and clone.num_updates == t.num_updates == 2
    paper = HWEThreshold()  # paper default: recomputed every batch
    paper.update(3.0)
    assert paper.update(7.0) == 7.0
    with pytest.raises(ValueError, match="momentum"):
        HWEThreshold(momentum=0.0)


def test_tau_batch_from_quantiles_uses_configured_statistic():
    win = torch.tensor([[1.0, 0.0], [2.0, 0.0], [9.0, 0.0], [5.0, 0.0]])
    valid = torch.tensor([[True, False], [True, False], [True, False], [False, False]])  # row 3: no window
    for reduce, expect in (("median", 2.0), ("mean", 4.0)):
        tau = HWEThreshold(reduce=reduce, min_windows=0)  # the paper: every response with a window votes
        q = tau.quantiles(win, valid)
        assert q.tolist() == [1.0, 2.0, 9.0]  # the row without a valid window is left out
        assert float(tau.from_quantiles(q)) == expect == float(hwe_threshold(win, valid, reduce=reduce))


def test_short_responses_do_not_vote_on_tau_but_are_still_marked():
    """docs/algorithm.md "HWE threshold τ" (2026-12-04): fewer than 8 valid windows give no q_i; 0 is the paper."""
    win = torch.zeros(3, 12)
    valid = torch.zeros(3, 12, dtype=torch.bool)
    win[0, :10], valid[0, :10] = torch.arange(10.0), True  # 10 windows: q95 = 8.55
    win[1, :3], valid[1, :3] = torch.tensor([0.5, 9.0, 0.5]), True  # 3 windows: q95 is its peak (8.15)
    win[2, :8], valid[2, :8] = torch.arange(8.0) / 2, True  # exactly 8 windows: votes, q95 = 3.325
    tau = HWEThreshold()
    assert tau.min_windows == 8
    assert tau.quantiles(win, valid).tolist() == pytest.approx([8.55, 3.325])
    assert voting_quantiles(win, valid, 0.95, 0).tolist() == pytest.approx([8.55, 8.15, 3.325])
    assert float(hwe_threshold(win, valid, min_windows=8)) == pytest.approx((8.55 + 3.325) / 2)
    assert float(hwe_threshold(win, valid)) == pytest.approx((8.55 + 8.15 + 3.325) / 3)  # paper
    t = tau.update(tau.from_quantiles(tau.quantiles(win, valid)))
    # the short response's peak is still compared with τ
    assert hwe_mask(win, valid, t)[1].tolist()[:3] == [False, True, False]
    # a batch of short responses only: no voter, τ keeps its last value
    assert tau.quantiles(win[1:2], valid[1:2]).numel() == 0
    assert tau.update(tau.from_quantiles(tau.quantiles(win[1:2], valid[1:2]))) == t and tau.num_updates == 1
    with pytest.raises(ValueError, match="min_windows"):
        HWEThreshold(min_windows=-1)


def test_hwe_mask_threshold_validity_and_triggers():
    win = torch.tensor([[1.0, 2.0, 3.0, 3.0]])
    valid = torch.tensor([[True, True, True, False]])
    assert hwe_mask(win, valid, 2.0).tolist() == [[False, True, True, False]]  # >= and valid only
    trig = torch.tensor([[True, False, True, True]])
    assert hwe_mask(win, valid, 2.0, trig).tolist() == [[False, False, True, False]]
    assert not hwe_mask(win, valid, float("nan")).any()
    assert count_hwe(hwe_mask(win, valid, 2.0)).tolist() == [2.0]


def test_window_mask_hand_worked():
    hwe = torch.tensor([[False, False, True, False, False, False, True]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    out = hwe_window_mask(hwe, 3, mask)
    assert out.tolist() == [[False, False, True, True, True, False, False]]


@given(st.integers(1, 6), st.lists(st.booleans(), min_size=1, max_size=25), st.lists(st.booleans(), min_size=25, max_size=25))
def test_window_mask_matches_loop_reference(window, hwe_list, mask_list):
    n = len(hwe_list)
    hwe = torch.tensor([hwe_list])
    mask = torch.tensor([mask_list[:n]])
    expect = [False] * n
    for t in range(n):
        if hwe_list[t]:
            for s in range(t, min(n, t + window)):
                expect[s] = True
    expect = [e and m for e, m in zip(expect, mask_list[:n])]
    assert hwe_window_mask(hwe, window, mask).tolist() == [expect]
