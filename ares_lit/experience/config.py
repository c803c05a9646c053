"""The settings of one AEPO experience step, as plain values (no Lightning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ares_lit.core import DEFAULT_OVERLONG_BUFFER_FRAC, get_advantage_estimator
from ares_lit.rollout.base import SamplingConfig

__all__ = ["BranchingConfig", "ExperienceConfig", "LengthRewardConfig", "LENGTH_REWARDS", "PREFIX_LOSSES", "BRANCH_ADVANTAGES"]

PREFIX_LOSSES = ("dedupe", "full")
BRANCH_ADVANTAGES = ("flat", "tree")
LENGTH_REWARDS = ("overlong", "kimi", "shorter_better")


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
class LengthRewardConfig:
    """A length control as a reward term R_len (docs/ablation.md "Baselines"; issue #23), added
    to R = R_acc + R_entropy (+ w_fmt·R_format). Off unless `RolloutCallback(length_reward=...)` is
    set; `kind` picks the method, and only that method's fields are read. L is a response's length in
    valid tokens; buckets and the correctness the terms use stay R_acc's (accuracy >= 0.5).

    - "overlong", DAPO soft overlong punishment (Yu et al. 2025, eq. 13; verl 0.9.1 DAPORewardManager
      `overlong_buffer`): R_len = 0 for L <= L_max - L_c, -(L - (L_max - L_c))/L_c·p up to L_max,
      -p beyond. Fields: max_length, buffer_len, penalty_factor.
    - "kimi", Kimi k1.5 length reward (Kimi Team 2025, §2.3.3): λ = 0.5 - (L - min_L)/(max_L - min_L)
      over the prompt's group (0 when max_L = min_L); R_len = w·λ if correct, w·min(0, λ) if not.
      Fields: weight, warmup_steps.
    - "shorter_better", ShorterBetter (Yi et al. 2025; the authors' verl reward manager): SOL = the
      group's shortest correct length (its mean length without a correct answer); the paper's reward
      is α·1[correct] - β·|L - SOL|, and R_len = (α - 1)·1[correct] - β·|L - SOL| makes R_acc + R_len
      equal it. Fields: alpha, beta.
    """

    kind: str
    """"overlong", "kimi" or "shorter_better"."""
    max_length: int | None = None
    """overlong: L_max in tokens; null = the rollout's max_new_tokens (verl: max_response_length)."""
    buffer_len: int | None = None
    """overlong: L_c, the soft-punishment buffer (0 < L_c <= L_max); null = round(0.2·L_max), DAPO's
    ratio (4096 of 20480; verl's own default is off: overlong_buffer.len 0)."""
    penalty_factor: float = 1.0
    """overlong: p, the punishment at L_max (DAPO and verl's DAPO recipe: 1.0)."""
    weight: float = 1.0
    """kimi: w of the length reward (the paper adds it "with a weighting parameter" and gives no value)."""
    warmup_steps: int = 0
    """kimi: trainer steps (global_step) before which the term is 0; from then on it is w·reward, constant,
    as the paper's warm-up ("standard policy optimization without length penalty, followed by a constant
    length penalty"); 0 = on from the start."""
    alpha: float = 2.0
    """shorter_better: α, the correctness reward (the authors' release: 2.0; the paper also trains α = 1)."""
    beta: float = 0.001
    """shorter_better: β, the reward lost per token of distance to SOL (the paper and release: 0.001)."""

    def limits(self, max_new_tokens: int) -> tuple[int, int]:
        """overlong: (L_max, L_c) with the nulls resolved."""
        l_max = max_new_tokens if self.max_length is None else int(self.max_length)
        l_c = max(1, round(l_max * DEFAULT_OVERLONG_BUFFER_FRAC)) if self.buffer_len is None else int(self.buffer_len)
        return l_max, l_c

    def check(self, max_new_tokens: int) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.kind not in LENGTH_REWARDS:
            raise ValueError(f"length_reward kind must be one of {LENGTH_REWARDS}; got {self.kind!r}")
        l_max, l_c = self.limits(max_new_tokens)
        if l_max < 1:
            raise ValueError(f"length_reward max_length must be >= 1 (null = max_new_tokens); got {self.max_length}")
        if not 0 < l_c <= l_max:
            raise ValueError(f"length_reward buffer_len must be in (0, max_length={l_max}]; got {self.buffer_len}")
        if min(self.penalty_factor, self.weight, self.beta) < 0 or self.warmup_steps < 0:
            raise ValueError("length_reward penalty_factor, weight, beta and warmup_steps must be >= 0")


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
    length_reward: LengthRewardConfig | None = None
    """A length control added to the reward (overlong, kimi or shorter_better); None = off."""

    def check(self) -> None:
        """Raise ValueError on settings that cannot work (RolloutCallback calls it at construction)."""
        if self.n < 2:
            raise ValueError(f"rollout.n must be >= 2 for GRPO-style advantages (a group needs a baseline); got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0; got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1]; got {self.top_p}")
        if self.window < 1:
            raise ValueError(f"rollout.window must be >= 1 (tokens per entropy window); got {self.window}")
        if self.max_new_tokens < self.window:
            raise ValueError(f"rollout.max_new_tokens ({self.max_new_tokens}) must be >= rollout.window ({self.window})")
        if not 0 <= self.filter_low <= self.filter_high <= 1:
            raise ValueError(
                f"need 0 <= rollout.filter_low <= rollout.filter_high <= 1; got {self.filter_low} and {self.filter_high}"
            )
        if not 0 <= self.max_refill_tries <= 31:
            raise ValueError(f"rollout.max_refill_tries must be in [0, 31] (a field of the sampling seed); got {self.max_refill_tries}")
        get_advantage_estimator(self.advantage)  # fails early on an unknown name
        if self.branching is not None:
            self.branching.check(self.n)
        if self.length_reward is not None:
            self.length_reward.check(self.max_new_tokens)

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
