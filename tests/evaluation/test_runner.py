"""The sampling-and-grading loop on hand-made completions, with the real math-verify grader."""

import pytest

from ares_lit.evaluation.runner import EvalSettings, evaluate_batches, grade_rows
from ares_lit.grading import Grader
from ares_lit.rollout import Completion


class ListEngine:
    """Replays fixed responses and records each call's seed. A stand-in for generation only: the
    rows it yields go through the real grading code and grader."""

    def __init__(self, texts):
        self.texts, self.seeds = texts, []

    def generate(self, prompts, sampling, images=None):
        self.seeds.append(sampling.seed)
        return [
            [Completion([1] * (j + 1), self.texts[(i + j) % len(self.texts)], None, "stop") for j in range(sampling.n)]
            for i, _ in enumerate(prompts)
        ]


def _problem(i, answer, options=None):
    p = {"id": f"p{i}", "question": "q", "answer": answer, "prompt_ids": [1, 2], "source": "s", "level": "easy"}
    if options is not None:
        p["options"] = options
    return p


def _row(response, gold, options=None):
    return {"response": response, "gold": gold, "_options": options}


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=5.0) as g:
        yield g


def test_multiple_choice_by_letter_or_option_text(grader):
    options = ["2", "9", "4"]
    rows = grade_rows(
        [
            _row("so \\boxed{B}", "B", options),
            _row("\\boxed{(B)}", "B", options),
            _row("the largest is \\boxed{9}", "B", options),
            _row("\\boxed{C}", "B", options),
            _row("\\boxed{9}", "9", options),  # gold given as the option text
            _row("no box", "B", options),
        ],
        grader,
    )
    assert [r["correct"] for r in rows] == [True, True, True, False, True, False]
    assert [r["boxed"] for r in rows] == [True] * 5 + [False]


def test_math_answers_go_to_math_verify(grader):
    rows = grade_rows([_row("\\boxed{\\frac{1}{2}}", "0.5"), _row("\\boxed{3}", "0.5"), _row("it is 7", "7")], grader)
    assert [r["correct"] for r in rows] == [True, False, False]  # no box: the ARES rule
    rows = grade_rows([_row("it is 7", "7")], grader, answer_fallback="last_number")
    assert rows[0]["correct"] and rows[0]["answer"] == "7" and not rows[0]["boxed"]


def test_batches_fix_seeds_by_problem_index(grader):
    settings = EvalSettings(n=3, batch_size=2, seed=100)
    problems = [_problem(i, "1") for i in range(5)]
    engine = ListEngine(["\\boxed{1}", "\\boxed{2}"])
    batches = list(evaluate_batches(engine, grader, problems, settings))
    assert engine.seeds == [100, 106, 112]  # problem 0, 2, 4 start their batches: seed + p * n
    rows = [r for b in batches for r in b]
    assert [r["seed"] for r in rows] == list(range(100, 115))
    assert [(r["problem"], r["sample"]) for r in rows][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    resumed = ListEngine(["\\boxed{1}", "\\boxed{2}"])
    tail = [r for b in evaluate_batches(resumed, grader, problems, settings, start_problem=2) for r in b]
    assert resumed.seeds == [106, 112] and tail == rows[6:]
    with pytest.raises(ValueError, match="multiple of batch_size"):
        next(evaluate_batches(engine, grader, problems, settings, start_problem=1))
