"""Bundled, offline, difficulty-graded cold-start pools (`path: builtin:coldstart`, `builtin:visual`).

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

The multimodal pool (`generate_visual_pool`, `path: builtin:visual`) is built the same way on
top of `builtin_visual.generate_problems`: one source per kind ("visual-count", "visual-bar",
"visual-length"), each row's "images" holding its picture (a PIL image), and traces written from
the picture's scene (the shapes counted row by row, the bars read off the axis, the segments
measured in grid squares), with the same mix of lengths, formats and wrong traces, and the same
simulated pass rates per level.

They are mechanics pools for the smoke run and tests, not benchmarks.
"""

from __future__ import annotations

import ast
import json
import operator
import random
from pathlib import Path

from data_modules.builtin_math import generate_problems

__all__ = ["SOURCES", "VISUAL_SOURCES", "PASS_RATE_N", "generate_pool", "generate_visual_pool", "write_jsonl"]

SOURCES = ("math-terse", "math-verbose")
VISUAL_SOURCES = ("visual-count", "visual-bar", "visual-length")
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
    return _mix(short, medium, long, very_long, answer, wrong, wrong_short, str(slip), rng)


def _mix(
    short: str, medium: str, long: str, very_long: str, answer: str, wrong: str, wrong_short: str, slip: str, rng
) -> list:
    """Candidates of graded length in varied formats, two of them wrong, in a seeded order."""
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


# ------------------------------------------------------------------------------ visual pool
def _visual_reasoning(scene: dict, slip: int = 0) -> tuple[list[str], list[str], int]:
    """(steps, re-check lines, final value) read off the scene; `slip` adds a misreading to the last step."""
    kind = scene["kind"]
    if kind == "count":
        color, total, steps, checks = scene["color"], 0, [], []
        slip_row = max(s["row"] for s in scene["shapes"] if s["color"] == color)  # a row with a target in it
        for row in range(scene["grid"]):
            found = [s["shape"] for s in scene["shapes"] if s["row"] == row and s["color"] == color]
            seen = len(found) + (slip if row == slip_row else 0)
            total += seen
            what = ", ".join(found) if found else "none"
            steps.append(f"Row {row + 1}: {seen} {color} (shapes: {what}); {total} so far.")
            checks.append(f"Row {row + 1} again: {seen}.")
        return steps, checks, total
    if kind == "bar":
        colors, values, step = scene["colors"], scene["values"], scene["step"]
        read = {i: values[i] for i in scene["ask"]}
        read[scene["ask"][-1]] += slip
        steps = [f"The gridlines are {step} apart."]
        for i, v in read.items():
            below = (v // step) * step
            where = f"exactly on the {v} gridline" if v == below else f"between {below} and {below + step}, at {v}"
            steps.append(f"The top of the {colors[i]} bar is {where}.")
        checks = [f"Reading the {colors[i]} bar again against the axis: {v}." for i, v in read.items()]
        if len(read) == 1:
            return steps, checks, next(iter(read.values()))
        (a, va), (b, vb) = read.items()
        steps.append(f"{va} - {vb} = {va - vb}.")
        return steps, checks, va - vb
    one, two = scene["segments"]
    lengths = [one["length"], two["length"] + slip]
    names = {"h": "horizontal", "v": "vertical"}
    steps = [
        f"Segment {k + 1} ({seg['color']}, {names[seg['orient']]}) spans {n} grid squares."
        for k, (seg, n) in enumerate(zip(scene["segments"], lengths))
    ]
    checks = [f"Counting the squares under segment {k + 1} again: {n}." for k, n in enumerate(lengths)]
    if scene["ask"] == "which":
        value = 1 if lengths[0] > lengths[1] else 2
        steps.append(f"{max(lengths)} > {min(lengths)}, so segment {value} is longer.")
    else:
        value = abs(lengths[0] - lengths[1])
        steps.append(f"{max(lengths)} - {min(lengths)} = {value}.")
    return steps, checks, value


def _visual_traces(scene: dict, answer: str, rng: random.Random) -> list:
    lines, checks, value = _visual_reasoning(scene)
    if str(value) != answer:
        raise AssertionError(f"builtin visual pool: the scene reads {value}, not {answer}")
    intro = "I look at the picture."
    done = f"So the answer is {answer}."
    short = f"The picture shows it: {answer}."
    medium = " ".join([intro, *lines, done])
    long = " ".join([intro, *lines, "Let me look again.", *checks, done])
    alt = "Hmm, small pictures are easy to misread, so I go over it once more. " + " ".join(lines)
    very_long = " ".join([intro, *lines, "Let me look again.", *checks, alt, f"Therefore the answer is {answer}."])
    # A misreading in the last step, carried to a wrong final answer.
    slip = rng.choice([-1, 1])
    if scene["kind"] == "length" and scene["ask"] == "which":  # misread segment 2 just past segment 1: flips it
        one, two = (s["length"] for s in scene["segments"])
        slip = one + 1 - two if one > two else one - 1 - two
    wrong_lines, _, wrong_value = _visual_reasoning(scene, slip)
    if str(wrong_value) == answer:
        raise AssertionError(f"builtin visual pool: the misreading of {scene} did not change the answer")
    slip = str(wrong_value)
    wrong = " ".join([intro, *wrong_lines, f"So the answer is {slip}."])
    return _mix(short, medium, long, very_long, answer, wrong, f"It shows {slip}.", slip, rng)


def generate_visual_pool(n: int, seed: int = 0) -> list[dict]:
    """n multimodal pool rows (schema above, plus "kind" and "images": [PIL image]), deterministic in (seed, index)."""
    from data_modules.builtin_visual import generate_problems as generate_visual

    rows = []
    for i, problem in enumerate(generate_visual(n, seed)):
        rng = random.Random(f"builtin-coldstart-visual/{seed}/{i}")
        k = rng.choices(range(PASS_RATE_N + 1), weights=_K_WEIGHTS[problem["level"]])[0]
        rows.append(
            {
                "id": f"builtin-coldstart-visual-{seed}-{i}",
                "source": f"visual-{problem['kind']}",
                "question": problem["question"],
                "answer": problem["answer"],
                "level": problem["level"],
                "kind": problem["kind"],
                "images": problem["images"],
                "k": k,
                "n": PASS_RATE_N,
                "traces": _visual_traces(problem["scene"], problem["answer"], rng),
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
