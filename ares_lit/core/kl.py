"""KL estimators and the token-wise dynamic KL controller (docs/algorithm.md "Dynamic KL").

KL is an actor loss against the frozen reference π_ref, not a reward penalty. Pure torch: no
Lightning, no I/O, no collectives (the callback all-reduces KL_d before `DynamicKL.update`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ares_lit.core.buckets import NUM_BUCKETS

__all__ = ["KL_KINDS", "kl_estimate", "DynamicKL", "nonwindow_kl"]

_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}
KL_KINDS = ("k1", "k2", "k3", "abs", *_ALIASES)


def kl_estimate(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ || π_ref) from sampled-token log-probs (Schulman's k1/k2/k3).

    k1 (alias kl): logp - ref.  k2 (alias mse): (logp - ref)^2 / 2.  abs: |logp - ref|.
    k3 (alias low_var_kl): exp(ref - logp) - (ref - logp) - 1, with the log-ratio clamped to ±20
    and the result to ±10, as verl's low_var_kl.
    """
    k = _ALIASES.get(kind, kind)
    diff = log_probs - ref_log_probs
    if k == "k1":
        return diff
    if k == "k2":
        return 0.5 * diff.square()
    if k == "abs":
        return diff.abs()
    if k == "k3":
        log_ratio = torch.clamp(-diff, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_KINDS}")


class DynamicKL:
    """Per-bucket KL coefficients κ_d with a relaxation ρ inside validated HWE windows.

    β_{i,t} = κ_{d(i)} · ρ^{w_{i,t}}, with w_{i,t} = 1 inside a validated HWE window.
    After each step, with KL_d the mean k3 over bucket d's non-window tokens (all-reduced):
        κ_d <- clip(κ_d · (1 + η_κ · clip(KL_d / δ_d - 1, -0.2, 0.2)), κ_min, κ_max).

    Defaults (the paper gives none; ours): κ_d starts at kl_coef = 0.01; targets δ = (0.02, 0.05,
    0.1), so easy is held tighter than hard; ρ = 0.5; η_κ = 0.1; κ in [1e-4, 1.0].
    """

    def __init__(
        self,
        kl_coef: float = 0.01,
        targets: Sequence[float] = (0.02, 0.05, 0.1),
        rho: float = 0.5,
        rate: float = 0.1,
        step_clip: float = 0.2,
        kappa_min: float = 1e-4,
        kappa_max: float = 1.0,
    ) -> None:
        if len(targets) != NUM_BUCKETS or any(t <= 0 for t in targets):
            raise ValueError(f"targets must be {NUM_BUCKETS} positive KL targets (easy, medium, hard); got {targets!r}")
        if not 0.0 < rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1]; got {rho}")
        if not 0.0 <= kappa_min <= kl_coef <= kappa_max:
            raise ValueError(f"need kappa_min <= kl_coef <= kappa_max; got {kappa_min}, {kl_coef}, {kappa_max}")
        if rate < 0 or step_clip < 0:
            raise ValueError(f"rate and step_clip must be >= 0; got {rate}, {step_clip}")
        self.targets = torch.tensor(list(targets), dtype=torch.float64)
        self.rho = float(rho)
        self.rate = float(rate)
        self.step_clip = float(step_clip)
        self.kappa_min = float(kappa_min)
        self.kappa_max = float(kappa_max)
        self.kappa = torch.full((NUM_BUCKETS,), float(kl_coef), dtype=torch.float64)

    def coefficients(self, bucket: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
        """β [B, T] fp32 for samples of `bucket` [B], relaxed by ρ where `window_mask` [B, T]."""
        kappa = self.kappa.to(device=bucket.device, dtype=torch.float32)[bucket.long()].unsqueeze(-1)
        relax = torch.where(window_mask.bool(), self.rho, 1.0)
        return kappa * relax

    def update(self, kl_by_bucket: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Apply one controller step. Buckets with a nan KL_d (no tokens this step) keep κ_d."""
        kl = torch.as_tensor(kl_by_bucket, dtype=torch.float64).detach().cpu().reshape(NUM_BUCKETS)
        err = (kl / self.targets - 1.0).clamp(-self.step_clip, self.step_clip)
        new = (self.kappa * (1.0 + self.rate * err)).clamp(self.kappa_min, self.kappa_max)
        self.kappa = torch.where(torch.isfinite(kl), new, self.kappa)
        return self.kappa.clone()

    def state_dict(self) -> dict:
        return {"kappa": self.kappa.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.kappa = torch.tensor(state["kappa"], dtype=torch.float64).reshape(NUM_BUCKETS)


def nonwindow_kl(
    kl_tok: torch.Tensor, response_mask: torch.Tensor, window_mask: torch.Tensor, bucket: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bucket sums of k3 and token counts over response tokens OUTSIDE validated HWE windows.

    docs/algorithm.md "Dynamic KL": κ_d is updated from KL_d, the mean k3 over bucket d's non-window
    tokens, all-reduced across ranks; KL_d = Σ sums / Σ counts over micro-batches and ranks.

    Args:
        kl_tok: [N, R] per-token k3 (detached here).
        response_mask, window_mask: [N, R] bool.
        bucket: [N] long.

    Returns:
        (kl_sum [3] fp64, kl_count [3] fp64) on kl_tok's device.
    """
    outside = response_mask & ~window_mask
    onehot = torch.nn.functional.one_hot(bucket, NUM_BUCKETS).to(torch.float64)
    kl_sum = onehot.T @ (kl_tok.detach().double() * outside).sum(-1)
    kl_cnt = onehot.T @ outside.sum(-1).double()
    return kl_sum, kl_cnt
