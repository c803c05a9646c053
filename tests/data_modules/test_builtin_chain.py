"""The chained-arithmetic task (`builtin:chain`, issue #24): difficulty is the number of operations, the
splits are disjoint, every answer is right, and the cold-start pool's traces are graded by the real
math-verify grader, end in \\boxed{}, and grow in length with the number of steps."""

import re
import statistics
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.grading import extract_boxed, format_ok, grade
from data_modules.builtin_chain import (
    LEVEL_OPS,
    LEVELS,
    PASS_RATE_N,
    TEST_SIZE,
    generate_pool,
    generate_problems,
    pass_probability,
    split_of,
    trace_styles,
)
from data_modules.readers import read_pool, read_prompt_source

_STEP = re.compile(r"(add|subtract) (\d+)")


def _solve(question: str) -> tuple[int, int]:
    """(the answer, the number of operations) read back from the question text alone."""
    value = int(re.match(r"Start at (\d+),", question).group(1))
    ops = _STEP.findall(question)
    for op, k in ops:
        value = value + int(k) if op == "add" else value - int(k)
    return value, len(ops)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), split=st.sampled_from(["train", "test"]))
@settings(max_examples=40, deadline=None)
def test_answers_levels_and_values_follow_the_question_text(seed, n, split):
    for p in generate_problems(n, seed, split=split):
        value, ops = _solve(p["question"])
        assert str(value) == p["answer"] and ops == p["ops"] in LEVEL_OPS[p["level"]]
        running = p["start"]
        for op, k in p["steps"]:  # every intermediate value is a small non-negative integer
            running = running + k if op == "+" else running - k
            assert 0 <= running <= 81 and 1 <= k <= 9
        assert split_of(p) == split


def test_deterministic_prefix_stable_and_balanced():
    a, b = generate_problems(30, seed=3), generate_problems(60, seed=3)
    assert a == b[:30] and a != generate_problems(30, seed=4)
    assert Counter(p["level"] for p in b) == {lv: 20 for lv in LEVELS}


def test_held_out_split_is_disjoint_distinct_and_large_enough():
    test = generate_problems(TEST_SIZE, split="test")
    assert len({p["question"] for p in test}) == TEST_SIZE == 480
    assert Counter(p["level"] for p in test) == {lv: 160 for lv in LEVELS}  # SE <= sqrt(.25 / 160) = 0.040
    train = {p["question"] for seed in (0, 1) for p in generate_problems(3000, seed)}
    assert not train & {p["question"] for p in test}
    # the readers serve the splits by name: `builtin:chain:test` is the whole held-out split
    src = read_prompt_source("builtin:chain:test", "train", 7, 0)
    assert len(src.rows) == TEST_SIZE and src.rows[0]["question"] == test[0]["question"]
    assert len(read_prompt_source("builtin:chain", "train", 7, 0).rows) == 7


def test_pool_traces_are_graded_boxed_and_grow_with_the_steps():
    rows = generate_pool(60, seed=0)
    lengths: dict[str, list[int]] = {lv: [] for lv in LEVELS}
    for row in rows:
        assert 0 <= row["k"] <= row["n"] == PASS_RATE_N
        correct = [t for t in row["traces"] if isinstance(t, str) and grade(t, row["answer"])]
        wrong = [t for t in row["traces"] if not (isinstance(t, str) and grade(t, row["answer"]))]
        assert len(correct) == 3 and 1 <= len(wrong) <= 2  # three styles; one or two incorrect traces
        for t in row["traces"]:
            text = t if isinstance(t, str) else t["text"]
            assert format_ok(text) and text.rstrip().endswith("}") and extract_boxed(text) is not None
            if isinstance(t, dict):  # flagged incorrect, and really incorrect under math-verify
                assert t["correct"] is False and not grade(text, row["answer"])
        problem = next(p for p in generate_problems(60, 0) if p["question"] == row["question"])
        styles = trace_styles(problem)
        assert len(styles["terse"]) < len(styles["steps"]) < len(styles["checked"])
        assert styles["steps"].count("\n") == row["ops"] - 1  # one step per line
        lengths[row["level"]].append(len(styles["steps"]))
    means = [statistics.fmean(lengths[lv]) for lv in LEVELS]
    assert means[0] < means[1] < means[2]


def test_pass_rates_follow_the_difficulty_model():
    assert [round(pass_probability(n), 2) for n in (1, 2, 3, 4, 6, 7, 8)] == [0.93, 0.81, 0.69, 0.56, 0.34, 0.26, 0.19]
    rows = generate_pool(600, seed=0)
    mean_k = {lv: statistics.fmean(r["k"] for r in rows if r["level"] == lv) for lv in LEVELS}
    assert mean_k["easy"] > mean_k["medium"] > mean_k["hard"]
    for lv in LEVELS:  # within 3 standard errors of the model's expectation
        expected = statistics.fmean(PASS_RATE_N * pass_probability(r["ops"]) for r in rows if r["level"] == lv)
        assert abs(mean_k[lv] - expected) < 3 * (PASS_RATE_N * 0.25 / 200) ** 0.5
    # every bracket from p = 0 to p = 1 is populated, so AdaCS has both anchors L(0) and L(1)
    assert {r["k"] for r in rows} == set(range(PASS_RATE_N + 1))


def test_the_pool_reader_and_bad_names():
    src, fingerprint = read_pool("builtin:chain", 12, 5)
    assert len(src.rows) == 12 and fingerprint == "builtin:chain/12/5" and "traces" in src.columns
    with pytest.raises(ValueError, match="builtin:chain"):
        read_pool("builtin:chainz", 12, 5)
    with pytest.raises(ValueError, match="levels"):
        generate_problems(3, levels=("easy", "trivial"))
    with pytest.raises(ValueError, match="split"):
        generate_problems(3, split="dev")
