"""Policy losses, their registry, and loss aggregation (docs/algorithm.md "Policy loss").

A registry maps names to policy losses, so that a new variant is one decorated function here (or
in a new file under `core/` that `core/__init__.py` imports), selected by `model.policy_loss`:

    @register_policy_loss("my_loss")
    def my_policy_loss(log_probs, old_log_probs, advantages, mask, clip_low=0.2, clip_high=0.3,
                       clip_dual=3.0, agg="token-mean", *, normalizer=None, horizon=None):
        per_token = ...                                         # [B, T]
        return aggregate(per_token, mask, agg, normalizer=normalizer, horizon=horizon), metrics

Every registered loss takes these arguments (those it has no use for are accepted and ignored),
reduces its [B, T] per-token loss with `aggregate` (so that micro-batches add up to the
mini-batch: the module passes the mini-batch's `normalizer`), and returns detached scalar metrics
`clipfrac`, `clipfrac_lower` and `ppo_kl`. The built-in losses also take `weights` ([B, T], the
train-inference mismatch correction of core/correction.py), multiplied into the per-token loss
after clipping, as verl's `rollout_is_weights`; the module passes it only when the correction is
on. Registered: vanilla (PPO clip-higher + dual clip), gspo, cispo, clip_cov, kl_cov (the last two
in core/cov_losses.py). Each matches verl 0.9.1's loss of the same registry name numerically, loss
and metrics (tests/core/test_verl_parity.py). A loss may take further keyword-only options (clip_cov's
`clip_cov_ratio`, ...; `model.policy_loss_kwargs`) and a `generator` if it draws at random:
`PolicyLossOptions` checks the options against its signature and supplies the generator.
Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

__all__ = [
    "AGG_MODES",
    "COMMON_LOSS_ARGS",
    "POLICY_LOSSES",
    "PolicyLossOptions",
    "aggregate",
    "cispo_policy_loss",
    "get_policy_loss",
    "gspo_policy_loss",
    "masked_mean",
    "policy_loss",
    "register_policy_loss",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Register `fn(log_probs, old_log_probs, advantages, mask, clip_low, clip_high, clip_dual, agg,
    *, normalizer, horizon) -> (loss, metrics)` under `name` (see the module docstring)."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES and POLICY_LOSSES[name] is not fn:
            raise ValueError(f"policy loss {name!r} is already registered")
        POLICY_LOSSES[name] = fn
        return fn

    return deco


def get_policy_loss(name: str) -> PolicyLossFn:
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {sorted(POLICY_LOSSES)}") from None


# What the module passes every loss itself: not options of `model.policy_loss_kwargs`.
COMMON_LOSS_ARGS = frozenset(
    ("log_probs", "old_log_probs", "advantages", "mask", "clip_low", "clip_high", "clip_dual", "agg",
     "normalizer", "horizon", "weights", "generator")
)


class PolicyLossOptions:
    """The extra keyword arguments of policy loss `name` (`model.policy_loss_kwargs`), checked against
    its signature when built, so that a wrong key fails before any model loads; and, for a loss that
    draws at random (one with a `generator` argument: clip_cov), a CPU generator seeded from (run seed,
    optimizer step, rank). Calls with the same triple continue one stream (the step's micro-batches
    in order), so a resumed run draws what the uninterrupted one did. `options(seed, step, rank)`
    returns the keyword arguments for the loss call."""

    def __init__(self, name: str, kwargs: dict | None = None, where: str = "policy_loss_kwargs") -> None:
        params = inspect.signature(get_policy_loss(name)).parameters
        accepted = sorted(set(params) - COMMON_LOSS_ARGS)
        for key, value in (kwargs or {}).items():
            if key not in accepted:
                raise ValueError(f"{where}: policy loss {name!r} takes no option {key!r}; accepted: {accepted or 'none'}")
            if isinstance(params[key].default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{where}.{key} must be a number; got {value!r}")
        self.kwargs = dict(kwargs or {})
        self.random = "generator" in params
        self._key: tuple[int, int, int] | None = None
        self._generator: torch.Generator | None = None

    def __call__(self, seed: int = 0, step: int = 0, rank: int = 0) -> dict:
        if not self.random:
            return dict(self.kwargs)
        if self._key != (seed, step, rank):
            mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % 2**63
            self._key, self._generator = (seed, step, rank), torch.Generator().manual_seed(mixed)
        return {**self.kwargs, "generator": self._generator}


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


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] advantages broadcast over tokens as [B, 1]; [B, T] ones kept; in `like`'s dtype."""
    return (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages).to(like.dtype)


def _weighted(per_token: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The per-token loss times the rollout-correction weights (core/correction.py), if any."""
    return per_token if weights is None else per_token * weights.to(per_token.dtype)


@register_policy_loss("vanilla")
def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float = 3.0,
    agg: str = "token-mean",
    *,
    normalizer: float | torch.Tensor | None = None,
    horizon: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with clip-higher and dual clip (docs/algorithm.md "Policy loss"); "vanilla".

    r = exp(clamp(logπ_θ - logπ_old, ±20)); per token
    L = max(-A·r, -A·clip(r, 1 - ε_low, 1 + ε_high)), and for A < 0 also min(L, -A·c).
    (PPO: Schulman et al. 2017; clip-higher: DAPO, Yu et al. 2025; dual clip: Ye et al. 2019.)
    Matches verl's `compute_policy_loss_vanilla`.

    Args:
        advantages: [B] (broadcast over tokens) or [B, T].
        normalizer, horizon: passed to `aggregate`.
        weights: optional [B, T] per-token weights (rollout correction), applied after clipping.

    Returns:
        (loss, metrics) with detached scalar tensors `clipfrac`, `clipfrac_lower` and `ppo_kl`
        (no host sync here; call .item() when logging).
    """
    if clip_dual <= 1.0:
        raise ValueError(f"clip_dual must be > 1 for dual-clip PPO; got {clip_dual}")
    advantages = _token_advantages(advantages, log_probs)
    neg_kl = torch.clamp(log_probs - old_log_probs, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_dual
    dual = torch.minimum(loss3, clipped)
    negative = advantages < 0
    per_token = torch.where(negative, dual, clipped)
    loss = aggregate(_weighted(per_token, weights), mask, agg, normalizer=normalizer, horizon=horizon)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((loss2 > loss1).float(), mask),
            "clipfrac_lower": masked_mean(((clipped > loss3) & negative).float(), mask),
            "ppo_kl": masked_mean(-neg_kl, mask),
        }
    return loss, metrics


@register_policy_loss("gspo")
def gspo_policy_loss(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO: a sequence-level importance ratio (Zheng et al. 2025, arXiv 2507.18071, "GSPO-token").

    s_i = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp((1/|y_i|) Σ_t (logπ_θ - logπ_old)_{i,t}), the
    length-normalised sequence ratio, and per token s_{i,t} = sg[s_i] · π_θ(y_{i,t}) / sg[π_θ(y_{i,t})]:
    its value is s_i, its gradient s_i · ∇logπ_θ(y_{i,t}). log s_{i,t} is clamped at 10 above. Per token
    L = max(-A·s_{i,t}, -A·clip(s_{i,t}, 1 - ε_low, 1 + ε_high)); no dual clip (`clip_dual` is
    ignored), and clipping keeps or drops whole sequences.

    The paper aggregates with seq-mean-token-mean and uses ε_low = 3e-4, ε_high = 4e-4 (model.loss_agg,
    .clip_low, .clip_high); with token-mean (verl's and our default) longer sequences weigh more.
    A sequence lies in one micro-batch, so the global `normalizer` keeps micro-batches adding up.
    Matches verl's `compute_policy_loss_gspo`: `clipfrac` is the share of tokens clipped,
    `clipfrac_lower` is 0, `ppo_kl` the mean of logπ_old - logπ_θ (unclamped).
    """
    advantages = _token_advantages(advantages, log_probs)
    m = mask.bool()
    neg_kl = log_probs - old_log_probs
    lengths = m.sum(dim=-1).clamp_min(1).to(log_probs.dtype)
    neg_kl_seq = torch.where(m, neg_kl, torch.zeros_like(neg_kl)).sum(dim=-1) / lengths
    log_ratio = log_probs - log_probs.detach() + neg_kl_seq.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(loss1, loss2)
    loss = aggregate(_weighted(per_token, weights), mask, agg, normalizer=normalizer, horizon=horizon)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((loss2 > loss1).float(), mask),
            "clipfrac_lower": torch.zeros((), device=loss.device),
            "ppo_kl": masked_mean(-neg_kl, mask),
        }
    return loss, metrics


@register_policy_loss("cispo")
def cispo_policy_loss(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO: a clipped importance-sampling weight under a stop-gradient (MiniMax-M1, arXiv 2506.13585).

    r = exp(clamp(logπ_θ - logπ_old, ±20)), r̂ = clip(r, 1 - ε_low, 1 + ε_high); per token
    L = -sg(r̂) · A · logπ_θ, so that every token keeps a gradient (-r̂·A·∇logπ_θ), clipped or not:
    PPO's clip instead drops the gradient of clipped tokens. No dual clip (`clip_dual` is ignored).
    MiniMax-M1 bounds r̂ above only (set model.clip_low to 1 or more for that) and uses token-mean.
    Matches verl's `compute_policy_loss_cispo`: `clipfrac` is the share of tokens with r̂ ≠ r,
    `clipfrac_lower` is 0, `ppo_kl` the mean of the clamped logπ_old - logπ_θ.
    """
    advantages = _token_advantages(advantages, log_probs)
    neg_kl = torch.clamp(log_probs - old_log_probs, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -clipped.detach() * advantages * log_probs
    loss = aggregate(_weighted(per_token, weights), mask, agg, normalizer=normalizer, horizon=horizon)
    with torch.no_grad():
        metrics = {
            "clipfrac": masked_mean((ratio != clipped).float(), mask),
            "clipfrac_lower": torch.zeros((), device=loss.device),
            "ppo_kl": masked_mean(-neg_kl, mask),
        }
    return loss, metrics
