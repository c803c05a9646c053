"""Vectorized per-group statistics over rollouts that share a prompt (group id).

Pure torch: no Lightning, no I/O, no Python loops over samples.
"""

from __future__ import annotations

import torch

__all__ = ["group_index", "group_mean", "group_stats", "informative_groups"]


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map arbitrary group ids [N] to dense indices.

    Returns:
        (inverse [N] long in [0, G), counts [G] long), groups ordered by sorted id.
    """
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D; got shape {tuple(group_ids.shape)}")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return inverse, counts


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, unbiased group std (as torch.std) and group size, computed in fp64.

    The std of a singleton group is nan (as torch.std); callers decide what a singleton means.

    Returns:
        (mean [N], std [N], count [N]) broadcast back to the samples.
    """
    inverse, counts = group_index(group_ids)
    v = values.double()
    n_groups = counts.numel()
    sums = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, inverse, v)
    cnt = counts.to(torch.float64)
    mean_g = sums / cnt
    dev = v - mean_g[inverse]
    sq = torch.zeros(n_groups, dtype=torch.float64, device=v.device).index_add_(0, inverse, dev * dev)
    std_g = (sq / (cnt - 1)).sqrt()  # inf/nan for singletons, masked by callers
    return mean_g[inverse], std_g[inverse], counts[inverse]


def group_mean(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of `values` over its group, in the input's float dtype."""
    mean, _, _ = group_stats(values, group_ids)
    return mean.to(values.dtype if values.is_floating_point() else torch.float32)



def informative_groups(group_ids: torch.Tensor, accuracy: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """DAPO dynamic sampling (docs/algorithm.md "Group filter"): keep samples whose group mean accuracy is
    strictly inside (low, high); groups that are all right or all wrong carry no GRPO signal.

    Returns a bool [N] keep-mask.
    """
    mean = group_mean(accuracy.float(), group_ids)
    return (mean > low) & (mean < high)
