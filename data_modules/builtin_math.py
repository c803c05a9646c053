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

Train and test splits (`split="train"` / `"test"`, `path: builtin:math:test`). The question space
is partitioned by a stable hash: a question is in the test split iff
`int(sha1(question).hexdigest(), 16) % 5 == 0` (`split_of`). A train problem that draws a
test-split question keeps drawing from its own rng until it gets a train-split one, and a test
problem draws until it gets a test-split question not already in the set, so no train problem of
any seed or size can equal a test problem: the split is disjoint by construction, not by luck.
Most train problems are the ones drawn before the split existed. The test split has distinct
problems; `TEST_SIZE` = 48 by default, because the easy level holds only 16 test-split questions
(of 81; `held_out_count`), so 16 per level. Asking for more test problems of a level than exist
is a ValueError. Partitioning is by text: "2 + 3" and "3 + 2" are different questions.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

__all__ = ["LEVELS", "SOURCE", "SPLITS", "TEST_SIZE", "generate_problems", "held_out_count", "split_of", "write_jsonl"]

LEVELS = ("easy", "medium", "hard")
SPLITS = ("train", "test")
SOURCE = "builtin:math"
TEST_SIZE = 48  # 16 per level: all the easy level's test-split questions (held_out_count("easy") == 16)
_TEST_MODULUS = 5  # one question in five is held out


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


def _expressions(level: str) -> Iterator[str]:
    """Every expression a level's maker can draw (the level's whole question space)."""
    if level == "easy":
        yield from (f"{a} + {b}" for a in range(1, 10) for b in range(1, 10))
    elif level == "medium":
        yield from (f"{a} + {b}" for a in range(10, 100) for b in range(10, 100))
        yield from (f"{a} * {b}" for a in range(2, 10) for b in range(2, 10))
    else:
        for a in range(2, 13):
            for b in range(2, 13):
                for c in range(2, 13):
                    yield from (f"{a} * {b} - {c}", f"{a} - {b} * {c}", f"({a} + {b}) * {c}", f"{a} - {b} - {c}")


def _split_of_question(question: str) -> str:
    return "test" if int(hashlib.sha1(question.encode("utf-8")).hexdigest(), 16) % _TEST_MODULUS == 0 else "train"


def split_of(problem: dict) -> str:
    """The split of a problem: "test" iff int(sha1(question).hexdigest(), 16) % 5 == 0, else "train"."""
    return _split_of_question(problem["question"])


@cache
def held_out_count(level: str) -> int:
    """Number of distinct test-split questions of a level: the most test problems it can hold."""
    return sum(_split_of_question(f"What is {expr}?") == "test" for expr in set(_expressions(level)))


def _check_levels(levels: Sequence[str]) -> tuple[str, ...]:
    levels = tuple(levels)
    unknown = [lv for lv in levels if lv not in _MAKERS]
    if not levels or unknown:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}; got {levels!r}")
    return levels


def generate_problems(n: int, seed: int = 0, levels: Sequence[str] = LEVELS, split: str = "train") -> list[dict]:
    """n problems of a split as dicts with keys id, question, answer (a string), level, source.

    Deterministic in (seed, index): each problem draws from its own `random.Random` seeded with a
    string, which does not depend on PYTHONHASHSEED, until its question is in `split` (and, for
    the test split, not already drawn). Ids are f"builtin-math-{seed}-{i}" (train) and
    f"builtin-math-test-{seed}-{i}" (test).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    levels = _check_levels(levels)
    test = split == "test"
    if test:
        wanted = Counter(levels[i % len(levels)] for i in range(n))
        for level, count in wanted.items():
            if count > held_out_count(level):
                raise ValueError(
                    f"builtin:math has only {held_out_count(level)} distinct {level!r} test problems; {n} test "
                    f"problems over levels {levels} need {count}. Ask for at most TEST_SIZE={TEST_SIZE}"
                )
    prefix = "builtin-math-test" if test else "builtin-math"
    taken: set[str] = set()  # test problems are distinct; train problems may repeat
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = random.Random(f"{prefix}/{seed}/{i}")
        while True:  # the same rng keeps drawing, so problem i still depends only on (seed, i)
            expr, value = _MAKERS[level](rng)
            question = f"What is {expr}?"
            if _split_of_question(question) == split and question not in taken:
                break
        if test:
            taken.add(question)
        problems.append(
            {"id": f"{prefix}-{seed}-{i}", "question": question, "answer": str(value), "level": level, "source": SOURCE}
        )
    return problems


def write_jsonl(
    path: str | Path, n: int, seed: int = 0, levels: Sequence[str] = LEVELS, split: str = "train"
) -> Path:
    """Materialise `generate_problems(n, seed, levels, split)` as JSON lines at path; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate_problems(n, seed, levels, split):
            f.write(json.dumps(row) + "\n")
    return path
