"""Train–inference mismatch correction of the policy loss (verl `rollout_is` / `rollout_rs`,
TRL `vllm_importance_sampling_mode`, Yao et al. 2025 "truncated importance sampling").

The rollout engine (vLLM, or HF generate in another precision) samples from π_engine, which is not
exactly the trainer's π_old: kernels, precision and sampling processors differ. The PPO ratio is
taken against π_old, so the samples are off-policy by ρ_t = π_old(y_t) / π_engine(y_t). Two
corrections, selected by `model.rollout_correction` (off by default):

    token_tis: w_{i,t} = min(ρ_{i,t}, C)                     (truncated IS, per token)
    seq_mask:  w_{i,t} = 1[Π_t ρ_{i,t} ≤ C]                   (a sequence-level rejection: a response
               whose whole-sequence ratio exceeds C is masked out of the policy loss, others keep
               weight 1; verl's rollout_rs at sequence level with an upper threshold only)

with ρ_{i,t} = exp(clamp(logπ_old − logπ_engine, ±20)) and C = `model.rollout_correction_cap`. The
weight multiplies the per-token policy loss (after clipping, before aggregation; the KL term is not
weighted), as verl's `rollout_is_weights`. Masked tokens still count in the loss denominator.
Weights are constants: no gradient flows through them. Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ROLLOUT_CORRECTIONS", "rollout_correction", "rollout_correction_weights"]

ROLLOUT_CORRECTIONS = ("token_tis", "seq_mask")


@torch.no_grad()
def rollout_correction_weights(
    old_log_probs: torch.Tensor,
    engine_log_probs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_tis",
    cap: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights [B, T] of the policy loss, and where the cap bit [B, T] bool (module docstring).

    Returns (weights, truncated): token_tis: truncated = ρ_t > C (the weight was cut to C);
    seq_mask: truncated = every token of a rejected sequence. Outside `mask`, weight 1 and not truncated.
    """
    if mode not in ROLLOUT_CORRECTIONS:
        raise ValueError(f"unknown rollout correction {mode!r}; choose one of {ROLLOUT_CORRECTIONS}")
    m = mask.bool()
    log_ratio = torch.where(m, (old_log_probs - engine_log_probs).clamp(-20.0, 20.0), torch.zeros_like(old_log_probs))
    if mode == "token_tis":
        ratio = torch.exp(log_ratio)
        truncated = (ratio > cap) & m
        weights = ratio.clamp(max=cap)
    else:
        rejected = log_ratio.sum(dim=-1) > math.log(cap)  # Π_t ρ_t > C, compared in log space
        truncated = rejected.unsqueeze(-1) & m
        weights = (~truncated).to(old_log_probs.dtype)
    return torch.where(m, weights, torch.ones_like(weights)), truncated


def rollout_correction(
    old_log_probs: torch.Tensor, engine_log_probs: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`rollout_correction_weights` and its metrics over `mask`: `tis_weight_mean` (mean weight) and
    `tis_truncated_frac` (share of tokens whose weight the cap cut, or whose sequence it rejected)."""
    weights, truncated = rollout_correction_weights(old_log_probs, engine_log_probs, mask, mode, cap)
    m = mask.bool()
    count = m.sum().clamp_min(1)
    metrics = {
        "tis_weight_mean": torch.where(m, weights, torch.zeros_like(weights)).sum() / count,
        "tis_truncated_frac": truncated.sum() / count,
    }
    return weights, metrics
