"""The settings of one AEPO experience step, as plain values (no Lightning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ares_lit.rollout.base import SamplingConfig

__all__ = ["BranchingConfig", "ExperienceConfig", "PREFIX_LOSSES", "BRANCH_ADVANTAGES"]

PREFIX_LOSSES = ("dedupe", "full")
BRANCH_ADVANTAGES = ("flat", "tree")


@dataclass
class BranchingConfig:
    """Entropy-aware branching rollouts (docs/algorithm.md "Entropy-aware branching rollouts", paper
    §3.2.1; docs/rollout.md "Branching rollouts"). Off unless `RolloutCallback(branching=...)` is set.

    Phase 1 samples `initial_n` responses per prompt; the trainer's policy pass scores them (old
    log-probs and exact entropy, kept for the update). Window entropy and τ are the HWE ones. Each
    prompt gets B_d = `budget[bucket]` branch points (bucket from its phase-1 accuracy), highest
    window entropy first, and `children_per_point` continuations of `prompt + response[:t]` per
    point; fresh roots fill the group up to the rollout's n leaves.
    """

    initial_n: int = 4
    """Phase-1 responses per prompt (1 <= initial_n <= n)."""
    budget: tuple[int, int, int] = (0, 1, 2)
    """B_d: branch points per prompt for easy, medium and hard prompts (phase-1 accuracy bucket)."""
    children_per_point: int = 2
    """Continuations sampled from each branch point (initial_n + max(budget)·children_per_point <= n)."""
    min_prefix: int = 4
    """A branch point t keeps at least this many parent tokens (t >= min_prefix)."""
    min_suffix: int = 4
    """The parent has at least this many tokens from t on (t <= len - min_suffix)."""
    min_gap: int = 8
    """Least distance between two branch points of one response."""
    max_points_per_response: int = 1
    """Branch points one response may carry (spreads a prompt's points over its responses)."""
    trigger_only: bool = False
    """Also require that the sampled token at t is a trigger word (RolloutCallback trigger_words)."""
    prefix_loss: str = "dedupe"
    """"dedupe": a child's inherited prefix is masked out of the policy and KL losses (shared tokens
    are trained once, in the parent); "full": every copy is trained."""
    advantage: str = "flat"
    """"flat": children share the group's GRPO advantage like any response; "tree": a child's
    advantage also subtracts the mean advantage of the leaves sharing its branch point (TreePO-style)."""

    def check(self, n: int) -> None:
        """Raise ValueError on settings that cannot work with n leaves per group."""
        if not 1 <= self.initial_n <= n:
            raise ValueError(f"branching initial_n must be in [1, n={n}]; got {self.initial_n}")
        budget = tuple(self.budget)
        if len(budget) != 3 or min(budget) < 0:
            raise ValueError(f"branching budget must be 3 non-negative ints (easy, medium, hard); got {self.budget}")
        if self.children_per_point < 1:
            raise ValueError(f"branching children_per_point must be >= 1; got {self.children_per_point}")
        if self.initial_n + max(budget) * self.children_per_point > n:
            raise ValueError(
                f"branching: initial_n {self.initial_n} + max(budget) {max(budget)} x children_per_point "
                f"{self.children_per_point} leaves exceed n={n}; every group has exactly n leaves: raise n or lower them"
            )
        if min(self.min_prefix, self.min_suffix, self.min_gap, self.max_points_per_response) < 1:
            raise ValueError("branching min_prefix, min_suffix, min_gap and max_points_per_response must be >= 1")
        if self.prefix_loss not in PREFIX_LOSSES:
            raise ValueError(f"branching prefix_loss must be one of {PREFIX_LOSSES}; got {self.prefix_loss!r}")
        if self.advantage not in BRANCH_ADVANTAGES:
            raise ValueError(f"branching advantage must be one of {BRANCH_ADVANTAGES}; got {self.advantage!r}")


@dataclass
class ExperienceConfig:
    """What `make_experience` needs to know besides its inputs. `RolloutCallback` fills it from its
    arguments, which document every field for `--print_config`."""

    n: int = 8
    """Responses per prompt, the GRPO group size G."""
    temperature: float = 1.0
    """Sampling temperature; the trainer's log-probs and entropy use the same one."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = -1
    """Top-k sampling (-1 = off)."""
    max_new_tokens: int = 256
    """Response length limit."""
    window: int = 4
    """w of the window entropy H̄_{t:w}."""
    advantage: str = "grpo"
    """Advantage estimator, by its registered name (grpo, drgrpo, rloo)."""
    entropy_reward: bool = True
    """Add the hierarchical entropy reward (off = plain accuracy rewards)."""
    filter_groups: bool = True
    """Drop groups without GRPO signal (DAPO dynamic sampling) and refill."""
    filter_low: float = 0.01
    """Lower group-accuracy bound of the filter."""
    filter_high: float = 0.99
    """Upper group-accuracy bound of the filter."""
    max_refill_tries: int = 2
    """Rounds of fresh prompts that replace dropped groups."""
    format_weight: float = 0.0
    """w_fmt of the format reward."""
    shaping: dict = field(default_factory=dict)
    """Keyword arguments of `core.entropy_shaping_reward` (margin_frac, huber_kappa, ...)."""
    num_text_samples: int = 4
    """Decoded responses kept for the TensorBoard text panel."""
    engine_scores: bool = False
    """Use the engine's own log-probs and entropy as the old log-probs and H_t, skipping the
    trainer's policy scoring pass (only where they are the trainer's values; RolloutCallback
    policy_scoring="auto" sets it)."""
    branching: BranchingConfig | None = None
    """Entropy-aware branching rollouts; None samples n flat responses per prompt."""

    @property
    def first_n(self) -> int:
        """Responses per prompt of a round's first `generate` call (initial_n with branching)."""
        return self.n if self.branching is None else self.branching.initial_n

    def sampling(self, seed: int, n: int | None = None) -> SamplingConfig:
        """The engine's sampling settings for one round, with its seed (`n` responses per prompt)."""
        return SamplingConfig(
            n=self.n if n is None else n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_new_tokens,
            seed=seed,
        )
