"""Clip-Cov and KL-Cov: policy losses that act on the tokens of large covariance (docs/algorithm.md
"Policy loss"; registry contract in core/losses.py).

Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models"
(arXiv 2505.22617, §4): the entropy of the policy falls through the tokens whose log-probability
covaries most with their advantage,

    Cov_t = (A_t − mean A) · (logπ_θ,t − mean logπ_θ)      (means over the valid tokens of the call),

so restraining the update of a few such tokens keeps entropy up. Clip-Cov drops their gradient,
KL-Cov puts a KL penalty on them. Both select per call: micro-batches select independently, as in
verl, so (unlike vanilla, gspo and cispo) micro-batch losses do not add up exactly to the loss of the
whole mini-batch. Host syncs: only the token counts whose integers verl's selection needs.
"""

from __future__ import annotations

import torch

from ares_lit.core.losses import _token_advantages, _weighted, aggregate, masked_mean, register_policy_loss

__all__ = ["clip_cov_policy_loss", "kl_cov_policy_loss"]


def _check_ratio(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1]; got {value}")


def _surrogate(log_probs, old_log_probs, advantages, mask):
    """The terms both losses start from: A as [B, T], the valid mask, d = logπ_θ - logπ_old
    (unclamped, as verl's metrics use it), r = exp(clamp(d, ±20)) and -A·r."""
    advantages = _token_advantages(advantages, log_probs).expand_as(log_probs)
    neg_kl = log_probs - old_log_probs
    ratio = torch.exp(torch.clamp(neg_kl, min=-20.0, max=20.0))
    return advantages, mask.bool(), neg_kl, ratio, -advantages * ratio


@register_policy_loss("clip_cov")
def clip_cov_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float | None = None,
    agg: str = "token-mean",
    *,
    normalizer: float | torch.Tensor | None = None,
    horizon: float | None = None,
    weights: torch.Tensor | None = None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov: PPO's clipped surrogate with the gradient of a few random high-covariance tokens
    removed (Cui et al. 2025, arXiv 2505.22617, §4); "clip_cov".

    r = exp(clamp(logπ_θ - logπ_old, ±20)) and per token L = max(-A·r, -A·clip(r, 1 - ε_low, 1 + ε_high))
    (no dual clip: `clip_dual` is ignored). The candidates are the valid tokens that PPO did not clip
    with clip_cov_lb < Cov_t < clip_cov_ub (Cov_t: module docstring, means over valid tokens);
    min(max(⌊r_c·n⌋, 1), #candidates) of them, n the number of valid tokens, chosen uniformly at
    random, get L = 0 (value and gradient, as verl: L·corr with corr = 0). Then weights, aggregate.

    Defaults (the paper's, and verl's config): r_c = clip_cov_ratio = 2e-4, (lb, ub) = (1, 5). The
    paper's recipe also sets clip_low = clip_high = 1 (model.clip_low / .clip_high), so that PPO's own
    clip hardly ever fires. The draw is `torch.randperm(#candidates, generator=generator)` over the
    candidates in row-major order, verl's exactly: with generator=None it consumes torch's global CPU
    RNG as verl does; the module passes a seeded CPU generator (core.PolicyLossOptions).

    Matches verl 0.9.1's `compute_policy_loss_clip_cov` (with the same draw): `clipfrac` is verl's
    pg_clipfrac, the share of valid tokens selected; `clipfrac_lower` is 0; `ppo_kl` the mean of
    logπ_old - logπ_θ (unclamped). Also `clip_cov/ppo_clipfrac`, the share that PPO's clip clipped.
    verl does not clamp the log-ratio: the two differ only where |logπ_θ - logπ_old| > 20.
    """
    _check_ratio("clip_cov_ratio", clip_cov_ratio)
    advantages, valid, neg_kl, ratio, loss1 = _surrogate(log_probs, old_log_probs, advantages, mask)
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    with torch.no_grad():
        clipped = (loss2 > loss1) & valid
        cov = (advantages - masked_mean(advantages, valid)) * (log_probs - masked_mean(log_probs, valid))
        candidates = (cov > clip_cov_lb) & (cov < clip_cov_ub) & valid & ~clipped
        flat = candidates.flatten().nonzero().squeeze(1)  # row-major, as verl's torch.nonzero
        corr = torch.ones(log_probs.numel(), dtype=log_probs.dtype, device=log_probs.device)
        if flat.numel() > 0:
            clip_num = max(int(clip_cov_ratio * int(valid.sum())), 1)
            device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(flat.numel(), generator=generator, device=device)
            corr[flat[perm[:clip_num].to(flat.device)]] = 0.0
        corr = corr.view_as(log_probs)
    per_token = torch.maximum(loss1, loss2) * corr
    loss = aggregate(_weighted(per_token, weights), mask, agg, normalizer=normalizer, horizon=horizon)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((corr == 0).float(), valid),
            "clipfrac_lower": torch.zeros((), device=loss.device),
            "ppo_kl": masked_mean(-neg_kl, valid),
            "clip_cov/ppo_clipfrac": masked_mean(clipped.float(), valid),
        }
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float | None = None,
    agg: str = "token-mean",
    *,
    normalizer: float | torch.Tensor | None = None,
    horizon: float | None = None,
    weights: torch.Tensor | None = None,
    kl_cov_ratio: float = 2e-4,
    ppo_kl_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov: the unclipped surrogate plus a KL penalty on the top-covariance tokens (Cui et al.
    2025, arXiv 2505.22617, §4); "kl_cov".

    d = logπ_θ - logπ_old, r = exp(clamp(d, ±20)); for the k = max(⌊r_k·n⌋, 1) valid tokens of largest
    Cov_t (module docstring; n valid tokens, plain means over them)
        L = -A·r + β·|d|,
    and L = -A·r for every other token: no clipping (clip_low, clip_high, clip_dual are ignored).

    Defaults: r_k = kl_cov_ratio = 2e-4 (verl's config; its recipe/entropy 7B script uses 2e-3, the
    paper's 7B setting) and β = ppo_kl_coef = 1. verl 0.9.1 disagrees with itself on β: 0.1 in its
    config (actor.yaml, PolicyLossConfig), 1 in its function's fallback and in its recipe/entropy
    scripts, as in the paper's released code. We take 1, the value the paper's runs used; set
    `model.policy_loss_kwargs: {ppo_kl_coef: 0.1}` to reproduce a verl run on its config default.

    Matches verl 0.9.1's `compute_policy_loss_kl_cov` (the same top-k on the same device; ties aside):
    `ppo_kl` is verl's, the mean of |d| (not of -d as for the other losses); `clipfrac` and
    `clipfrac_lower` are 0 (nothing is clipped); also `kl_cov/selected_frac`, the share penalised.
    """
    _check_ratio("kl_cov_ratio", kl_cov_ratio)
    advantages, valid, neg_kl, _, loss1 = _surrogate(log_probs, old_log_probs, advantages, mask)
    with torch.no_grad():
        flat = valid.flatten().nonzero().squeeze(1)
        selected = torch.zeros(log_probs.numel(), dtype=torch.bool, device=log_probs.device)
        if flat.numel() > 0:
            adv, logp = advantages.detach().flatten()[flat], log_probs.detach().flatten()[flat]
            cov = (adv - adv.mean()) * (logp - logp.mean())
            k = max(1, int(flat.numel() * kl_cov_ratio))
            selected[flat[torch.topk(cov, k, largest=True).indices]] = True
        selected = selected.view_as(log_probs)
    per_token = torch.where(selected, loss1 + ppo_kl_coef * neg_kl.abs(), loss1)
    loss = aggregate(_weighted(per_token, weights), mask, agg, normalizer=normalizer, horizon=horizon)
    with torch.no_grad():
        zero = torch.zeros((), device=loss.device)
        metrics = {
            "clipfrac": zero,
            "clipfrac_lower": zero.clone(),
            "ppo_kl": masked_mean(neg_kl.abs(), valid),
            "kl_cov/selected_frac": masked_mean(selected.float(), valid),
        }
    return loss, metrics
