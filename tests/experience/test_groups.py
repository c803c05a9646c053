"""Sampling, grading, buckets and the group filter (docs/algorithm.md "Online difficulty buckets", "Group filter").

Plain code on hand-built objects, without Lightning. The engine is a scripted one (fixed
completions per prompt, tests/experience/fakes.py), so each test decides which groups are all
right, all wrong or mixed.
"""

import pytest
import torch

from ares_lit.core import EASY, HARD, MEDIUM
from ares_lit.experience import ExperienceConfig, collect_groups, grade_responses, round_seed
from data_modules.difficulty import DifficultyTracker
from tests.experience.fakes import FakeScorer, Refill, ScriptedEngine, exact_match_grade, prompt, run_step


def test_buckets_are_assigned_after_grading_and_before_any_scoring_or_shaping():
    log = []
    prompts = [prompt("a", 3), prompt("b", 1), prompt("c", 2)]
    stream = [prompt("r", 4), prompt("s", 2)]
    exp, _, _, _ = run_step(prompts, stream, log=log)
    assert exp.rollout is not None
    # Round 1 (a, b, c) has no signal-free group; nothing is refilled.
    assert log == ["generate", "grade", "assign", "score_policy", "score_reference", "update_targets"]


def test_refill_rounds_bucket_their_groups_before_the_step_is_scored():
    log = []
    prompts = [prompt("a", 4), prompt("b", 1)]  # a: all right, dropped
    stream = [prompt("r", 0), prompt("s", 2)]  # r: all wrong, dropped
    run_step(prompts, stream, log=log)
    assert log == [
        "generate", "grade", "assign",  # the batch
        "generate", "grade", "assign",  # refill 1: r
        "generate", "grade", "assign",  # refill 2: s
        "score_policy", "score_reference", "update_targets",
    ]  # fmt: skip


def test_buckets_come_from_the_group_accuracy_only():
    """Same answers, different format rewards and token entropies: the same buckets, from accuracy."""
    prompts = lambda: [prompt("easy", 3), prompt("medium", 2), prompt("hard", 1)]  # noqa: E731
    runs = []
    for fmt, scorer_logp in ((0.0, -0.1), (1.0, -3.0)):
        exp, _, tracker, _ = run_step(prompts(), fmt=fmt, format_weight=2.0, scorer=FakeScorer(scorer_logp))
        (name, assign), *_ = tracker.calls
        assert name == "assign"
        runs.append((assign, exp.rollout))
    for assign, rollout in runs:
        torch.testing.assert_close(assign["acc"], torch.tensor([0.75, 0.5, 0.25]))
        assert assign["buckets"].tolist() == [EASY, MEDIUM, HARD]
        assert rollout.bucket.tolist() == [EASY] * 4 + [MEDIUM] * 4 + [HARD] * 4
    # ...although the rewards did differ (the format reward entered them, after bucketing).
    assert not torch.equal(runs[0][1].extras["reward"], runs[1][1].extras["reward"])


def test_all_right_and_all_wrong_groups_are_dropped_and_refilled_in_order():
    prompts = [prompt("p0", 4), prompt("p1", 2), prompt("p2", 0), prompt("p3", 1)]
    stream = [prompt("r0", 0), prompt("r1", 3), prompt("r2", 2), prompt("r3", 1)]
    exp, engine, tracker, refill = run_step(prompts, stream, max_refill_tries=3)
    # p0 and p2 dropped: 2 asked for; r0 dropped, r1 kept: 1 more asked for; r2 kept: done.
    assert refill.requests == [2, 1]
    assert [[p[0] for p in c["prompts"]] for c in engine.calls] == [
        [p["prompt_ids"][0] for p in prompts],
        [stream[0]["prompt_ids"][0], stream[1]["prompt_ids"][0]],
        [stream[2]["prompt_ids"][0]],
    ]
    # Round r of base seed 5 (rank 0, step 0): ares_lit/experience/seeds.py.
    assert [c["seed"] for c in engine.calls] == [round_seed(5, 0, 0, r, len(c["prompts"]), 4) for r, c in enumerate(engine.calls)]
    assert (exp.groups_dropped, exp.refill_rounds) == (3, 2)
    # The batch holds the kept groups in the order they were sampled: p1, p3, r1, r2.
    rollout = exp.rollout
    firsts = rollout.input_ids[::4, : rollout.input_ids.shape[1] - rollout.response_len]
    kept = [prompts[1], prompts[3], stream[1], stream[2]]
    assert [row[row != 0][0].item() for row in firsts] == [p["prompt_ids"][0] for p in kept]
    assert rollout.extras["group_ids"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    torch.testing.assert_close(rollout.extras["accuracy"].view(4, 4).mean(-1), torch.tensor([0.5, 0.25, 0.75, 0.5]))
    # Every sampled group, dropped ones included, was bucketed (and recorded by the tracker).
    assigned = [pid for name, call in tracker.calls if name == "assign" for pid in call["ids"]]
    assert assigned == ["p0", "p1", "p2", "p3", "r0", "r1", "r2"]


def test_refills_stop_after_max_refill_tries():
    prompts = [prompt("p0", 4), prompt("p1", 2)]
    stream = [prompt(f"r{i}", 0) for i in range(5)]
    exp, engine, _, refill = run_step(prompts, stream, max_refill_tries=2)
    assert refill.requests == [1, 1]
    assert (exp.groups_dropped, exp.refill_rounds) == (3, 2)
    assert exp.rollout.size == 4  # only p1


def test_without_the_filter_every_group_is_kept():
    prompts = [prompt("p0", 4), prompt("p1", 2), prompt("p2", 0)]
    exp, _, _, refill = run_step(prompts, [prompt("r", 2)], filter_groups=False)
    assert refill.requests == [] and exp.rollout.size == 12
    assert (exp.groups_dropped, exp.refill_rounds) == (0, 0)
    torch.testing.assert_close(exp.rollout.extras["accuracy"].view(3, 4).mean(-1), torch.tensor([1.0, 0.5, 0.0]))


def test_a_step_where_no_group_has_signal_is_skipped():
    prompts = [prompt("p0", 4), prompt("p1", 0)]
    scorer = FakeScorer()
    exp, _, tracker, _ = run_step(prompts, [prompt("r", 0)], scorer=scorer, max_refill_tries=1)
    assert exp.rollout is None and (exp.groups_dropped, exp.refill_rounds) == (3, 1)
    assert scorer.rows == [] and [name for name, _ in tracker.calls] == ["assign", "assign"]


def test_collect_groups_reports_generation_and_grading_progress():
    phases = []
    prompts = [prompt("p0", 4), prompt("p1", 2)]
    refill = Refill([prompt("r", 1)])
    collect_groups(
        prompts, ExperienceConfig(n=4), engine=ScriptedEngine(prompts + refill.stream), grade=exact_match_grade(),
        tracker=DifficultyTracker(), refill=refill, seed=0, on_phase=lambda *a: phases.append(a),
    )  # fmt: skip
    assert phases == [("generation", 0, 2), ("grading", 0, 8), ("generation", 1, 2), ("grading", 0, 4)]


class CountingGrader:
    def __init__(self):
        self.seen = []

    def grade(self, text, gold):
        self.seen.append((text, gold))
        return text == gold


def test_grade_responses_uses_the_grader_or_the_reward_fn_and_reports_progress():
    progress = []
    grader = CountingGrader()
    acc, fmt = grade_responses(["1", "2", "<think>x</think> \\boxed{2}"], ["1", "1", "2"], grader=grader, format_weight=0.5,
                               on_progress=lambda d, t: progress.append((d, t)))  # fmt: skip
    assert acc == [1.0, 0.0, 0.0] and fmt == [0.0, 0.0, 1.0]
    assert progress == [(1, 3), (2, 3), (3, 3)]

    def reward_fn(texts, golds):
        return [{"accuracy": 0.25, "format": 1.0}, 0.75]

    acc, fmt = grade_responses(["a", "b"], ["x", "y"], grader=grader, reward_fn=reward_fn, format_weight=0.5)
    assert acc == [0.25, 0.75] and fmt == [1.0, 0.0]
    assert len(grader.seen) == 3  # the reward_fn replaced the grader


@pytest.mark.parametrize("n_right,bucket", [(4, EASY), (3, EASY), (2, MEDIUM), (1, HARD), (0, HARD)])
def test_bucket_thresholds_through_the_pipeline(n_right, bucket):
    prompts = [prompt("p", n_right)]
    exp, _, tracker, _ = run_step(prompts, filter_groups=False)
    assert tracker.calls[0][1]["buckets"].tolist() == [bucket]
    assert exp.rollout.bucket.tolist() == [bucket] * 4
