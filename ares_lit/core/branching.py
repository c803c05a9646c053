"""Branch points of entropy-aware branching rollouts (docs/algorithm.md "Entropy-aware branching
rollouts", paper §3.2.1; issue #14). Pure torch, no engine: the pipeline that samples the
children builds on these two functions.

A response position t is a *candidate* when its window entropy H̄_{t:w} (the window that starts
at t, `core.window_entropy`) is valid and >= τ, optionally only where the sampled token at t is
a trigger word, and it leaves `min_prefix` tokens before it and `min_suffix` after it:
min_prefix <= t <= len - min_suffix. A child branched at t keeps the parent's response[:t] and
samples a new continuation from t on.

Per prompt (group), `choose_branch_points` picks up to B_d points, highest window entropy first,
with at most `max_points_per_response` on one response and at least `min_gap` tokens between two
points of one response. B_d is the group's difficulty budget (default easy 0, medium 1, hard 2).
Ties are broken by (row, t), so the choice is a function of the inputs only: given the same
phase-1 tokens and entropies, every engine picks the same points.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_BRANCH_BUDGET", "branch_candidates", "choose_branch_points", "tree_advantages"]

DEFAULT_BRANCH_BUDGET = (0, 1, 2)
"""B_d per bucket (easy, medium, hard): branch points per prompt."""


def branch_candidates(
    win: torch.Tensor,
    valid: torch.Tensor,
    tau: float,
    lengths: torch.Tensor,
    min_prefix: int = 1,
    min_suffix: int = 1,
    trigger: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, R] bool: positions that may be branch points (module docstring).

    Args:
        win, valid: `window_entropy`'s [N, R] output.
        tau: the HWE threshold τ (NaN: no candidates).
        lengths: [N] response lengths.
        min_prefix: tokens of the parent a child keeps at least (t >= min_prefix; >= 1).
        min_suffix: tokens the parent has from t on (t <= len - min_suffix; >= 1).
        trigger: optional [N, R] bool, the sampled token at t is a trigger word.
    """
    if min_prefix < 1 or min_suffix < 1:
        raise ValueError(f"min_prefix and min_suffix must be >= 1; got {min_prefix} and {min_suffix}")
    t = torch.arange(win.shape[1], device=win.device)[None, :]
    edges = (t >= min_prefix) & (t <= lengths.to(win.device)[:, None] - min_suffix)
    # In float64: a Python τ must not round down to the fp32 value it is compared with.
    cand = valid.bool() & edges & (win.double() >= tau)  # a NaN τ compares False everywhere
    if trigger is not None:
        cand &= trigger.bool()
    return cand


def choose_branch_points(
    win: torch.Tensor,
    candidates: torch.Tensor,
    group_ids: torch.Tensor,
    budget: torch.Tensor,
    min_gap: int = 8,
    max_points_per_response: int = 1,
) -> list[tuple[int, int]]:
    """(row, t) branch points, per group in group order, highest window entropy first.

    Args:
        win: [N, R] window entropy.
        candidates: [N, R] bool, `branch_candidates`.
        group_ids: [N] long, each row's group (prompt) index 0..G-1.
        budget: [G] long, B_d of each group (points wanted; fewer when candidates run out).
        min_gap: least distance |t - t'| between two points of one response (>= 1).
        max_points_per_response: points one response may carry (>= 1).
    """
    if min_gap < 1 or max_points_per_response < 1:
        raise ValueError(f"min_gap and max_points_per_response must be >= 1; got {min_gap} and {max_points_per_response}")
    rows, cols = candidates.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return []
    scores = win[rows, cols].float()
    # A row takes at most max_points_per_response points and each blocks 2·min_gap - 1 positions,
    # so the greedy scan below never looks past a row's first K candidates by entropy: keep only
    # those (the loop then runs over O(N·K) candidates, not all of them).
    k = max_points_per_response * (2 * min_gap - 1) + 1
    by_row = _lexsort((rows, False), (scores, True), (cols, False))
    _, counts = torch.unique_consecutive(rows[by_row], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = by_row[torch.arange(by_row.numel(), device=rows.device) - starts < k]
    rows, cols, scores = rows[keep], cols[keep], scores[keep]
    groups = group_ids.to(rows.device)[rows]
    # One sort for all groups: by group, then entropy descending, then (row, t).
    order = _lexsort((groups, False), (scores, True), (rows, False), (cols, False))
    chosen: list[tuple[int, int]] = []
    taken: dict[int, list[int]] = {}
    per_group: dict[int, int] = {}
    want = budget.tolist()
    for g, r, t in zip(groups[order].tolist(), rows[order].tolist(), cols[order].tolist()):
        if per_group.get(g, 0) >= want[g]:
            continue
        points = taken.setdefault(r, [])
        if len(points) >= max_points_per_response or any(abs(t - u) < min_gap for u in points):
            continue
        points.append(t)
        per_group[g] = per_group.get(g, 0) + 1
        chosen.append((r, t))
    return chosen


def _lexsort(*keys: tuple[torch.Tensor, bool]) -> torch.Tensor:
    """The permutation sorting by (key, descending) pairs, most significant first: stable sorts
    from the least significant key up."""
    order = torch.arange(keys[0][0].numel(), device=keys[0][0].device)
    for key, descending in reversed(keys):
        order = order[torch.sort(key[order], stable=True, descending=descending).indices]
    return order


def tree_advantages(
    advantages: torch.Tensor, member_rows: torch.Tensor, member_sets: torch.Tensor, child_set: torch.Tensor
) -> torch.Tensor:
    """TreePO-style advantages of branched groups: A_i - mean_{j in S} A_j for each child i, where S
    is its branch point's set (the parent and every child branched at the same t); roots keep A_i.

    Args:
        advantages: [N] flat (group) advantages.
        member_rows, member_sets: [M] long, row j belongs to set s (a parent may be in several).
        child_set: [N] long, the set a child was branched in; -1 for a root.
    """
    if member_rows.numel() == 0:
        return advantages.clone()
    dev = advantages.device
    sets = int(member_sets.max()) + 1
    sums = torch.zeros(sets, dtype=advantages.dtype, device=dev).index_add_(0, member_sets.to(dev), advantages[member_rows.to(dev)])
    counts = torch.zeros(sets, dtype=advantages.dtype, device=dev).index_add_(
        0, member_sets.to(dev), torch.ones(member_rows.numel(), dtype=advantages.dtype, device=dev)
    )
    means = sums / counts.clamp_min(1)
    is_child = child_set.to(dev) >= 0
    return torch.where(is_child, advantages - means[child_set.to(dev).clamp_min(0)], advantages)
