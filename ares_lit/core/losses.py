"""Clipped policy loss and loss aggregation (ARES_SPEC "Policy loss").

Numerically the same as verl's `compute_policy_loss_vanilla` and `agg_loss` on the same inputs
(tests/core/test_verl_parity.py checks it). Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import torch

__all__ = ["AGG_MODES", "aggregate", "masked_mean", "policy_loss"]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values over mask) / (count + 1e-8); masked-out nan/inf never leak in."""
    m = mask.bool()
    return torch.where(m, values, torch.zeros_like(values)).sum() / (m.sum() + 1e-8)


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    *,
    normalizer: float | torch.Tensor | None = None,
    horizon: float | None = None,
) -> torch.Tensor:
    """Reduce a [B, T] loss matrix to a scalar over `mask`.

    Modes:
        token-mean: sum over all tokens / number of tokens.
        seq-mean-token-mean: mean over sequences of each sequence's token mean.
        seq-mean-token-sum: mean over sequences of each sequence's token sum.
        seq-mean-token-sum-norm: seq-mean-token-sum / horizon (default: T, the padded length).

    `normalizer` replaces the denominator (tokens for token-mean, sequences otherwise): pass the
    global count when a batch is split into micro-batches or across ranks, so that gradient
    accumulation gives the same loss as one big batch. Sequences without any token are left out.
    """
    m = mask.to(values.dtype) if values.is_floating_point() else mask.float()
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))
    if mode == "token-mean":
        denom = m.sum() if normalizer is None else normalizer
        return masked.sum() / torch.as_tensor(denom, dtype=masked.dtype, device=masked.device).clamp_min(1e-8)
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGG_MODES}")
    tokens = m.sum(dim=-1)
    has_tokens = (tokens > 0).to(masked.dtype)
    if mode == "seq-mean-token-mean":
        seq = masked.sum(dim=-1) / (tokens + 1e-8)
    else:
        seq = masked.sum(dim=-1)
    denom = has_tokens.sum() if normalizer is None else normalizer
    loss = (seq * has_tokens).sum() / torch.as_tensor(denom, dtype=masked.dtype, device=masked.device).clamp_min(1e-8)
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (values.shape[-1] if horizon is None else horizon)
    return loss


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float = 3.0,
    agg: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with clip-higher and dual clip (ARES_SPEC "Policy loss").

    r = exp(clamp(logπ_θ - logπ_old, ±20)); per token
    L = max(-A·r, -A·clip(r, 1 - ε_low, 1 + ε_high)), and for A < 0 also min(L, -A·c).

    Args:
        advantages: [B] (broadcast over tokens) or [B, T].
        agg_kwargs: passed to `aggregate` (normalizer, horizon).

    Returns:
        (loss, metrics) with detached scalar tensors `clipfrac`, `clipfrac_lower` and `ppo_kl`
        (no host sync here; call .item() when logging).
    """
    if clip_dual <= 1.0:
        raise ValueError(f"clip_dual must be > 1 for dual-clip PPO; got {clip_dual}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(log_probs.dtype)
    neg_kl = torch.clamp(log_probs - old_log_probs, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_dual
    dual = torch.minimum(loss3, clipped)
    negative = advantages < 0
    per_token = torch.where(negative, dual, clipped)
    loss = aggregate(per_token, mask, agg, **agg_kwargs)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((loss2 > loss1).float(), mask),
            "clipfrac_lower": masked_mean(((clipped > loss3) & negative).float(), mask),
            "ppo_kl": masked_mean(-neg_kl, mask),
        }
    return loss, metrics
