"""Tests for ares_lit.grading: boxed extraction, the ARES format check, and time-bounded grading.

Grading tests use the real math-verify in the real worker process.  A short timeout keeps the
hostile-input tests fast; SLACK covers a worker restart (~0.5 s) on a loaded machine.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ares_lit.grading import Grader, default_grader, extract_boxed, format_ok, grade, grade_answer

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 1.5
SLACK = 3.0
# Hangs sympy for far longer than any test timeout (checked: > 20 s without a timeout).
POWER_TOWER = r"\boxed{10^{10^{10^{10}}}}"


@pytest.fixture(scope="module")
def grader():
    g = Grader(timeout=TIMEOUT)
    yield g
    g.close()


# --- extract_boxed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"a \boxed{1} b \boxed{x^{2}}", "x^{2}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{\left\{1,2\right.}", r"\left\{1,2\right."),  # \{ is not a brace
        (r"\boxed{a\\}", r"a\\"),  # \\ is one token: the } after it closes
        (r"\fbox{7}", "7"),
        ("\\boxed \n {42}", "42"),
        (r"<think>maybe \boxed{1}</think> the answer is \boxed{2}", "2"),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "the answer is 3",
        r"\boxed{\frac{1}{2}",  # never closes
        r"\boxed{1} then \boxed{2",  # the last one is unbalanced: do not fall back to the first
        r"\boxedx{3}",
        None,
        b"\\boxed{1}",
    ],
)
def test_extract_boxed_none(text):
    assert extract_boxed(text) is None


def test_extract_boxed_is_linear_on_pathological_text():
    start = time.perf_counter()
    assert extract_boxed("\\boxed{" + "{" * 1_000_000) is None
    assert extract_boxed("\\boxed " * 200_000) is None
    assert extract_boxed("\\boxed{1}" * 200_000) == "1"
    assert time.perf_counter() - start < 2.0


# --- format_ok -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("  <think>reason</think> so \\boxed{3}", True),
        ("reason, so \\boxed{3}", False),  # no think block
        ("<think>a</think><think>b</think> \\boxed{3}", False),  # two think blocks
        ("<think>a</think> \\boxed{3} </think>", False),  # two closing tags
        ("</think><think>a \\boxed{3}", False),  # wrong order
        ("prefix <think>a</think> \\boxed{3}", False),  # does not start with <think>
        ("<think>it is \\boxed{3}</think> done", False),  # boxed only inside the reasoning
        ("<think>a</think> \\boxed{\\frac{1}{2}", False),  # unbalanced boxed
        (None, False),
    ],
)
def test_format_ok(text, ok):
    assert format_ok(text) is ok


# --- grading with the real math-verify -------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5", True),
        (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
        (r"\boxed{\{2,1\}}", r"\{1,2\}", True),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}/2", True),
        (r"<think>\boxed{4}</think> \boxed{-3}", "-3", True),
        (r"\boxed{3}", "4", False),
        (r"\boxed{(x+1)^3}", "x^2+2x+1", False),
        ("the answer is 4", "4", False),
    ],
)
def test_grade(grader, pred, gold, expected):
    assert grader.grade(pred, gold) is expected


def test_grade_answer_and_numeric_gold(grader):
    assert grader.grade_answer(r"\frac{24}{2}", "12") is True
    assert grader.grade(r"\boxed{12}", 12) is True  # numeric dataset column
    assert grade_answer(r"\frac{24}{2}", "12") is True


def test_stats_count_outcomes():
    with Grader(timeout=TIMEOUT, max_answer_chars=20) as g:
        g.grade(r"\boxed{2}", "2.0")  # correct, through the worker
        g.grade(r"\boxed{3}", "2")  # wrong
        g.grade("no box", "2")
        g.grade(r"\boxed{" + "1" * 21 + "}", "2")
        g.grade(r"\boxed{1}", None)  # bad gold type
        assert g.stats == {
            "graded": 5, "correct": 1, "no_answer": 1, "timeouts": 0, "errors": 1, "too_long": 1,
        }


# --- hostile input ---------------------------------------------------------------------------

HOSTILE = {
    "unbalanced_deep_frac": "\\boxed{" + "\\frac{" * 5000,
    "balanced_deep_frac": "\\boxed{" + "\\frac{1}{" * 5000 + "2" + "}" * 5000 + "}",
    "short_deep_frac": "\\boxed{" + "\\frac{1}{" * 90 + "3" + "}" * 90 + "}",
    "nested_braces": "\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}",
    "huge_number": "\\boxed{" + "9" * 100_000 + "}",
    "long_number": "\\boxed{" + "9" * 999 + "}",
    "power_tower_10": POWER_TOWER,
    "power_tower_2": r"\boxed{2^{2^{2^{2^{2^{20}}}}}}",
    "factorial": r"\boxed{(10^{10})!}",
    "control_chars": "\\boxed{\x00\x01\x1b[31m\x7f}" + "\x00" * 10_000,
    "surrogates": "\\boxed{\ud800\udfff\udbff}",
    "many_boxes": "\\boxed{1}" * 100_000,
    "bad_latex": r"\boxed{\frac{}{}\sqrt[][]{}^^__\left(\right]\\\\}",
}


@pytest.mark.parametrize("pred", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_prediction_is_bounded_and_grader_recovers(grader, pred):
    start = time.perf_counter()
    assert grader.grade(pred, "2") is False  # no case means 2
    assert time.perf_counter() - start < TIMEOUT + SLACK
    assert grader.grade(r"\boxed{\frac{2}{4}}", "0.5") is True


def test_hostile_gold_is_bounded(grader):
    start = time.perf_counter()
    assert grader.grade(r"\boxed{1}", "10^{10^{10^{10}}}") is False
    assert time.perf_counter() - start < TIMEOUT + SLACK
    assert grader.grade(r"\boxed{\frac{2}{4}}", "0.5") is True


def test_control_characters_and_surrogates_are_stripped(grader):
    assert grader.grade("\\boxed{\x00\x071\ud800}", "1") is True
    assert grader.grade("\\boxed{\x00\x07(x+1)^2\udfff}", "x^2+2x+1") is True


def test_hang_times_out_kills_and_restarts_worker():
    with Grader(timeout=1.0) as g:
        assert g.grade(r"\boxed{1}", "1.0") is True
        first_pid = g.worker_pid
        start = time.perf_counter()
        assert g.grade(POWER_TOWER, "1") is False
        elapsed = time.perf_counter() - start
        assert 1.0 <= elapsed < 1.0 + SLACK  # it really hung until the deadline
        assert g.stats["timeouts"] == 1
        assert g.worker_pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(first_pid, 0)  # killed and reaped, not orphaned
        assert g.grade(r"\boxed{1}", "1.0") is True
        assert g.worker_pid not in (None, first_pid)


def test_batch_hang_costs_only_its_item(grader):
    before = grader.stats["timeouts"]
    preds = [r"\boxed{\frac{1}{2}}", POWER_TOWER, r"\boxed{(x+1)^2}", r"\boxed{5}"]
    golds = ["0.5", "1", "x^2+2x+1", "6"]
    start = time.perf_counter()
    assert grader.grade_batch(preds, golds) == [True, False, True, False]
    assert time.perf_counter() - start < TIMEOUT + 2 * SLACK
    assert grader.stats["timeouts"] == before + 1
    with pytest.raises(ValueError):
        grader.grade_batch(preds, golds[:2])


def test_close_stops_worker():
    g = Grader(timeout=TIMEOUT)
    assert g.grade(r"\boxed{2}", "2.0") is True
    pid = g.worker_pid
    g.close()
    assert g.worker_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert g.grade(r"\boxed{2}", "2.0") is True  # usable again after close
    g.close()


# --- threads ---------------------------------------------------------------------------------


def test_grade_from_non_main_thread():
    results = {}

    def work():
        results["right"] = grade(r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}")
        results["wrong"] = grade(r"\boxed{\sqrt{3}/2}", r"\frac{\sqrt{2}}{2}")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == {"right": True, "wrong": False}
    assert default_grader().stats["errors"] == 0


def test_concurrent_threads_share_one_grader(grader):
    cases = [(rf"\boxed{{\frac{{{2 * i}}}{{2}}}}", str(i + (i % 2)), i % 2 == 0) for i in range(12)]
    results: dict[int, bool] = {}

    def work(indices):
        for i in indices:
            results[i] = grader.grade(cases[i][0], cases[i][1])

    threads = [threading.Thread(target=work, args=(range(k, 12, 3),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {i: expected for i, (_, _, expected) in enumerate(cases)}


# --- property --------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_integers_grade_exactly(grader, a):
    assert grader.grade(f"\\boxed{{{a}}}", str(a)) is True
    assert grader.grade(f"\\boxed{{\\frac{{{2 * a}}}{{2}}}}", str(a)) is True  # through sympy
    assert grader.grade(f"\\boxed{{{a + 1}}}", str(a)) is False


def test_extract_answer_fallback_to_last_number():
    from ares_lit.grading import extract_answer

    assert extract_answer("so 12, then -3/4.", "last_number") == "-3/4"
    assert extract_answer("boxed wins: \\boxed{5} then 7", "last_number") == "5"
    assert extract_answer("no digits", "last_number") is None
    assert extract_answer("the answer is 5", "none") is None  # the ARES rule: only boxed answers count


def test_grader_answer_fallback():
    with Grader(timeout=5.0, answer_fallback="last_number") as lenient:
        assert lenient.grade("The sum is 12.", "12") is True
        assert lenient.grade("The sum is 13.", "12") is False
    with Grader(timeout=5.0) as strict:
        assert strict.grade("The sum is 12.", "12") is False
        assert strict.stats["no_answer"] == 1
    with pytest.raises(ValueError, match="answer_fallback"):
        Grader(answer_fallback="first_number")
