"""Outcome advantages: GRPO, Dr.GRPO and RLOO (docs/algorithm.md "Advantages").

A registry maps names to estimators, so that a new variant is one decorated function:

    @register_advantage("my_estimator")
    def my_advantages(rewards, group_ids): ...

Pure torch: no Lightning, no I/O, no Python loops over samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ares_lit.core.groups import group_stats

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "register_advantage",
    "get_advantage_estimator",
    "grpo_advantages",
    "drgrpo_advantages",
    "rloo_advantages",
]

AdvantageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register `fn(rewards[N], group_ids[N]) -> advantages[N]` under `name`."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGE_ESTIMATORS and ADVANTAGE_ESTIMATORS[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def get_advantage_estimator(name: str) -> AdvantageFn:
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(ADVANTAGE_ESTIMATORS)}") from None


@register_advantage("grpo")
def grpo_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scale_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO: A_i = (R_i - mean_g R) / (std_g R + eps), with the unbiased std (as torch.std).

    `scale_by_std=False` is Dr.GRPO (no std division). A group of size 1 gets A = 0: it has no
    baseline. (verl instead returns R_i / (1 + eps) there; the spec settles on 0.)
    Returns fp32 [N]; broadcast over response tokens by the loss.
    """
    mean, std, count = group_stats(rewards, group_ids)
    adv = rewards.double() - mean
    if scale_by_std:
        adv = adv / (torch.nan_to_num(std, nan=0.0, posinf=0.0) + eps)
    return torch.where(count > 1, adv, torch.zeros_like(adv)).float()


@register_advantage("drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: A_i = R_i - mean_g R (no std division); singletons get 0."""
    return grpo_advantages(rewards, group_ids, scale_by_std=False)


@register_advantage("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = R_i - mean of the other responses = n/(n-1)·(R_i - mean_g R).

    A group of size 1 gets A = 0 (no leave-one-out baseline exists).
    """
    mean, _, count = group_stats(rewards, group_ids)
    n = count.double()
    adv = (rewards.double() - mean) * n / (n - 1).clamp_min(1)
    return torch.where(count > 1, adv, torch.zeros_like(adv)).float()
