"""ARES math as pure, vectorized torch: no Lightning, no I/O (see docs/algorithm.md).

Every equation lives here once; docs/algorithm.md maps each name to its equation. Advantage estimators
and policy losses are registries (`register_advantage`, `register_policy_loss`): a new variant is
one decorated function, selected by name in the config. A variant in a new file of this package
registers when it is imported: add the import below.
"""

from ares_lit.core.alpha import (
    ALPHA_UPDATES,
    DEFAULT_ALPHA_ETA,
    DEFAULT_ALPHA_MIN_RESPONSES,
    alpha_reference,
    calibrate_setpoint,
    log_ratio_alpha,
    update_alpha,
)
from ares_lit.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    drgrpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    register_advantage,
    rloo_advantages,
)
from ares_lit.core.branching import DEFAULT_BRANCH_BUDGET, branch_candidates, choose_branch_points, tree_advantages
from ares_lit.core.buckets import BUCKET_NAMES, EASY, HARD, MEDIUM, NUM_BUCKETS, assign_buckets
from ares_lit.core.entropy import entropy_from_log_probs, token_entropy, window_entropy
from ares_lit.core.entropy_control import (
    AdaptiveEntropyCoef,
    entropy_bonus,
    entropy_quantile,
    forking_mask,
    forking_threshold,
)
from ares_lit.core.groups import group_mean, group_stats, informative_groups
from ares_lit.core.hwe import (
    HWEThreshold,
    count_hwe,
    hwe_mask,
    hwe_threshold,
    hwe_window_mask,
    sequence_quantiles,
    voting_quantiles,
)
from ares_lit.core.kl import KL_KINDS, DynamicKL, kl_estimate, nonwindow_kl
from ares_lit.core.length_rewards import (
    DEFAULT_OVERLONG_BUFFER_FRAC,
    kimi_length_reward,
    overlong_penalty,
    sample_optimal_length,
    shorter_better_reward,
)
from ares_lit.core.losses import (
    AGG_MODES,
    COMMON_LOSS_ARGS,
    POLICY_LOSSES,
    PolicyLossOptions,
    aggregate,
    cispo_policy_loss,
    get_policy_loss,
    gspo_policy_loss,
    masked_mean,
    policy_loss,
    register_policy_loss,
)
from ares_lit.core.cov_losses import clip_cov_policy_loss, kl_cov_policy_loss  # registers clip_cov, kl_cov
from ares_lit.core.rewards import bucket_targets, entropy_shaping_reward, huber, reward_inversions, total_reward

__all__ = [
    "ALPHA_UPDATES",
    "DEFAULT_ALPHA_ETA",
    "DEFAULT_ALPHA_MIN_RESPONSES",
    "alpha_reference",
    "calibrate_setpoint",
    "log_ratio_alpha",
    "reward_inversions",
    "DEFAULT_BRANCH_BUDGET",
    "branch_candidates",
    "choose_branch_points",
    "tree_advantages",
    "DEFAULT_OVERLONG_BUFFER_FRAC",
    "kimi_length_reward",
    "overlong_penalty",
    "sample_optimal_length",
    "shorter_better_reward",
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "BUCKET_NAMES",
    "EASY",
    "HARD",
    "KL_KINDS",
    "MEDIUM",
    "NUM_BUCKETS",
    "COMMON_LOSS_ARGS",
    "POLICY_LOSSES",
    "PolicyLossOptions",
    "DynamicKL",
    "HWEThreshold",
    "aggregate",
    "assign_buckets",
    "bucket_targets",
    "cispo_policy_loss",
    "clip_cov_policy_loss",
    "count_hwe",
    "drgrpo_advantages",
    "AdaptiveEntropyCoef",
    "entropy_bonus",
    "entropy_from_log_probs",
    "entropy_quantile",
    "forking_mask",
    "forking_threshold",
    "entropy_shaping_reward",
    "get_advantage_estimator",
    "get_policy_loss",
    "group_mean",
    "group_stats",
    "grpo_advantages",
    "gspo_policy_loss",
    "huber",
    "kl_cov_policy_loss",
    "hwe_mask",
    "hwe_threshold",
    "hwe_window_mask",
    "informative_groups",
    "kl_estimate",
    "nonwindow_kl",
    "masked_mean",
    "policy_loss",
    "register_advantage",
    "register_policy_loss",
    "rloo_advantages",
    "sequence_quantiles",
    "voting_quantiles",
    "token_entropy",
    "total_reward",
    "update_alpha",
    "window_entropy",
]
