"""From scored rollouts to advantages: τ, HWE tokens and windows, T_d and α_d, shaped reward.

The AEPO stages of docs/algorithm.md after scoring, in the order the step runs them. The equations live
in `ares_lit.core`; these functions wire them to the step's collaborators and collectives:

- `hwe_threshold_step`: τ from every rank's q_i (one all-gather);
- `hwe_tokens`: m_{i,t}, N_HE,i and the validated windows;
- `bucket_controllers`: T_d and α_d from the tracker (a collective under DDP);
- `length_reward` (R_len: overlong, kimi or shorter_better; off by default), `shaped_reward`, `group_advantages`;
- `nonwindow_kl` (from `core.kl`): KL_d's sums for the dynamic-KL controller (used by the module after the update).

Plain code, no Lightning. Every function accepts zero rows, so that a rank without groups runs
the same collectives as the others.
"""

from __future__ import annotations

import torch

from ares_lit.core import (
    NUM_BUCKETS,
    HWEThreshold,
    count_hwe,
    entropy_shaping_reward,
    get_advantage_estimator,
    hwe_mask,
    hwe_window_mask,
    kimi_length_reward,
    nonwindow_kl,
    overlong_penalty,
    shorter_better_reward,
    total_reward,
)
from ares_lit.distributed import all_gather_cat

__all__ = [
    "hwe_threshold_step", "hwe_tokens", "bucket_controllers", "length_reward", "shaped_reward", "group_advantages", "nonwindow_kl",
]  # fmt: skip


def hwe_threshold_step(hwe: HWEThreshold, win: torch.Tensor, valid: torch.Tensor) -> tuple[float, float | None]:
    """τ_batch and the (optionally EMA-smoothed) τ (docs/algorithm.md "HWE threshold").

    q_i is the quantile of response i's window entropies; τ_batch is the mean (or median) of the q_i
    of every rank's responses, gathered, so all ranks mark HWE tokens alike. A collective.

    Only responses with at least `hwe.min_windows` valid windows vote (docs/algorithm.md, short responses).

    Returns:
        (τ_batch, nan without any voter; τ after the update, None until the first finite τ_batch;
        the number of voters, all ranks).
    """
    q = all_gather_cat(hwe.quantiles(win, valid))
    tau_batch = hwe.from_quantiles(q)
    return float(tau_batch), hwe.update(tau_batch), int(q.numel())


def hwe_tokens(
    win: torch.Tensor,
    valid: torch.Tensor,
    threshold: float,
    window: int,
    response_mask: torch.Tensor,
    response_ids: torch.Tensor | None = None,
    trigger_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HWE tokens m_{i,t} = 1[H̄_{i,t:w} >= τ], N_HE,i = Σ_t m_{i,t}, and the validated windows
    [t, t+w-1] (docs/algorithm.md "HWE tokens"). With `trigger_ids`, the *sampled* token at t
    (`response_ids`) must also be a trigger word. A nan τ marks nothing.

    Returns:
        (hwe [N, R] bool, n_hwe [N] fp32, window_mask [N, R] bool).
    """
    triggers = None
    if trigger_ids is not None:
        from ares_lit.triggers import trigger_mask

        triggers = trigger_mask(response_ids.to(win.device), trigger_ids)
    hwe = hwe_mask(win, valid, threshold, triggers)
    return hwe, count_hwe(hwe), hwe_window_mask(hwe, window, response_mask)


def bucket_controllers(tracker, n_hwe: torch.Tensor, bucket: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T_d and α_d for THIS step's reward (docs/algorithm.md "Bucket targets", "Hierarchical entropy reward").

    The tracker folds the step's N_HE in (T_d = mean N_HE of bucket d; α_d moves against the
    previous T_d) and returns the new T_d and the α_d from before the update. A collective under
    DDP: T_d, α_d and the prompt histories come from every rank's rollouts.

    Returns:
        (targets [3], alpha [3]) on n_hwe's device.
    """
    targets, alpha = tracker.update_targets(n_hwe.cpu(), bucket.cpu())
    return targets.to(n_hwe.device), alpha.to(n_hwe.device)


def length_reward(
    cfg, lengths: torch.Tensor, accuracy: torch.Tensor, group_ids: torch.Tensor, max_new_tokens: int, step: int = 0
) -> torch.Tensor:
    """R_len per response for a `LengthRewardConfig` (docs/ablation.md "Baselines"); zeros when
    `cfg` is None. `lengths` are valid response tokens, `group_ids` the prompt of each response,
    correct = accuracy >= 0.5 (R_acc's, as the buckets). `step` (the trainer's global step) gates
    kimi's warm-up. shorter_better returns the paper's r minus 1[correct], so R_acc + R_len = r.

    Returns:
        [N] fp32.
    """
    if cfg is None:
        return torch.zeros_like(accuracy, dtype=torch.float32)
    correct = accuracy >= 0.5
    if cfg.kind == "overlong":
        return overlong_penalty(lengths, *cfg.limits(max_new_tokens), cfg.penalty_factor)
    if cfg.kind == "kimi":
        r = kimi_length_reward(lengths, correct, group_ids.to(lengths.device), cfg.weight)
        return r if step >= cfg.warmup_steps else torch.zeros_like(r)
    if cfg.kind == "shorter_better":
        r = shorter_better_reward(lengths, correct, group_ids.to(lengths.device), cfg.alpha, cfg.beta)
        return r - correct.float()
    raise ValueError(f"length_reward kind must be one of overlong, kimi, shorter_better; got {cfg.kind!r}")


def shaped_reward(
    accuracy: torch.Tensor,
    fmt: torch.Tensor,
    n_hwe: torch.Tensor,
    bucket: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor,
    *,
    entropy_reward: bool = True,
    format_weight: float = 0.0,
    shaping: dict | None = None,
    length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """R = R_acc + R_entropy (+ R_len) (+ w_fmt·R_format) per response (docs/algorithm.md "Hierarchical
    entropy reward"; R_len = `length`, from `length_reward`, when given).

    R_entropy uses each response's bucket target T_d and scale α_d (`targets[bucket]`,
    `alpha[bucket]`); a response counts as correct when its accuracy is >= 0.5.
    `entropy_reward=False` gives R_entropy = 0 (plain GRPO rewards).

    Returns:
        (reward [N], entropy_reward [N]).
    """
    if entropy_reward:
        correct = accuracy >= 0.5
        r_ent = entropy_shaping_reward(n_hwe, targets[bucket], bucket, correct, alpha[bucket], **(shaping or {}))
    else:
        r_ent = torch.zeros_like(accuracy)
    reward = total_reward(accuracy, r_ent, fmt, format_weight)
    return (reward if length is None else reward + length.float()), r_ent


def group_advantages(reward: torch.Tensor, group_ids: torch.Tensor, estimator: str = "grpo") -> torch.Tensor:
    """A_i from the rewards of each prompt's group, by the registered estimator's name
    (docs/algorithm.md "Advantages": grpo, drgrpo, rloo)."""
    return get_advantage_estimator(estimator)(reward, group_ids.to(reward.device))


