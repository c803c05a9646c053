"""Entropy control of the policy update: the forking-token mask and the entropy bonus with its
adaptive coefficient (docs/ablation.md "Baselines").

Pure torch: no Lightning, no I/O, no collectives. Under data parallelism the caller gathers first
(every rank's valid entropies; every rank's entropy sum and token count) and passes the gathered
tensors, so that every rank computes the same threshold and coefficient
(ares_lit/modules/entropy_terms.py does it with ares_lit/distributed.py).

- **Forking tokens** (Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive
  Effective RL for LLM Reasoning", arXiv 2506.01939): the policy loss keeps only the tokens with
  H_t >= the (1 − ρ)-quantile of the entropies of all valid tokens of the batch, all ranks
  together; ρ = 0.2 in the paper, ρ = 1 keeps everything. As TRL's
  `GRPOTrainer.get_high_entropy_mask` (trl/trainer/grpo_trainer.py): `torch.quantile`'s linear
  interpolation at q = 1 − ρ over the gathered valid entropies, `>=`, padding never kept.
- **Entropy bonus**: L − c·H̄, H̄ the current policy's token entropy aggregated like the policy
  loss (over the tokens the forking mask keeps, as TRL).
- **Adaptive c** (He et al. 2025, Skywork-OR1, arXiv 2505.22312, "adaptive entropy control"; TRL's
  `use_adaptive_entropy`): after every optimizer step, with H the step's mean entropy over all
  ranks, c ← min(c + δ, c_max) if H <= H_target else max(c − δ, c_min); the next step applies c
  only if H <= H_target (else 0), and the first step applies 0 (TRL's `_last_world_entropy = inf`).
"""

from __future__ import annotations

import math

import torch

from ares_lit.core.losses import aggregate

__all__ = ["AdaptiveEntropyCoef", "entropy_bonus", "entropy_quantile", "forking_mask", "forking_threshold"]


def entropy_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(values, q)` (linear interpolation) of a 1-D tensor, bit for bit, without its
    input-size limit (2^24 elements). An empty tensor gives nan."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1]; got {q}")
    v = values.reshape(-1)
    if v.numel() == 0:
        return torch.tensor(math.nan, dtype=v.dtype if v.is_floating_point() else torch.float32, device=v.device)
    sorted_v, _ = torch.sort(v)
    # ATen's quantile: q as a scalar tensor of the input's dtype, ranks = q · (n − 1), lerp between
    # the neighbours below (truncated rank) and above (ceiled rank).
    ranks = torch.tensor(q, dtype=v.dtype, device=v.device) * (v.numel() - 1)
    below = ranks.to(torch.long)
    weight = ranks - below
    above = ranks.ceil().to(torch.long)
    return sorted_v[below].lerp(sorted_v[above], weight)


def forking_threshold(valid_entropies: torch.Tensor, top_quantile: float) -> torch.Tensor:
    """The forking threshold: the (1 − ρ)-quantile of `valid_entropies` (every valid token of the
    batch, all ranks gathered, fp32), ρ = `top_quantile`. nan when there is none."""
    if not 0.0 <= top_quantile <= 1.0:
        raise ValueError(f"top_quantile must be in [0, 1]; got {top_quantile}")
    return entropy_quantile(valid_entropies.float(), 1 - top_quantile)


def forking_mask(entropy: torch.Tensor, mask: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """m_t = 1[H_t >= threshold] on valid tokens (bool [B, T]); padding is never kept, and a nan
    threshold (no valid token anywhere) keeps nothing. No gradient flows through it."""
    return (entropy.detach().float() >= threshold) & mask.bool()


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    keep: torch.Tensor | None = None,
    *,
    normalizer: float | torch.Tensor | None = None,
    horizon: float | None = None,
) -> torch.Tensor:
    """H̄ = aggregate(H ⊙ keep, mask, agg): the entropy term of L − c·H̄, aggregated exactly as the
    policy loss (same mode, normalizer and horizon), over the tokens the forking mask `keep` leaves
    in the policy loss (all of `mask` when None). Differentiable when `entropy` is."""
    values = entropy if keep is None else entropy * keep.to(entropy.dtype)
    return aggregate(values, mask, agg, normalizer=normalizer, horizon=horizon)


class AdaptiveEntropyCoef:
    """c of the entropy bonus: a constant, or (adaptive) Skywork-OR1's controller as TRL runs it.

    Args:
        coef: c, or the initial c when adaptive.
        adaptive: move c to hold `target`.
        target: H_target, in nats of mean token entropy (adaptive only).
        delta: δ, the step of c per optimizer step.
        coef_min, coef_max: the bounds of c.
    """

    def __init__(
        self,
        coef: float = 0.0,
        adaptive: bool = False,
        target: float | None = None,
        delta: float = 0.005,
        coef_min: float = 0.0,
        coef_max: float = 1.0,
    ) -> None:
        if adaptive and target is None:
            raise ValueError("an adaptive entropy coefficient needs a target entropy")
        self.coef = float(coef)
        self.adaptive = adaptive
        self.target = target
        self.delta = float(delta)
        self.coef_min = float(coef_min)
        self.coef_max = float(coef_max)
        self.last_entropy = math.inf  # no measurement yet: the first step applies no bonus (TRL)

    def applied(self) -> float:
        """The c this optimizer step multiplies H̄ by: c, gated to 0 (adaptive) unless the previous
        step's entropy was <= the target."""
        if not self.adaptive:
            return self.coef
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, entropy_sum: float | torch.Tensor, token_count: float | torch.Tensor) -> float:
        """One optimizer step: H = Σ H_t / max(count, 1) over the step's bonus tokens, all ranks
        summed by the caller; c ← min(c + δ, c_max) if H <= target, else max(c − δ, c_min).
        Returns H. A constant coefficient only records H."""
        h = float(entropy_sum) / max(float(token_count), 1.0)
        if self.adaptive:
            if h <= self.target:
                self.coef = min(self.coef + self.delta, self.coef_max)
            else:
                self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = h
        return h

    def state_dict(self) -> dict:
        return {"coef": self.coef, "last_entropy": self.last_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])
        self.last_entropy = float(state["last_entropy"])
