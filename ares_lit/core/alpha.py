"""The α controller of the entropy reward (docs/algorithm.md "The α controller", corrected 2026-12-04).

α_d scales the cap α_d·c_d of the hierarchical entropy reward. Four forms, named in the config
(`DifficultyTracker(alpha_update=...)`):

- "log_ratio" (the default; ours): proportional, drift-free and scale-free. For the first K
  batches in which bucket d has responses, α_d = α_0 and those responses' mean N_HE becomes the
  set-point T*_d (`calibrate_setpoint`); then α_d = clip(α_0 + s_d·η·ln((1 + T_d)/(1 + T*_d)))
  (`log_ratio_alpha`), s = (+1, +1, −1). α_d depends only on the current T_d, so a stationary
  N_HE process cannot move it on average, and a change of N_HE by a factor moves it by the same
  amount whatever the response length.
- "absolute" (the paper): α_d += s_d·η·(mean N_HE − T_d^prev). Telescopes to the drift of N_HE
  since the start; η·(tens of tokens) saturates the bounds.
- "relative" (our 2026-11-30 rule, withdrawn): α_d += s_d·η·(mean N_HE − T_d^prev)/max(T_d^prev, 1).
  Does not telescope: rises start from small values and are divided by little, so α_easy drifts
  up and α_hard down under stationary N_HE.
- "released" (the authors' code): the target is round(mean N_HE) of the same batch, so
  α_d += s_d·η·(mean − round(mean)), a step of at most η/2: α stays near α_0.

The incremental forms share `update_alpha`; `alpha_reference` gives each form's reference.

Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import torch

__all__ = [
    "ALPHA_UPDATES",
    "ALPHA_SIGN",
    "DEFAULT_ALPHA_ETA",
    "DEFAULT_ALPHA_MIN_RESPONSES",
    "update_alpha",
    "alpha_reference",
    "calibrate_setpoint",
    "log_ratio_alpha",
]

ALPHA_UPDATES = ("log_ratio", "absolute", "relative", "released")
ALPHA_SIGN = (1.0, 1.0, -1.0)
"""s_d: easy and medium brake more HWE tokens (α up when they grow), hard rewards them (α up when they shrink)."""
DEFAULT_ALPHA_ETA = {"log_ratio": 0.5, "absolute": 0.05, "relative": 0.05, "released": 0.05}
"""η of each form when the config leaves it unset: the spec's 0.5 for log_ratio, the old 0.05 for the others."""
DEFAULT_ALPHA_MIN_RESPONSES = {"log_ratio": 4, "absolute": 1, "relative": 1, "released": 1}
"""Fewest bucket-d responses for a batch to update T_d and α_d: 4 for log_ratio (spec), 1 (any) for the old forms."""


def _sign(device) -> torch.Tensor:
    return torch.tensor(ALPHA_SIGN, dtype=torch.float32, device=device)


def update_alpha(
    alpha: torch.Tensor,
    mean_nhe: torch.Tensor,
    target: torch.Tensor,
    present: torch.Tensor,
    eta: float | torch.Tensor = 0.05,
    bounds: tuple[float, float] = (0.0, 2.0),
) -> torch.Tensor:
    """One step of the incremental forms: α_d += s_d·η·(mean N_HE − reference_d), clipped to `bounds`.

    `eta` may be per bucket ([3]; "relative" passes η/max(T_d^prev, 1)). Buckets absent from the
    batch, or without a reference yet (nan), keep α_d. With the previous T_d as the reference
    ("absolute", "relative"): against the target that already includes this batch the step would
    be identically 0 without momentum (the same degeneracy as the paper's λ_d).
    """
    diff = mean_nhe.float() - target.float()
    ok = present.bool() & torch.isfinite(diff)
    stepped = alpha.float() + eta * _sign(alpha.device) * torch.where(ok, diff, torch.zeros_like(diff))
    return stepped.clamp(bounds[0], bounds[1])


def alpha_reference(form: str, mean_nhe: torch.Tensor, previous: torch.Tensor, eta: float) -> tuple[torch.Tensor, float | torch.Tensor]:
    """(reference [3], step size) of an incremental form for `update_alpha`.

    absolute: (T_d^prev, η); relative: (T_d^prev, η/max(T_d^prev, 1)); released: (round(mean), η).
    A bucket without a previous target gets a finite step; update_alpha leaves it unchanged anyway.
    """
    if form == "released":
        return torch.round(mean_nhe.float()), eta
    if form == "absolute":
        return previous, eta
    if form == "relative":
        prev = previous.float()
        scale = torch.where(torch.isfinite(prev), prev.clamp(min=1.0), torch.ones_like(prev))
        return previous, eta / scale
    raise ValueError(f"alpha_update must be one of {ALPHA_UPDATES[1:]} here; got {form!r}")


def calibrate_setpoint(
    sums: torch.Tensor,
    counts: torch.Tensor,
    batches: torch.Tensor,
    batch_mean: torch.Tensor,
    batch_counts: torch.Tensor,
    present: torch.Tensor,
    calibration_batches: int = 5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold one batch into the set-point calibration of every bucket still calibrating.

    A bucket calibrates over the first `calibration_batches` batches in which it is `present`
    (has enough responses); T*_d = (sum of their N_HE) / (their number of responses), i.e. the
    response-weighted mean over those batches.

    Args:
        sums: [3] fp64 running Σ N_HE over the calibration batches.
        counts: [3] long running number of responses.
        batches: [3] long calibration batches seen so far.
        batch_mean: [3] mean N_HE of this batch per bucket (nan where empty).
        batch_counts: [3] responses of this batch per bucket.
        present: [3] bool, the buckets this batch updates.

    Returns:
        (sums, counts, batches) after the batch; T*_d = sums / counts once counts > 0.
    """
    take = present.bool() & (batches < calibration_batches)
    add = torch.where(take, batch_mean.double().nan_to_num(0.0) * batch_counts.double(), torch.zeros_like(sums))
    return sums + add, counts + torch.where(take, batch_counts, torch.zeros_like(counts)), batches + take.long()


def log_ratio_alpha(
    target: torch.Tensor,
    setpoint: torch.Tensor,
    calibrated: torch.Tensor,
    alpha_init: float = 0.5,
    eta: float = 0.5,
    bounds: tuple[float, float] = (0.0, 2.0),
) -> torch.Tensor:
    """α_d = clip(α_0 + s_d·η·ln((1 + T_d)/(1 + T*_d)), bounds) where `calibrated`, else α_0.

    With T_d the batch mean (no EMA) this equals the incremental update
    α_d += s_d·η·(ln(1 + m_t) − ln(1 + m_{t−1})), telescoped to the calibration set-point.
    """
    t = target.float().clamp_min(0.0)
    s = setpoint.float().clamp_min(0.0)
    ratio = torch.log1p(t) - torch.log1p(s)
    ok = calibrated.bool() & torch.isfinite(ratio)
    alpha = alpha_init + eta * _sign(target.device) * torch.where(ok, ratio, torch.zeros_like(ratio))
    return alpha.clamp(bounds[0], bounds[1])
