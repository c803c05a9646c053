"""The settings of one AEPO experience step, as plain values (no Lightning)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ares_lit.rollout.base import SamplingConfig

__all__ = ["ExperienceConfig"]


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

    def sampling(self, seed: int) -> SamplingConfig:
        """The engine's sampling settings for one round, with its seed."""
        return SamplingConfig(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_new_tokens,
            seed=seed,
        )
