"""A bundled, offline task whose difficulty is the number of reasoning steps (`path: builtin:chain`).

Chained arithmetic (issue #24): "Start at 7, add 5, subtract 3, then add 8. What is the result?"
The answer is only at the end, so a harder problem genuinely needs more steps to solve. Chosen
over `reasoning-gym`'s generators because it needs no new runtime dependency, it is exactly
controllable (difficulty = number of operations, nothing else changes) and every step is
checkable, which the cold-start traces use. Levels (`LEVEL_OPS`):

- easy:   1-2 operations
- medium: 3-4 operations
- hard:   6-8 operations

Operations are "add k" / "subtract k" with k in 1..9 from a start in 1..9; a subtraction is only
drawn when the running value stays >= 0, so every intermediate value is a small non-negative
integer (at most 9 + 8 * 9 = 81). Answers are integers as strings, which math-verify parses.

Problems are generated deterministically from (seed, index) like `builtin_math`: problem i is the
same whatever n is. Levels come in turn (index i has level LEVELS[i % 3]).

Splits (`builtin:chain` for training, `builtin:chain:test` held out): a question is in the test
split iff int(sha1(question), 16) % 5 == 0 (`split_of`), and each problem's rng draws until it
lands in its split (test problems are also distinct), so no train problem of any seed or size
equals a test problem. `TEST_SIZE` = 480, 160 per level: a level's accuracy then has a standard
error of at most sqrt(0.25 / 160) = 0.040 from one sample per problem.

The cold-start pool over the training split (`path: builtin:chain` in the ColdstartDataModule) is
`generate_pool`: per problem three correct trace styles whose lengths grow with the number of
steps (terse: one line; steps: one numbered step per line; checked: one step per line, then every step
undone back to the start), one or two incorrect traces (a slip in one step carried to a wrong
boxed answer), all in `<think>...</think>` + `\\boxed{}` form so that no answer fallback is needed.
Pass rates k of `PASS_RATE_N` = 8 come from a documented difficulty model (`pass_probability`):
the embedded 135M base model solves almost none of these problems without training (docs/ares.md
measures it), so its measured pass rates would put every level at p = 0. The model is
p = 0.93 ** (operations ** 1.5), and k ~ Binomial(8, p) drawn from the row's seeded rng:
1 op: p = 0.93, 2: 0.81, 3: 0.69, 4: 0.56, 6: 0.34, 7: 0.26, 8: 0.19 (mean k: 7.4 ... 1.5). Real pass
rates from `python -m ares_lit.tools.pass_rate --pool builtin:chain` replace it for a stronger model.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "LEVELS",
    "LEVEL_OPS",
    "PASS_RATE_N",
    "SOURCE",
    "TEST_SIZE",
    "generate_pool",
    "generate_problems",
    "pass_probability",
    "split_of",
    "trace_styles",
    "write_jsonl",
]

LEVELS = ("easy", "medium", "hard")
LEVEL_OPS = {"easy": (1, 2), "medium": (3, 4), "hard": (6, 7, 8)}
SPLITS = ("train", "test")
SOURCE = "builtin:chain"
TEST_SIZE = 480  # 160 per level: standard error <= 0.040 per level from one sample per problem
PASS_RATE_N = 8
_TEST_MODULUS = 5
_WORDS = {"+": "add", "-": "subtract"}


def _split_of_question(question: str) -> str:
    return "test" if int(hashlib.sha1(question.encode("utf-8")).hexdigest(), 16) % _TEST_MODULUS == 0 else "train"


def split_of(problem: dict) -> str:
    """The split of a problem: "test" iff int(sha1(question).hexdigest(), 16) % 5 == 0, else "train"."""
    return _split_of_question(problem["question"])


def _draw(rng: random.Random, level: str) -> tuple[int, list[tuple[str, int]]]:
    """A start value and a list of (op, operand) with every running value >= 0."""
    n_ops = rng.choice(LEVEL_OPS[level])
    value = start = rng.randint(1, 9)
    ops = []
    for _ in range(n_ops):
        k = rng.randint(1, 9)
        op = "-" if (k <= value and rng.random() < 0.5) else "+"
        value = value + k if op == "+" else value - k
        ops.append((op, k))
    return start, ops


def _question(start: int, ops: list[tuple[str, int]]) -> str:
    parts = [f"{_WORDS[op]} {k}" for op, k in ops]
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f", then {parts[-1]}"
    return f"Start at {start}, {said}. What is the result?"


def _values(start: int, ops: list[tuple[str, int]]) -> list[int]:
    values = [start]
    for op, k in ops:
        values.append(values[-1] + k if op == "+" else values[-1] - k)
    return values


def generate_problems(n: int, seed: int = 0, levels: Sequence[str] = LEVELS, split: str = "train") -> list[dict]:
    """n problems of a split as dicts: id, question, answer (a string), level, source, ops (the count),
    start and steps ([[op, operand], ...], used by the cold-start traces). Deterministic in (seed, index)."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    levels = tuple(levels)
    if not levels or any(lv not in LEVEL_OPS for lv in levels):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}; got {levels!r}")
    test = split == "test"
    prefix = "builtin-chain-test" if test else "builtin-chain"
    taken: set[str] = set()
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = random.Random(f"{prefix}/{seed}/{i}")
        for _ in range(10_000):  # the same rng keeps drawing, so problem i depends only on (seed, i)
            start, ops = _draw(rng, level)
            question = _question(start, ops)
            if _split_of_question(question) == split and question not in taken:
                break
        else:  # pragma: no cover - the question spaces hold thousands of test problems per level
            raise ValueError(f"builtin:chain found no new {split} problem of level {level!r}")
        if test:
            taken.add(question)
        problems.append({
            "id": f"{prefix}-{seed}-{i}", "question": question, "answer": str(_values(start, ops)[-1]),
            "level": level, "source": SOURCE, "ops": len(ops), "start": start, "steps": [list(s) for s in ops],
        })  # fmt: skip
    return problems


def pass_probability(n_ops: int) -> float:
    """The difficulty model of the pool's pass rates: p = 0.93 ** (n_ops ** 1.5) (module docstring)."""
    return 0.93 ** (n_ops**1.5)


def _lines(values: list[int], ops: list[tuple[str, int]]) -> list[str]:
    return [f"Step {j}: {a} {op} {k} = {b}" for j, (a, (op, k), b) in enumerate(zip(values, ops, values[1:]), 1)]


def trace_styles(problem: dict) -> dict[str, str]:
    """The three correct reasoning styles of a problem (without think tags or box), shortest first."""
    start, ops = problem["start"], [tuple(s) for s in problem["steps"]]
    values = _values(start, ops)
    terse = f"{start} " + " ".join(f"{op} {k}" for op, k in ops) + f" = {values[-1]}"
    steps = "\n".join(_lines(values, ops))
    back = [f"{b} {'-' if op == '+' else '+'} {k} = {a}" for a, (op, k), b in zip(values, ops, values[1:])][::-1]
    checked = steps + "\nCheck by undoing each step:\n" + "\n".join(back) + f"\nBack to {start}, so {values[-1]} is right."
    return {"terse": terse, "steps": steps, "checked": checked}


def _wrapped(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\\boxed{{{answer}}}"


def _wrong(problem: dict, rng: random.Random) -> tuple[str, str]:
    """(a step-per-line trace with one slip carried to the end, its wrong answer)."""
    start, ops = problem["start"], [tuple(s) for s in problem["steps"]]
    at = rng.randrange(len(ops))
    values = [start]
    for j, (op, k) in enumerate(ops):
        v = values[-1] + k if op == "+" else values[-1] - k
        values.append(v + rng.choice([-2, -1, 1, 2]) if j == at else v)
    wrong = str(values[-1])
    return "\n".join(_lines(values, ops)), wrong


def generate_pool(n: int, seed: int = 0) -> list[dict]:
    """n cold-start pool rows over the training split (ColdstartDataModule schema), deterministic in (seed, index)."""
    rows = []
    for i, problem in enumerate(generate_problems(n, seed)):
        rng = random.Random(f"builtin-chain-pool/{seed}/{i}")
        p = pass_probability(problem["ops"])
        k = sum(rng.random() < p for _ in range(PASS_RATE_N))
        styles = trace_styles(problem)
        traces = [_wrapped(text, problem["answer"]) for text in styles.values()]
        wrong, slip = _wrong(problem, rng)
        if slip != problem["answer"]:
            traces.append({"text": _wrapped(wrong, slip), "correct": False})
        if rng.random() < 0.5:
            traces.append(_wrapped(styles["terse"].rsplit("=", 1)[0] + f"= {slip}", slip))  # found by grading
        rng.shuffle(traces)
        rows.append({
            "id": f"builtin-chain-pool-{seed}-{i}", "source": SOURCE, "question": problem["question"],
            "answer": problem["answer"], "level": problem["level"], "ops": problem["ops"], "k": k, "n": PASS_RATE_N,
            "traces": traces,
        })  # fmt: skip
    return rows


def write_jsonl(path: str | Path, n: int, seed: int = 0, split: str = "train") -> Path:
    """Materialise `generate_problems(n, seed, split=split)` as JSON lines at path; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_problems(n, seed, split=split):
            f.write(json.dumps(row) + "\n")
    return path
