"""A bundled, offline, difficulty-graded arithmetic set (`path: builtin:math`).

Nothing is downloaded or committed: problems are generated deterministically from (seed, index),
so problem i is the same whatever n is (a larger set extends a smaller one). Three levels, in
turn (index i has level levels[i % len(levels)]), so any n is balanced to within one problem:

- easy:   one step, single-digit addition                          "What is 3 + 5?"
- medium: one step, two-digit addition or single-digit product     "What is 43 + 91?", "What is 7 * 8?"
- hard:   two steps with subtraction/multiplication/parentheses    "What is 7 * 8 - 11?"

The levels are graded for the embedded 135M default model, which solves single-digit sums some of
the time and multi-step problems rarely: every bucket then sees both right and wrong answers.

Answers are plain integers as strings ("19", "-17"), which math-verify parses. It is a mechanics
set for smoke runs and tests on tiny models, not a benchmark.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LEVELS", "generate_problems", "write_jsonl"]

LEVELS = ("easy", "medium", "hard")


def _easy(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"{a} + {b}", a + b


def _medium(rng: random.Random) -> tuple[str, int]:
    if rng.randrange(2) == 0:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{a} + {b}", a + b
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{a} * {b}", a * b


def _hard(rng: random.Random) -> tuple[str, int]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 12)
    form = rng.randrange(4)
    if form == 0:
        return f"{a} * {b} - {c}", a * b - c
    if form == 1:
        return f"{a} - {b} * {c}", a - b * c
    if form == 2:
        return f"({a} + {b}) * {c}", (a + b) * c
    return f"{a} - {b} - {c}", a - b - c


_MAKERS = {"easy": _easy, "medium": _medium, "hard": _hard}


def generate_problems(n: int, seed: int = 0, levels: Sequence[str] = LEVELS) -> list[dict]:
    """n problems as dicts with keys id, question, answer (a string), level.

    Deterministic in (seed, index): each problem draws from its own `random.Random` seeded with a
    string, which does not depend on PYTHONHASHSEED. Ids are f"builtin-math-{seed}-{i}".
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    levels = tuple(levels)
    unknown = [lv for lv in levels if lv not in _MAKERS]
    if not levels or unknown:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}; got {levels!r}")
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        expr, value = _MAKERS[level](random.Random(f"builtin-math/{seed}/{i}"))
        problems.append(
            {"id": f"builtin-math-{seed}-{i}", "question": f"What is {expr}?", "answer": str(value), "level": level}
        )
    return problems


def write_jsonl(path: str | Path, n: int, seed: int = 0, levels: Sequence[str] = LEVELS) -> Path:
    """Materialise `generate_problems(n, seed, levels)` as JSON lines at path; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_problems(n, seed, levels):
            f.write(json.dumps(row) + "\n")
    return path
