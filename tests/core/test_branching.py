"""Branch points (ares_lit/core/branching.py): the threshold, edge, gap and per-response rules,
B_d per group, highest window entropy first, against a brute-force reference (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.core import window_entropy
from ares_lit.core.branching import branch_candidates, choose_branch_points


def brute_force(win, cand, group_ids, budget, min_gap, max_pp):
    """The rule written out: all candidates, sorted by (group, -entropy, row, t), taken greedily."""
    items = [(int(group_ids[r]), -float(win[r, t]), r, t) for r, t in cand.nonzero().tolist()]
    chosen, taken, per_group = [], {}, {}
    for g, _, r, t in sorted(items):
        pts = taken.setdefault(r, [])
        if per_group.get(g, 0) >= int(budget[g]) or len(pts) >= max_pp or any(abs(t - u) < min_gap for u in pts):
            continue
        pts.append(t)
        per_group[g] = per_group.get(g, 0) + 1
        chosen.append((r, t))
    return chosen


@st.composite
def batches(draw):
    groups, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    length = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    ent = torch.rand(groups * n, length, generator=g) * 3
    ent = torch.round(ent * 4) / 4  # ties on purpose
    lengths = torch.randint(0, length + 1, (groups * n,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    budget = torch.randint(0, 4, (groups,), generator=g)
    return ent, mask, lengths, torch.arange(groups).repeat_interleave(n), budget


@settings(max_examples=300, deadline=None)
@given(batches(), st.integers(1, 4), st.floats(0.0, 2.5), st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 3))
def test_points_follow_every_rule_and_match_the_brute_force_greedy(batch, w, tau, min_prefix, min_suffix, min_gap, max_pp):
    ent, mask, lengths, group_ids, budget = batch
    win, valid = window_entropy(ent, mask, w)
    cand = branch_candidates(win, valid, tau, lengths, min_prefix, min_suffix)
    points = choose_branch_points(win, cand, group_ids, budget, min_gap, max_pp)
    assert points == brute_force(win, cand, group_ids, budget, min_gap, max_pp)
    for r, t in points:
        assert bool(valid[r, t]) and float(win[r, t]) >= tau  # the threshold
        assert min_prefix <= t <= int(lengths[r]) - min_suffix  # the edges
    by_row = {}
    for r, t in points:
        by_row.setdefault(r, []).append(t)
    for ts in by_row.values():
        assert len(ts) <= max_pp
        assert all(abs(a - b) >= min_gap for i, a in enumerate(ts) for b in ts[i + 1 :])
    for g in range(len(budget)):
        assert sum(int(group_ids[r]) == g for r, _ in points) <= int(budget[g])


def test_each_group_gets_exactly_its_budget_when_candidates_suffice_highest_entropy_first():
    # 3 groups x 4 responses of 12 tokens; every response has one clear peak and lower shoulders
    ent = torch.full((12, 12), 0.5)
    for r in range(12):
        ent[r, 3 + r % 5] = 4.0 + r / 10
    mask = torch.ones(12, 12, dtype=torch.bool)
    win, valid = window_entropy(ent, mask, 1)
    cand = branch_candidates(win, valid, 1.0, torch.full((12,), 12))
    group_ids = torch.arange(3).repeat_interleave(4)
    budget = torch.tensor([0, 1, 2])  # easy, medium, hard
    points = choose_branch_points(win, cand, group_ids, budget, min_gap=4, max_points_per_response=1)
    assert [sum(int(group_ids[r]) == g for r, _ in points) for g in range(3)] == [0, 1, 2]
    assert points == [(7, 5), (11, 4), (10, 3)]  # each group's highest peaks, one per response
    assert choose_branch_points(win, cand, group_ids, budget, 4, 1) == points  # deterministic


def test_trigger_filter_and_degenerate_inputs():
    ent = torch.tensor([[0.1, 3.0, 3.0, 3.0, 0.1]])
    win, valid = window_entropy(ent, torch.ones_like(ent, dtype=torch.bool), 1)
    lengths = torch.tensor([5])
    trigger = torch.tensor([[False, False, True, False, False]])
    assert branch_candidates(win, valid, 1.0, lengths, trigger=trigger).nonzero().tolist() == [[0, 2]]
    assert not branch_candidates(win, valid, math.nan, lengths).any()  # no τ yet: no branching
    none = torch.zeros_like(valid)
    assert choose_branch_points(win, none, torch.tensor([0]), torch.tensor([2])) == []
    with pytest.raises(ValueError, match="min_gap and max_points_per_response must be >= 1"):
        choose_branch_points(win, valid, torch.tensor([0]), torch.tensor([1]), min_gap=0)
    with pytest.raises(ValueError, match="min_prefix and min_suffix must be >= 1"):
        branch_candidates(win, valid, 1.0, lengths, min_prefix=0)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tree_advantages_subtract_each_childs_branch_point_mean(data):
    from ares_lit.core.branching import tree_advantages

    n = data.draw(st.integers(1, 12))
    adv = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n)), dtype=torch.float32)
    # Random forest: each row is a root or a child of an earlier root at some point id.
    child_set, sets = [-1] * n, {}
    for i in range(1, n):
        if data.draw(st.booleans()):
            parent = data.draw(st.integers(0, i - 1))
            if child_set[parent] >= 0:
                continue
            key = (parent, data.draw(st.integers(0, 1)))
            sets.setdefault(key, len(sets))
            child_set[i] = sets[key]
    members_r, members_s = [], []
    for (parent, _), s in sets.items():
        members_r += [parent] + [i for i in range(n) if child_set[i] == s]
        members_s += [s] * (1 + sum(c == s for c in child_set))
    out = tree_advantages(adv, torch.tensor(members_r, dtype=torch.long), torch.tensor(members_s, dtype=torch.long),
                          torch.tensor(child_set, dtype=torch.long))  # fmt: skip
    for i in range(n):
        if child_set[i] < 0:
            assert out[i] == adv[i]
        else:
            group = [r for r, s in zip(members_r, members_s) if s == child_set[i]]
            assert out[i] == pytest.approx(float(adv[i]) - sum(float(adv[r]) for r in group) / len(group), abs=1e-5)
