"""Sampling seeds that never repeat within a run (docs/algorithm.md "AEPO"; issue 12).

Sample j of prompt i in refill round r of rollout step s on rank k gets

    seed = word << 20 | slot,    slot = i·n + j                       (20 bits)
    word = key XOR mix(base),    key  = s << 19 | k << 6 | b << 5 | r (43 bits: 24 + 13 + 1 + 5)

where b is 1 for the second phase of a branching rollout (its children and fresh roots, one
`generate` call per round: `branch=True`) and 0 otherwise, so runs without branching keep their seeds.

so every seed is in [0, 2^63). For a fixed base seed the map is injective: `key` packs the step,
rank and round in disjoint bit fields (each range-checked, a field that would overflow raises),
XOR with the constant `mix(base)` is a bijection on 43-bit words, and the slot sits below all of
them. `mix` (splitmix64) makes runs with different base seeds sample different streams instead of
shifted copies of each other. Runs are reproducible: the seed depends on nothing else.

The engines keep their contract: `SamplingConfig.seed` is a round's seed, `round_seed(...)`,
whose low 20 bits are 0; vLLM gives sample j of prompt i `seed + i·n + j`
(`VLLMEngine._sampling_params`), which is exactly `sample_seed(...)` (no carry into the word), and
the HF engine seeds its whole batch with it (`torch.manual_seed`), which differs per round.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StepSeeds", "round_seed", "sample_seed", "MAX_RANK", "MAX_STEP", "MAX_ROUND", "MAX_SLOT"]

SLOT_BITS, ROUND_BITS, RANK_BITS, STEP_BITS = 20, 6, 13, 24
KEY_BITS = ROUND_BITS + RANK_BITS + STEP_BITS  # 43; KEY_BITS + SLOT_BITS = 63
MAX_SLOT = 2**SLOT_BITS - 1
MAX_ROUND = 2 ** (ROUND_BITS - 1) - 1  # the round field's top bit is the branching phase
MAX_RANK = 2**RANK_BITS - 1
MAX_STEP = 2**STEP_BITS - 1
_M64 = 2**64 - 1


def _mix(base_seed: int) -> int:
    """splitmix64 of the base seed, cut to KEY_BITS bits (a fixed mask per run)."""
    z = (base_seed + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) >> (64 - KEY_BITS)


def _check(name: str, value: int, limit: int, fix: str) -> None:
    if not 0 <= value <= limit:
        raise ValueError(f"sampling seed: {name} must be in [0, {limit}]; got {value} ({fix})")


def round_seed(
    base_seed: int, rank: int, step: int, refill_round: int, num_prompts: int, n: int, branch: bool = False
) -> int:
    """`SamplingConfig.seed` of one `generate` call: `num_prompts` prompts, n samples each.

    `step` is a per-rollout-step counter (the trainer's global step), `refill_round` 0 for the
    batch and r for the r-th refill round; `branch` marks a branching round's second call.
    Raises ValueError when a field leaves its range.
    """
    _check("rank", rank, MAX_RANK, "at most 8192 ranks")
    _check("step", step, MAX_STEP, "at most 2^24 optimizer steps per run")
    _check("refill round", refill_round, MAX_ROUND, f"lower max_refill_tries to <= {MAX_ROUND}")
    refill_round |= int(branch) << (ROUND_BITS - 1)
    if num_prompts * n > MAX_SLOT + 1:
        raise ValueError(
            f"sampling seed: one generate call may sample at most 2^20 responses (prompts x n); "
            f"got {num_prompts} x {n}: lower data batch_size or rollout n"
        )
    key = step << (RANK_BITS + ROUND_BITS) | rank << ROUND_BITS | refill_round
    return (key ^ _mix(base_seed)) << SLOT_BITS


def sample_seed(base_seed: int, rank: int, step: int, refill_round: int, prompt: int, sample: int, n: int) -> int:
    """The seed of sample `sample` of prompt `prompt` (both 0-based) in one round (module docstring)."""
    if not 0 <= sample < n or prompt < 0:
        raise ValueError(f"sampling seed: need 0 <= sample < n and prompt >= 0; got sample {sample}, n {n}, prompt {prompt}")
    return round_seed(base_seed, rank, step, refill_round, prompt + 1, n) + prompt * n + sample


@dataclass(frozen=True)
class StepSeeds:
    """The seeds of one rollout step on one rank; `for_round` gives each round's engine seed."""

    base: int
    """The run's base seed (`RolloutCallback(seed=...)`)."""
    rank: int = 0
    """This process's global rank."""
    step: int = 0
    """The rollout step's counter (the trainer's global step: unique per rollout step)."""

    def for_round(self, refill_round: int, num_prompts: int, n: int, branch: bool = False) -> int:
        return round_seed(self.base, self.rank, self.step, refill_round, num_prompts, n, branch)
