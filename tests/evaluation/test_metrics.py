"""Evaluation metrics on hand-built rows: pass@k against exact enumeration, maj@k, lengths, groups."""

import itertools
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ares_lit.evaluation.metrics import maj_vote_correct, metric_block, pass_at_k, summarize


def _exact_pass_at_k(flags: list[bool], k: int) -> float:
    """Share of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(len(flags)), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


@given(st.lists(st.booleans(), min_size=1, max_size=9), st.data())
def test_pass_at_k_equals_enumeration_of_k_subsets(flags, data):
    k = data.draw(st.integers(1, len(flags)))
    assert pass_at_k(len(flags), sum(flags), k) == pytest.approx(_exact_pass_at_k(flags, k), abs=1e-12)


def _rows(per_problem: list[list[bool]], answers=None, lengths=None, source="s", levels=None) -> list[dict]:
    rows = []
    for p, flags in enumerate(per_problem):
        for j, c in enumerate(flags):
            rows.append(
                {
                    "problem": p,
                    "sample": j,
                    "correct": c,
                    "answer": (answers[p][j] if answers else ("1" if c else "2")),
                    "n_tokens": (lengths[p][j] if lengths else 10 + j),
                    "finish_reason": "length" if j == 0 else "stop",
                    "boxed": j != 1,
                    "grader_timeout": False,
                    "source": source,
                    "level": levels[p] if levels else None,
                }
            )
    return rows


@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=6))
def test_pass_at_1_is_avg_and_pass_at_n_is_any_correct(problems):
    block = metric_block(_rows(problems), [1, 4])
    assert block["pass_at_1"] == pytest.approx(block["avg_at_n"])
    assert block["pass_at_4"] == pytest.approx(sum(any(p) for p in problems) / len(problems))
    per = [sum(p) / 4 for p in problems]
    assert block["avg_at_n"] == pytest.approx(sum(per) / len(per))
    expected_se = statistics.stdev(per) / math.sqrt(len(per)) if len(per) > 1 else 0.0
    assert block["avg_at_n_stderr"] == pytest.approx(expected_se)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_vote_ties_go_to_the_first_seen_answer():
    assert maj_vote_correct(["7", "8", "8", "7"], [True, False, False, True]) is True  # tie 2-2: "7" seen first
    assert maj_vote_correct(["8", "7", "7", "8"], [False, True, True, False]) is False
    assert maj_vote_correct(["8", "7", "7"], [False, True, True]) is True
    assert maj_vote_correct([None, None], [False, False]) is False
    assert maj_vote_correct([None, " 5 "], [False, True]) is True  # no-answer samples do not vote


def test_maj_at_k_uses_the_first_k_samples():
    answers = [["9", "9", "3", "3", "3"]]
    rows = _rows([[False, False, True, True, True]], answers=answers)
    block = metric_block(rows, [1, 2, 5])
    assert block["maj_at_1"] == 0.0 and block["maj_at_2"] == 0.0 and block["maj_at_5"] == 1.0


def test_lengths_and_rates():
    lengths = [[10, 20, 30, 40], [5, 5, 5, 100]]
    rows = _rows([[True, False, True, False], [False, False, False, True]], lengths=lengths)
    block = metric_block(rows, [1])
    flat = [x for p in lengths for x in p]
    assert block["mean_length"] == pytest.approx(sum(flat) / 8)
    assert block["median_length"] == pytest.approx(statistics.median(flat))
    assert block["mean_length_correct"] == pytest.approx((10 + 30 + 100) / 3)
    assert block["mean_length_incorrect"] == pytest.approx((20 + 40 + 5 + 5 + 5) / 5)
    assert block["truncation_rate"] == pytest.approx(2 / 8)  # sample 0 of each problem
    assert block["no_answer_rate"] == pytest.approx(2 / 8)  # sample 1 of each problem


def test_unequal_sample_counts_are_refused():
    rows = _rows([[True, False], [True]])
    with pytest.raises(ValueError, match="same number of samples"):
        metric_block(rows, [1])


def test_groups_by_source_level_and_both():
    a = _rows([[True, True], [False, False]], source="a", levels=["easy", "hard"])
    b = _rows([[True, False]], source="b", levels=["easy"])
    for r in b:
        r["problem"] += 10
    summary = summarize(a + b, [1, 2])
    groups = summary["groups"]
    assert set(groups["source"]) == {"a", "b"}
    assert list(groups["level"]) == ["easy", "hard"]
    assert list(groups["source/level"]) == ["a/easy", "a/hard", "b/easy"]
    assert groups["level"]["easy"]["n_problems"] == 2
    assert groups["level"]["easy"]["avg_at_n"] == pytest.approx((1.0 + 0.5) / 2)
    assert groups["source/level"]["a/hard"]["pass_at_2"] == 0.0
    assert summary["overall"]["n_problems"] == 3
