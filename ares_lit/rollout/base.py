"""The rollout interface: sampling settings, one completion, and the engine contract.

Everything outside `ares_lit/rollout/` talks to generation through `RolloutEngine` only, so the
trainer never imports vLLM or calls HF `generate` itself.

Log-prob convention (shared by every engine, so that `Completion.logprobs` is comparable to the
trainer's `log_softmax(logits / temperature)`):

- `Completion.logprobs` are the log-probs of the *sampling* distribution: logits divided by the
  temperature, then top-k / top-p masked and renormalised (vLLM `logprobs_mode="processed_logprobs"`).
  With `top_k=-1, top_p=1` (the GRPO default) this is exactly `log_softmax(logits / T)`; with
  truncation it is the truncated behaviour policy, so a gap to the trainer's untruncated
  log-probs is expected by construction. `temperature=0` (greedy) reports `log_softmax(logits)`.
- `RolloutEngine.score` always returns temperature-1, untruncated `log_softmax(logits)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["SamplingConfig", "Completion", "RolloutEngine", "check_prompts", "check_max_tokens", "check_score_inputs", "truncate_completion"]


@dataclass
class SamplingConfig:
    """How to sample completions for one rollout step."""

    n: int = 8
    """Completions sampled per prompt (the GRPO group size)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 is off."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 is off."""
    max_tokens: int = 256
    """Maximum completion length in tokens (also capped by the engine's max_model_len)."""
    seed: int | None = None
    """Sampling seed; the same seed and prompts give the same samples. None draws fresh noise."""
    stop_token_ids: list[int] | None = None
    """Token ids that end a completion, in addition to the tokenizer's eos."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling.n must be >= 1; got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"sampling.top_k must be -1 (off) or >= 1; got {self.top_k}")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1; got {self.max_tokens}")


@dataclass
class Completion:
    """One sampled response to one prompt."""

    token_ids: list[int]
    """Sampled response tokens; the eos / stop token is included when one was generated."""
    text: str
    """Decoded response, special tokens skipped."""
    logprobs: list[float] | None
    """Engine log-prob of each sampled token under the sampling distribution (module docstring)."""
    finish_reason: str
    """"stop" (eos or a stop token was sampled) or "length" (max_tokens or max_model_len reached)."""
    entropy: list[float] | None = None
    """Exact full-vocabulary entropy of softmax(logits / T) at each sampled position (the trainer's
    H_t, ARES_SPEC "Token entropy"); None when the engine does not compute it (vLLM) or samples
    with top-k / top-p truncation."""


class RolloutEngine(ABC):
    """Generates rollouts and scores sequences with the current policy weights."""

    @property
    def reports_trainer_scores(self) -> bool:
        """True when `Completion.logprobs` and `.entropy` are the trainer's own old log-probs and
        entropy (same weights, same dtype, the same full-vocabulary log-softmax): the trainer may
        then skip its policy scoring pass (RolloutCallback policy_scoring="auto")."""
        return False

    @abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingConfig,
        images: list[list | None] | None = None,
        max_tokens: list[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `sampling.n` completions per prompt; returns one list per prompt, in prompt order.

        `images[i]` holds prompt i's PIL images (or None); its ids then carry the expanded
        `<|image_pad|>` runs of `VisionProcessor.expand`. Vision-language models only.
        `max_tokens[i]` (optional, each in [1, sampling.max_tokens]) caps prompt i's completions
        below `sampling.max_tokens` (branching rollouts: what is left of a child's response budget).
        """

    @abstractmethod
    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Temperature-1 log-prob of every token of `sequences[i]` after `prompt_lens[i]`, under the current weights."""

    @abstractmethod
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Copy new policy weights in, by HF parameter name (as in `model.named_parameters()` / `state_dict()`).
        `partial`: the push holds only the modules that changed (LoRA); the others stay as they are."""

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory between rollouts (level 1 keeps a host copy of the weights, level 2
        drops them); a no-op where unsupported."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Undo `sleep` (optionally only some memory tags); a no-op where unsupported."""

    def close(self) -> None:
        """Release the engine's resources."""


def check_prompts(prompts: Sequence[Sequence[int]], max_model_len: int, vocab_size: int | None = None) -> None:
    """Reject empty or over-long prompts before any generation starts.

    A prompt must leave room for at least one generated token: len(prompt) < max_model_len.
    """
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if len(p) >= max_model_len:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens but max_model_len is {max_model_len}; a prompt must be "
                f"shorter than max_model_len to leave room for a completion (raise max_model_len or truncate prompts)"
            )
        _check_ids(p, vocab_size, f"prompt {i}")


def check_max_tokens(max_tokens: list[int] | None, num_prompts: int, sampling: SamplingConfig) -> None:
    """Per-prompt caps (`RolloutEngine.generate`): one per prompt, each in [1, sampling.max_tokens]."""
    if max_tokens is None:
        return
    if len(max_tokens) != num_prompts:
        raise ValueError(f"generate got {num_prompts} prompts but {len(max_tokens)} max_tokens caps")
    if any(not 1 <= m <= sampling.max_tokens for m in max_tokens):
        raise ValueError(f"every max_tokens cap must be in [1, sampling.max_tokens={sampling.max_tokens}]; got {max_tokens}")


def truncate_completion(c: Completion, cap: int, decode) -> Completion:
    """`c` cut to its first `cap` tokens ("length" when anything was cut; `decode(ids)` gives the
    text). Sampling is autoregressive, so the first `cap` tokens of a longer sample are a sample
    with cap `cap`: an engine that cannot cap rows one by one generates to the longest cap and cuts."""
    if len(c.token_ids) <= cap:
        return c
    ids = c.token_ids[:cap]
    return Completion(
        token_ids=ids,
        text=decode(ids),
        logprobs=None if c.logprobs is None else c.logprobs[:cap],
        finish_reason="length",
        entropy=None if c.entropy is None else c.entropy[:cap],
    )


def check_score_inputs(
    sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], max_len: int, vocab_size: int | None = None
) -> None:
    """Validate `score` inputs: matching lengths, 1 <= prompt_len <= len(sequence) <= max_len."""
    if len(sequences) != len(prompt_lens):
        raise ValueError(f"score got {len(sequences)} sequences but {len(prompt_lens)} prompt_lens")
    for i, (s, p) in enumerate(zip(sequences, prompt_lens)):
        if not 1 <= p <= len(s):
            raise ValueError(
                f"sequence {i}: prompt_len must be in [1, len(sequence)={len(s)}] (the first token has no "
                f"log-prob); got {p}"
            )
        if len(s) > max_len:
            raise ValueError(f"sequence {i} has {len(s)} tokens but this engine scores at most {max_len}")
        _check_ids(s, vocab_size, f"sequence {i}")


def _check_ids(ids: Sequence[int], vocab_size: int | None, what: str) -> None:
    if vocab_size is not None and ids and not 0 <= min(ids) <= max(ids) < vocab_size:
        raise ValueError(f"{what} has token ids outside [0, {vocab_size}): min {min(ids)}, max {max(ids)}")
