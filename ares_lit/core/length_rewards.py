"""Length controls as reward terms R_len, added next to the entropy reward (docs/ablation.md
"Baselines"; issue #23). Each is a baseline of the ablation, off unless selected.

- `overlong_penalty`: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13; verl 0.9.1
  `DAPORewardManager`, `overlong_buffer`);
- `kimi_length_reward`: Kimi k1.5's group length reward (Kimi Team 2025, §2.3.3);
- `shorter_better_reward`: ShorterBetter's reward around the sample optimal length (Yi et al. 2025,
  eqs. 1-2; the authors' verl reward manager).

Lengths are response lengths in tokens (valid tokens); groups are given by group ids (the
responses of one prompt). Pure torch: no Lightning, no I/O, no Python loops over samples.
"""

from __future__ import annotations

import torch

from ares_lit.core.groups import group_index

__all__ = [
    "DEFAULT_OVERLONG_BUFFER_FRAC",
    "overlong_penalty",
    "kimi_length_reward",
    "sample_optimal_length",
    "shorter_better_reward",
]

DEFAULT_OVERLONG_BUFFER_FRAC = 0.2
"""L_c / L_max when L_c is not given: DAPO's setting (L_max = 20480, L_c = 4096; verl's recipe
recipe/dapo/run_dapo_qwen2.5_32b.sh, overlong_buffer_len = 4096 of max_response_length = 20480)."""


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, buffer_len: int, penalty_factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong punishment, per response:

        R_len = 0                                   if L <= L_max - L_c
              = -(L - (L_max - L_c)) / L_c · p      if L_max - L_c < L <= L_max
              = -p                                  if L > L_max

    with L_max = `max_length`, L_c = `buffer_len` and p = `penalty_factor` (DAPO: p = 1). For
    L <= L_max this is verl 0.9.1's `min(-exceed_len / overlong_buffer_len * penalty_factor, 0)`
    exactly; beyond L_max (which verl never sees: its responses stop at max_response_length) it is
    the paper's -1 (times p), not verl's unclipped line.

    Args:
        lengths: [N] response lengths in tokens.
    Returns:
        [N] fp32, in [-p, 0].
    """
    if not 0 < buffer_len <= max_length:
        raise ValueError(f"overlong buffer_len must be in (0, max_length={max_length}]; got {buffer_len}")
    exceed = lengths.float() - (max_length - buffer_len)
    return (-exceed / buffer_len * penalty_factor).clamp(min=-penalty_factor, max=0.0)


def _group_min_max(values: torch.Tensor, inverse: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    inf = torch.full((n_groups,), float("inf"), dtype=values.dtype, device=values.device)
    lo = inf.scatter_reduce(0, inverse, values, "amin")
    hi = (-inf).scatter_reduce(0, inverse, values, "amax")
    return lo, hi


def kimi_length_reward(
    lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """Kimi k1.5 length reward, per response i of a prompt's group:

        λ_i = 0.5 - (len_i - min_len) / (max_len - min_len)      (λ = 0 when max_len = min_len)
        R_len,i = w · λ_i            if the answer is correct
                = w · min(0, λ_i)    otherwise

    min_len and max_len over every response of the group (right or wrong). λ ∈ [-0.5, 0.5]: the
    shortest correct answer gets +0.5·w, the longest -0.5·w; a wrong answer is never rewarded for
    being short, only penalised for being longer than the group's midpoint.

    Args:
        lengths: [N] response lengths; correct: [N] bool; group_ids: [N] prompt of each response.
    Returns:
        [N] fp32.
    """
    inverse, counts = group_index(group_ids)
    length = lengths.float()
    lo, hi = _group_min_max(length, inverse, counts.numel())
    lo, span = lo[inverse], (hi - lo)[inverse]
    lam = torch.where(span > 0, 0.5 - (length - lo) / span.clamp_min(1e-12), torch.zeros_like(length))
    return weight * torch.where(correct.bool(), lam, lam.clamp(max=0.0))


def sample_optimal_length(lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """ShorterBetter's sample optimal length (SOL) of each response's group, broadcast back [N]:
    the length of the group's shortest correct response, or the group's mean length when no
    response of the group is correct."""
    inverse, counts = group_index(group_ids)
    length = lengths.float()
    n_groups = counts.numel()
    masked = torch.where(correct.bool(), length, torch.full_like(length, float("inf")))
    shortest_right, _ = _group_min_max(masked, inverse, n_groups)
    mean = torch.zeros(n_groups, dtype=length.dtype, device=length.device).index_add_(0, inverse, length) / counts
    return torch.where(torch.isinf(shortest_right), mean, shortest_right)[inverse]


def shorter_better_reward(
    lengths: torch.Tensor, correct: torch.Tensor, group_ids: torch.Tensor, alpha: float = 2.0, beta: float = 0.001
) -> torch.Tensor:
    """ShorterBetter's reward, per response: r = α·1[correct] - β·|L - SOL| (`sample_optimal_length`).

    Defaults of the authors' release (α = 2, β = 0.001; the paper also reports α = 1). This is the
    paper's whole reward; the pipeline adds r - 1[correct] to R_acc (shaping.length_reward), so
    that the total equals r for 0/1 accuracy.

    Returns:
        [N] fp32.
    """
    sol = sample_optimal_length(lengths, correct, group_ids)
    return alpha * correct.float() - beta * (lengths.float() - sol).abs()
