"""A bundled, offline, difficulty-graded cold-start pool (`path: builtin:coldstart`).

Nothing is downloaded or committed: rows are generated deterministically from (seed, index) on
top of `builtin_math.generate_problems`, so row i is the same whatever n is. Each row follows
the ColdstartDataModule JSONL schema (see data_modules/coldstart.py):

    {"id", "source", "question", "answer", "level", "k", "n", "traces": [...]}

- Questions and answers come from the bundled arithmetic set (easy / medium / hard in turn).
- Two sources with different writing styles, so that the per-source medians L(0), L(1) differ:
  even indices are "math-terse", odd ones "math-verbose" (more words per step).
- Candidate traces of graded length, built from the real evaluation steps of the expression:
  a one-line answer, the step list, the steps plus a re-check, and the steps plus a re-check
  and an alternative route. One or two incorrect traces (an arithmetic slip carried to a wrong
  boxed answer) are mixed in. Trace formats vary on purpose, to exercise normalization: plain
  strings with or without think tags, dicts with and without a "correct" flag.
- Pass rates k of n = 8 correlate with difficulty (the reference model is simulated): easy
  problems mostly k = 6..8, medium 2..6, hard 0..3, so every source has p = 0 and p = 1 rows.

It is a mechanics pool for the smoke run and tests, not a benchmark.
"""

from __future__ import annotations

import ast
import json
import operator
import random
from pathlib import Path

from data_modules.builtin_math import generate_problems

__all__ = ["SOURCES", "PASS_RATE_N", "generate_pool", "write_jsonl"]

SOURCES = ("math-terse", "math-verbose")
PASS_RATE_N = 8
# Simulated reference-model successes out of 8, per level: weights over k = 0..8.
_K_WEIGHTS = {
    "easy": (0, 0, 0, 0, 0, 1, 2, 3, 4),
    "medium": (0, 1, 2, 3, 3, 2, 1, 0, 0),
    "hard": (5, 3, 2, 1, 0, 0, 0, 0, 0),
}
_OPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul)}
_STYLE = {
    "math-terse": {"step": "{a} {op} {b} = {v}.", "intro": "Compute {expr}.", "check": "Check: {a} {op} {b} = {v}."},
    "math-verbose": {
        "step": "Next I work out {a} {op} {b}, which gives {v}.",
        "intro": "I need to find the value of {expr}, respecting the order of operations.",
        "check": "Wait, let me double-check that {a} {op} {b} really equals {v}. Yes, it does.",
    },
}


def _steps(expr: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """Post-order evaluation steps (a, op, b, value) of an arithmetic expression, and its value."""
    steps: list[tuple[int, str, int, int]] = []

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant):
            return int(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = walk(node.left), walk(node.right)
            sym, fn = _OPS[type(node.op)]
            steps.append((a, sym, b, fn(a, b)))
            return steps[-1][3]
        raise ValueError(f"unsupported expression {expr!r}")

    return steps, walk(ast.parse(expr, mode="eval").body)


def _traces(expr: str, answer: str, source: str, rng: random.Random) -> list:
    style = _STYLE[source]
    steps, value = _steps(expr)
    if str(value) != answer:
        raise AssertionError(f"builtin pool: {expr} evaluates to {value}, not {answer}")
    lines = [style["step"].format(a=a, op=op, b=b, v=v) for a, op, b, v in steps]
    checks = [style["check"].format(a=a, op=op, b=b, v=v) for a, op, b, v in steps]
    intro = style["intro"].format(expr=expr)
    done = f"So the result is {answer}."
    short = f"{expr} = {answer}."
    medium = " ".join([intro, *lines, done])
    long = " ".join([intro, *lines, "Let me verify each step.", *checks, done])
    alt = (
        f"Alternatively, I can estimate: {expr} should be close to {answer}, which matches. "
        "Hmm, but estimates can hide slips, so I recompute once more. " + " ".join(lines)
    )
    very_long = " ".join([intro, *lines, "Let me verify each step.", *checks, alt, f"Therefore the result is {answer}."])
    # An arithmetic slip in the last step, carried to a wrong final answer.
    slip = value + rng.choice([-10, -2, -1, 1, 2, 10])
    wrong_lines = lines[:-1] + [style["step"].format(a=steps[-1][0], op=steps[-1][1], b=steps[-1][2], v=slip)]
    wrong = " ".join([intro, *wrong_lines, f"So the result is {slip}."])
    wrong_short = f"{expr} = {slip}."
    # Formats vary on purpose (see the module docstring); the data module normalizes them all.
    candidates = [
        f"<think>{short}</think>\n\\boxed{{{answer}}}",  # already in ARES format
        f"{medium} The answer is \\boxed{{{answer}}}.",  # raw reasoning ending in a box
        {"text": long, "correct": True},  # no box at all: flagged correct, the gold box is appended
        {"text": f"<think>{very_long}</think> The final answer is \\boxed{{{answer}}}."},  # graded
        {"text": f"<think>{wrong}</think> \\boxed{{{slip}}}", "correct": False},
    ]
    if rng.random() < 0.5:
        candidates.append(f"{wrong_short} \\boxed{{{slip}}}")  # incorrect, found by grading
    rng.shuffle(candidates)
    return candidates


def generate_pool(n: int, seed: int = 0) -> list[dict]:
    """n pool rows (schema above), deterministic in (seed, index)."""
    rows = []
    for i, problem in enumerate(generate_problems(n, seed)):
        rng = random.Random(f"builtin-coldstart/{seed}/{i}")
        source = SOURCES[i % len(SOURCES)]
        expr = problem["question"].removeprefix("What is ").removesuffix("?")
        k = rng.choices(range(PASS_RATE_N + 1), weights=_K_WEIGHTS[problem["level"]])[0]
        rows.append(
            {
                "id": f"builtin-coldstart-{seed}-{i}",
                "source": source,
                "question": problem["question"],
                "answer": problem["answer"],
                "level": problem["level"],
                "k": k,
                "n": PASS_RATE_N,
                "traces": _traces(expr, problem["answer"], source, rng),
            }
        )
    return rows


def write_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    """Materialise `generate_pool(n, seed)` as JSON lines at path; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_pool(n, seed):
            f.write(json.dumps(row) + "\n")
    return path
