"""High-window-entropy (HWE) threshold, tokens and windows (docs/algorithm.md "HWE threshold", "HWE tokens").

Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "sequence_quantiles",
    "reduce_quantiles",
    "voting_quantiles",
    "hwe_threshold",
    "HWEThreshold",
    "hwe_mask",
    "hwe_window_mask",
    "count_hwe",
]

_REDUCTIONS = ("mean", "median")


def sequence_quantiles(win: torch.Tensor, valid: torch.Tensor, quantile: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """q_i: the `quantile` of each sequence's valid window entropies, with linear interpolation.

    Same interpolation as `torch.quantile` / numpy's default, but vectorized with a sort, so that it
    has no input-size limit and handles a different number of valid windows per row.

    Returns:
        (q [B] fp32, has_valid [B] bool). q is 0 where a row has no valid window.
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    v = valid.bool()
    w = torch.where(v, win.float(), torch.full((), math.inf, device=win.device))
    sorted_w, _ = torch.sort(w, dim=-1)
    count = v.sum(dim=-1)
    has_valid = count > 0
    pos = (count.clamp_min(1) - 1).to(torch.float64) * quantile
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.to(torch.float64)).float()
    lo_v = sorted_w.gather(1, lo.unsqueeze(1)).squeeze(1)
    hi_v = sorted_w.gather(1, hi.unsqueeze(1)).squeeze(1)
    q = lo_v + (hi_v - lo_v) * frac
    q = torch.where(has_valid, q, torch.zeros_like(q))
    return q, has_valid


def reduce_quantiles(q: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """τ_batch from the per-response quantiles q_i of the responses that have a valid window.

    Paper: the mean of the q_i; `reduce="median"` is the released code's statistic. No q_i gives
    nan. Under data parallelism pass the q_i of every rank (gathered), so that τ is the global
    batch's and the same on all ranks.
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}; got {reduce!r}")
    if q.numel() == 0:
        return torch.tensor(math.nan, device=q.device)
    return q.mean() if reduce == "mean" else q.median()


def voting_quantiles(win: torch.Tensor, valid: torch.Tensor, quantile: float = 0.95, min_windows: int = 0) -> torch.Tensor:
    """The q_i of the responses that vote on τ: those with at least max(min_windows, 1) valid windows.

    docs/algorithm.md "HWE threshold τ", short responses (ours, 2026-12-04): with few windows a response's
    0.95-quantile is just its maximum, so on short answers τ would track each response's peak and
    N_HE would become a proxy for length. Their tokens are still compared with τ. 0 is the paper.
    """
    if min_windows < 0:
        raise ValueError(f"min_windows must be >= 0 (0: every response with a window votes, the paper); got {min_windows}")
    q, has_valid = sequence_quantiles(win, valid, quantile)
    return q[has_valid & (valid.bool().sum(dim=-1) >= min_windows)]


def hwe_threshold(
    win: torch.Tensor,
    valid: torch.Tensor,
    quantile: float = 0.95,
    reduce: str = "mean",
    min_windows: int = 0,
) -> torch.Tensor:
    """Batch HWE threshold τ_batch (docs/algorithm.md "HWE threshold").

    Paper: τ_batch = mean_i q_i, where q_i is the 0.95-quantile of H̄_{i,·} over response i.
    `reduce="median"` gives the released code's statistic. Rows without a valid window, or with
    fewer than `min_windows` (`voting_quantiles`), are left out; a batch without any returns nan
    (a caller keeps its previous τ then).
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}; got {reduce!r}")
    return reduce_quantiles(voting_quantiles(win, valid, quantile, min_windows), reduce)


class HWEThreshold:
    """The HWE threshold τ across steps, optionally EMA-smoothed: τ <- (1 - μ)·τ + μ·τ_batch.

    `momentum=None` (the paper's default) uses τ_batch as is. The released code used μ = 0.01.
    Only responses with at least `min_windows` valid windows vote (spec default 8; 0 restores the
    paper; `voting_quantiles`). The first finite τ_batch initialises τ; a nan τ_batch (no voter)
    keeps τ unchanged.
    """

    def __init__(
        self, quantile: float = 0.95, reduce: str = "mean", momentum: float | None = None, min_windows: int = 8
    ) -> None:
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}; got {reduce!r}")
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1] or None; got {momentum}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
        if min_windows < 0:
            raise ValueError(f"min_windows must be >= 0 (0: every response with a window votes, the paper); got {min_windows}")
        self.quantile = quantile
        self.min_windows = min_windows
        self.reduce = reduce
        self.momentum = momentum
        self.value: float | None = None
        self.num_updates = 0

    def quantiles(self, win: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The q_i of the responses that vote (`voting_quantiles`; what data-parallel ranks exchange)."""
        return voting_quantiles(win, valid, self.quantile, self.min_windows)

    def from_quantiles(self, q: torch.Tensor) -> torch.Tensor:
        """τ_batch from q_i given directly, e.g. gathered from every rank: `reduce_quantiles`."""
        return reduce_quantiles(q, self.reduce)

    def peek(self, tau_batch: float | torch.Tensor) -> float | None:
        """The τ that `update(tau_batch)` would return, without folding the value in (branching
        rollouts choose their points with it; the step's own τ is updated once, later)."""
        t = float(tau_batch)
        if not math.isfinite(t):
            return self.value
        if self.value is None or self.momentum is None:
            return t
        return (1.0 - self.momentum) * self.value + self.momentum * t

    def update(self, tau_batch: float | torch.Tensor) -> float | None:
        """Fold one batch value in and return the current τ (None until a finite value arrives)."""
        t = float(tau_batch)
        if math.isfinite(t):
            self.value = self.peek(t)
            self.num_updates += 1
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.value = None if state["value"] is None else float(state["value"])
        self.num_updates = int(state["num_updates"])


def hwe_mask(
    win: torch.Tensor,
    valid: torch.Tensor,
    threshold: float | torch.Tensor,
    trigger_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """HWE tokens m_{i,t} = 1[H̄_{i,t:w} >= τ] on valid windows (docs/algorithm.md "HWE tokens").

    `trigger_mask` [B, T] optionally also requires the sampled token at t to be a reasoning
    trigger word. A nan threshold marks nothing.
    """
    m = valid.bool() & (win >= threshold)
    if trigger_mask is not None:
        m = m & trigger_mask.bool()
    return m


def count_hwe(hwe: torch.Tensor) -> torch.Tensor:
    """N_HE,i = sum_t m_{i,t}, as fp32 [B]."""
    return hwe.sum(dim=-1).float()


def hwe_window_mask(hwe: torch.Tensor, window: int, mask: torch.Tensor) -> torch.Tensor:
    """Tokens inside validated HWE windows: the union of [t, t+w-1] over t with m_{i,t} = 1.

    A token s is covered when any of hwe[s-w+1 .. s] is set; the result is restricted to `mask`.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    h = hwe.bool()
    padded = torch.cat([h.new_zeros(h.shape[0], window - 1), h], dim=1)
    covered = padded.unfold(1, window, 1).any(dim=-1)
    return covered & mask.bool()
