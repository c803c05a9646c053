"""Hierarchical, difficulty-aware entropy reward (docs/algorithm.md "Bucket targets", "Hierarchical entropy reward").

The paper's λ_d formula is identically 0 (T_d is the batch mean), so this implements the shaping
of the released code, which reproduces the paper's case study (Appendix M). Every constant is a
keyword argument with the spec's default; per-bucket constants are (easy, medium, hard) triples.

Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ares_lit.core.buckets import NUM_BUCKETS
from ares_lit.core.groups import group_index

__all__ = ["huber", "entropy_shaping_reward", "bucket_targets", "total_reward", "reward_inversions"]

Triple = Sequence[float]


def _per_sample(values: Triple, bucket: torch.Tensor) -> torch.Tensor:
    if len(values) != NUM_BUCKETS:
        raise ValueError(f"per-bucket constants need {NUM_BUCKETS} values (easy, medium, hard); got {values!r}")
    return torch.tensor(list(values), dtype=torch.float32, device=bucket.device)[bucket]


def huber(x: torch.Tensor, kappa: torch.Tensor | float) -> torch.Tensor:
    """h(x) = x^2 / (2κ) if x <= κ, else x - κ/2, for x >= 0."""
    return torch.where(x <= kappa, x * x / (2 * kappa), x - kappa / 2)


def entropy_shaping_reward(
    n_hwe: torch.Tensor,
    target: torch.Tensor | float,
    bucket: torch.Tensor,
    correct: torch.Tensor,
    alpha: torch.Tensor | float,
    *,
    margin_frac: Triple = (0.15, 0.25, 0.35),
    min_margin: float = 1.0,
    huber_kappa: Triple = (2.0, 3.0, 4.0),
    sigmoid_temp: Triple = (2.0, 2.5, 3.0),
    cap_scale: Triple = (1.0, 1.0, 1.2),
    wrong_scale: Triple = (0.6, 0.8, 1.0),
    hard_under_scale: float = 0.5,
) -> torch.Tensor:
    """R_entropy per sample (docs/algorithm.md "Hierarchical entropy reward").

    Args:
        n_hwe: [N] N_HE of each response.
        target: T_d of each response's bucket, [N] or a scalar.
        bucket: [N] long, 0 easy / 1 medium / 2 hard.
        correct: [N] bool, whether the answer was right.
        alpha: α_d of each response's bucket, [N] or a scalar.

    With Δ = N_HE - T_d, m = max(min_margin, f_d·max(T_d, 1)), cap = α_d·c_d, h the Huber
    function with κ_d and σ(x) = 1 / (1 + exp(-x / s_d)):

    correct, easy:   -min(cap, h(max(Δ - m, 0)) / (m + κ) · cap)   (penalise over-thinking)
    correct, medium: -min(cap, h(max(|Δ| - m, 0)) / (m + κ) · cap) (stay near the target)
    correct, hard:   σ(Δ + m)·cap if Δ >= -m, else -min(cap, 0.5·h(-Δ - m) / (m + κ) · cap)
    incorrect:       σ(max(Δ - m, 0))·cap·wrong_scale_d            (reward exploring)
    """
    b = bucket.long()
    n = n_hwe.float()
    t = torch.as_tensor(target, dtype=torch.float32, device=n.device).expand_as(n)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=n.device).expand_as(n)
    f = _per_sample(margin_frac, b)
    kappa = _per_sample(huber_kappa, b)
    s = _per_sample(sigmoid_temp, b)
    cap = a * _per_sample(cap_scale, b)

    delta = n - t
    m = (f * t.clamp_min(1.0)).clamp_min(min_margin)
    denom = m + kappa
    zero = torch.zeros_like(delta)

    easy = -torch.minimum(cap, huber(torch.maximum(delta - m, zero), kappa) / denom * cap)
    medium = -torch.minimum(cap, huber(torch.maximum(delta.abs() - m, zero), kappa) / denom * cap)
    hard_under = -torch.minimum(cap, hard_under_scale * huber(torch.maximum(-delta - m, zero), kappa) / denom * cap)
    hard = torch.where(delta >= -m, torch.sigmoid((delta + m) / s) * cap, hard_under)
    right = torch.where(b == 0, easy, torch.where(b == 1, medium, hard))
    wrong = torch.sigmoid(torch.maximum(delta - m, zero) / s) * cap * _per_sample(wrong_scale, b)
    return torch.where(correct.bool(), right, wrong)


def bucket_targets(
    n_hwe: torch.Tensor,
    bucket: torch.Tensor,
    previous: torch.Tensor | None = None,
    momentum: float | None = None,
    min_count: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bucket targets T_d (docs/algorithm.md "Bucket targets", "The α controller").

    T_d is the mean N_HE of the bucket-d responses in the batch, optionally EMA-smoothed:
    T_d <- (1 - μ)·T_d + μ·mean. A bucket with fewer than `min_count` responses in the batch
    (empty, with the default 1) keeps its previous target (nan if it never had one).

    Returns:
        (targets [3], batch_mean [3] (nan where empty), present [3] bool: count >= min_count)
    """
    b = bucket.long()
    n = n_hwe.float()
    sums = torch.zeros(NUM_BUCKETS, dtype=torch.float64, device=n.device).index_add_(0, b, n.double())
    counts = torch.bincount(b, minlength=NUM_BUCKETS)[:NUM_BUCKETS]
    present = counts >= max(min_count, 1)
    nan = torch.full((NUM_BUCKETS,), math.nan, dtype=torch.float32, device=n.device)
    mean = torch.where(counts > 0, (sums / counts.clamp_min(1)).float(), nan)
    prev = nan if previous is None else previous.float().to(n.device)
    if momentum is None:
        smoothed = mean
    else:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"target momentum must be in (0, 1] or None; got {momentum}")
        smoothed = torch.where(torch.isnan(prev), mean, (1.0 - momentum) * prev + momentum * mean)
    return torch.where(present, smoothed, prev), mean, present


def total_reward(
    accuracy: torch.Tensor,
    entropy_reward: torch.Tensor,
    format_reward: torch.Tensor | None = None,
    format_weight: float = 0.0,
) -> torch.Tensor:
    """R = R_acc + R_entropy (+ w_fmt · R_format); w_fmt = 0 by default."""
    r = accuracy.float() + entropy_reward.float()
    if format_reward is not None and format_weight != 0.0:
        r = r + format_weight * format_reward.float()
    return r


def reward_inversions(
    reward: torch.Tensor,
    correct: torch.Tensor,
    group_ids: torch.Tensor,
    bucket: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward inversions per bucket (docs/algorithm.md "The α controller"): groups in which some incorrect
    response's total reward is >= some correct response's, i.e. max R(wrong) >= min R(right).

    Only groups with both a correct and an incorrect response can invert; they are the
    denominator. All responses of a group share its prompt's bucket.

    Returns:
        (inverted [3] long, mixed [3] long): per bucket, inverted groups and groups with both kinds.
    """
    r = reward.double()
    ok = correct.bool()
    inverse, sizes = group_index(group_ids)
    g = sizes.numel()
    inf = torch.full((g,), math.inf, dtype=torch.float64, device=r.device)
    min_right = inf.scatter_reduce(0, inverse, torch.where(ok, r, math.inf), "amin")
    max_wrong = (-inf).scatter_reduce(0, inverse, torch.where(ok, -math.inf, r), "amax")
    mixed = torch.isfinite(min_right) & torch.isfinite(max_wrong)
    inverted = mixed & (max_wrong >= min_right)
    group_bucket = torch.zeros(g, dtype=torch.long, device=r.device).scatter_(0, inverse, bucket.long())
    count = lambda m: torch.bincount(group_bucket[m], minlength=NUM_BUCKETS)[:NUM_BUCKETS]  # noqa: E731
    return count(inverted), count(mixed)
