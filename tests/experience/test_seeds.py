"""Issue 12 item 3: sampling seeds never repeat within a run, and a run is reproducible.

Two levels. The seed function (`ares_lit.experience.seeds`) over the real field ranges of a
3-step, 2-rank, refill-enabled run; and what `RolloutCallback.on_train_batch_start` actually hands
a scripted engine over 3 steps on 2 ranks with refills, expanded to one seed per sample by vLLM's
contract (`SamplingConfig.seed + prompt_index * n + sample_index`, `VLLMEngine._sampling_params`).
"""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from callbacks.rollout import RolloutCallback
from data_modules.difficulty import DifficultyTracker
from tests.experience.fakes import GOLD, FakeScorer, Refill, ScriptedEngine, StubTokenizer, prompt

N = 4


def exact_match(texts, golds):
    return [float(t == g) for t, g in zip(texts, golds)]


def per_sample_seeds(calls) -> list[int]:
    """One seed per sampled response, as vLLM derives them from a call's seed."""
    return [c["seed"] + i * c["n"] + j for c in calls for i in range(len(c["prompts"])) for j in range(c["n"])]


def drive_callback(base_seed: int, ranks: int = 2, steps: int = 3) -> dict[int, list[dict]]:
    """`on_train_batch_start` of one callback per rank, `steps` steps each, every step refilling twice.

    Each step's batch has one mixed group and one all-right group (dropped); refill round 1 brings an
    all-wrong group (dropped), round 2 a mixed one. Returns each rank's engine calls."""
    calls = {}
    for rank in range(ranks):
        cb = RolloutCallback(engine="hf", n=N, max_new_tokens=8, max_refill_tries=2, seed=base_seed)
        cb.reward_fn = exact_match
        records = []
        module = SimpleNamespace(
            policy=torch.nn.Linear(1, 1), reference=None, tokenizer=StubTokenizer(),
            score=lambda model, *a, **k: FakeScorer()(*a, **k), log=lambda *a, **k: None,
        )  # fmt: skip
        for step in range(steps):
            batch = [prompt(f"b{rank}-{step}-0", 2), prompt(f"b{rank}-{step}-1", N)]
            stream = [prompt(f"r{rank}-{step}-0", 0), prompt(f"r{rank}-{step}-1", 1)]
            records += batch + stream
            cb.engine = engine = ScriptedEngine(batch + stream)
            data = SimpleNamespace(tracker=DifficultyTracker(), refill_prompts=Refill(stream))
            trainer = SimpleNamespace(
                datamodule=data, global_step=step, global_rank=rank, world_size=ranks, callbacks=[],
                strategy=SimpleNamespace(precision_plugin=Precision()),
            )  # fmt: skip
            b = {"prompts": batch}
            cb.on_train_batch_start(trainer, module, b, step)
            assert b["rollout"] is not None and data.refill_prompts.requests == [1, 1]
            calls.setdefault(rank, []).extend(engine.calls)
    return calls


def test_no_two_samples_of_a_three_step_two_rank_refill_run_share_a_seed():
    calls = drive_callback(base_seed=0)
    assert [len(c) for c in calls.values()] == [9, 9]  # 3 steps x (batch + 2 refill rounds) per rank
    seeds = per_sample_seeds(calls[0] + calls[1])
    assert len(seeds) == 2 * 3 * (2 + 1 + 1) * N
    assert len(set(seeds)) == len(seeds), f"{len(seeds) - len(set(seeds))} repeated sample seeds"


def test_the_callback_seeds_are_reproducible_and_follow_the_base_seed():
    first, again, other = drive_callback(7), drive_callback(7), drive_callback(8)
    seeds = lambda calls: per_sample_seeds(calls[0] + calls[1])  # noqa: E731
    assert seeds(first) == seeds(again)
    assert set(seeds(first)).isdisjoint(seeds(other))


def test_the_seed_function_is_injective_over_a_runs_ranges():
    """Every (rank, step, round, prompt, sample) of a 3-step, 2-rank run with 2 refill rounds of up to
    8 prompts x 8 samples, and of the layout's extreme corners, gets its own seed."""
    from ares_lit.experience.seeds import round_seed, sample_seed

    n = 8
    seen = {}
    for base in (0, 1, 2**40 + 3):
        seen = {}
        for rank in range(2):
            for step in range(3):
                for rnd in range(3):
                    for i in range(8):
                        for j in range(n):
                            key = (rank, step, rnd, i, j)
                            s = sample_seed(base, rank, step, rnd, i, j, n)
                            assert s == round_seed(base, rank, step, rnd, 8, n) + i * n + j  # the engines' contract
                            assert 0 <= s < 2**63
                            assert seen.setdefault(s, key) == key, (s, seen[s], key)
    from ares_lit.experience.seeds import MAX_RANK, MAX_ROUND, MAX_SLOT, MAX_STEP

    corners = [(r, s, q, i) for r in (0, MAX_RANK) for s in (0, 1, MAX_STEP) for q in (0, MAX_ROUND) for i in (0, MAX_SLOT)]
    values = {sample_seed(5, r, s, q, i, 0, 1) for r, s, q, i in corners}
    assert len(values) == len(corners) and max(values) < 2**63


@pytest.mark.parametrize(
    "field, kwargs, message",
    [
        ("rank", dict(rank=2**13), "rank"),
        ("step", dict(step=2**24), "step"),
        ("round", dict(refill_round=64), "max_refill_tries"),
        ("slot", dict(num_prompts=2**18 + 1, n=4), "prompts x n"),
        ("negative", dict(step=-1), "step"),
    ],
)
def test_a_field_out_of_range_is_a_clear_error(field, kwargs, message):
    from ares_lit.experience.seeds import round_seed

    args = dict(base_seed=0, rank=0, step=0, refill_round=0, num_prompts=2, n=4) | kwargs
    with pytest.raises(ValueError, match=message):
        round_seed(**args)


def test_the_branching_phase_has_its_own_seeds_and_leaves_the_others_unchanged():
    from ares_lit.experience.seeds import MAX_ROUND, SLOT_BITS, _mix, round_seed

    for base, rank, step, r in [(0, 0, 0, 0), (7, 3, 11, 2), (2**40, 5, 2**20, MAX_ROUND)]:
        plain = round_seed(base, rank, step, r, 4, 8)
        key = step << 19 | rank << 6 | r  # the layout before branching existed: same seeds
        assert plain == (key ^ _mix(base)) << SLOT_BITS
        branched = round_seed(base, rank, step, r, 4, 8, branch=True)
        assert branched != plain
        others = {round_seed(base, rank, step, q, 4, 8) for q in range(MAX_ROUND + 1)}
        assert branched not in others
    with pytest.raises(ValueError, match="max_refill_tries"):
        round_seed(0, 0, 0, MAX_ROUND + 1, 1, 1)
