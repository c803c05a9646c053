"""The AEPO experience pipeline: one step's prompts in, a `RolloutBatch` out, as plain code.

No Lightning here: the engine, the grader, the difficulty tracker and the scorers are passed in,
so every stage can be run and tested on hand-built tensors. `callbacks/rollout.py` is the
Lightning side (it gathers these collaborators and calls `make_experience`). The stages, in order
(docs/algorithm.md "AEPO"):

    groups.py    sample_groups → grade_groups → assign_group_buckets → drop_uninformative,
                 with refill rounds: collect_groups
    scoring.py   pack_groups → score_rollouts (old log-probs + exact entropy; reference)
    shaping.py   hwe_threshold_step (τ) → hwe_tokens (HWE mask, N_HE, windows) →
                 bucket_controllers (T_d, α_d) → length_reward (R_len) → shaped_reward → group_advantages;
                 nonwindow_kl (KL_d sums for the dynamic-KL controller, after the update)
    seeds.py     round_seed / sample_seed: sampling seeds unique per (rank, step, round, prompt, sample)
    pipeline.py  make_experience: all of the above, and the skip decision shared by all ranks
"""

from ares_lit.experience.config import ExperienceConfig, LengthRewardConfig
from ares_lit.experience.groups import (
    CollectedGroups,
    PromptGroup,
    assign_group_buckets,
    collect_groups,
    drop_uninformative,
    grade_groups,
    grade_responses,
    sample_groups,
)
from ares_lit.experience.pipeline import Experience, build_rollout_batch, logprob_gap, make_experience, text_samples
from ares_lit.experience.scoring import RolloutTensors, pack_groups, score_rollouts
from ares_lit.experience.seeds import StepSeeds, round_seed, sample_seed
from ares_lit.experience.shaping import (
    bucket_controllers,
    group_advantages,
    hwe_threshold_step,
    hwe_tokens,
    length_reward,
    nonwindow_kl,
    shaped_reward,
)

__all__ = [
    "CollectedGroups",
    "Experience",
    "ExperienceConfig",
    "LengthRewardConfig",
    "PromptGroup",
    "RolloutTensors",
    "StepSeeds",
    "assign_group_buckets",
    "bucket_controllers",
    "build_rollout_batch",
    "collect_groups",
    "drop_uninformative",
    "grade_groups",
    "grade_responses",
    "group_advantages",
    "hwe_threshold_step",
    "hwe_tokens",
    "length_reward",
    "logprob_gap",
    "make_experience",
    "nonwindow_kl",
    "pack_groups",
    "round_seed",
    "sample_groups",
    "sample_seed",
    "score_rollouts",
    "shaped_reward",
    "text_samples",
]
