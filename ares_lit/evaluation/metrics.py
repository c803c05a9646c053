"""Evaluation metrics over graded samples: avg@n, unbiased pass@k, maj@k, lengths, rates.

Pure Python (no torch, no I/O), so every definition can be checked on hand-built rows. A *row* is
one sample of one problem, a dict with at least `problem` (a hashable problem key), `sample`
(0..n-1), `correct` (bool), `answer` (the extracted answer or None), `n_tokens`,
`finish_reason`, `boxed` (whether the response had a `\\boxed{}` answer) and `grader_timeout`.

Definitions (each over the problems of a group, every problem with the same n samples):
- avg@n: mean accuracy over all n·P samples; its standard error is the sample standard deviation
  (ddof=1) of the P per-problem accuracies divided by √P (0 for a single problem).
- pass@k (Chen et al. 2021, unbiased): per problem with c correct of n, 1 − C(n−c, k)/C(n, k),
  averaged over problems; pass@1 = avg@n and pass@n = the share of problems with any correct.
- maj@k: per problem, the most frequent non-empty extracted answer among samples 0..k−1 (ties go
  to the answer seen first); the problem counts as solved when that answer's samples are correct.
  Answers are compared as whitespace-stripped strings (the grader decides correctness, not the vote).
- lengths in response tokens: mean and median over all samples, and means over correct and over
  incorrect samples (None when there are none).
- truncation_rate: share of samples with finish reason "length"; no_answer_rate: share without a
  `\\boxed{}` answer; grader_timeouts: samples whose grading was cut off (counted as incorrect).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["pass_at_k", "maj_vote_correct", "metric_block", "summarize", "valid_ks", "METRIC_KEYS"]

# Public, stable keys of a metric block (pass_at_<k> / maj_at_<k> follow for each k <= n).
METRIC_KEYS = (
    "n_problems",
    "n_samples",
    "avg_at_n",
    "avg_at_n_stderr",
    "mean_length",
    "median_length",
    "mean_length_correct",
    "mean_length_incorrect",
    "truncation_rate",
    "no_answer_rate",
    "grader_timeouts",
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples: 1 − C(n−c, k)/C(n, k).

    Computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which is exact in rational arithmetic and stable
    in floats (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_vote_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer (ties: first seen) of these samples is correct; False if none answered."""
    keys = [a.strip() if isinstance(a, str) and a.strip() else None for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    top = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == top)
    return any(c for k, c in zip(keys, correct) if k == winner)


def valid_ks(ks: Iterable[int], n: int) -> list[int]:
    """The ks of a report: sorted, distinct, each in [1, n]."""
    return sorted({int(k) for k in ks if 1 <= int(k) <= n})


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def metric_block(rows: Sequence[dict], ks: Iterable[int]) -> dict:
    """The metric block (METRIC_KEYS, pass_at_<k>, maj_at_<k>) of a group of rows."""
    by_problem: dict = defaultdict(list)
    for r in rows:
        by_problem[r["problem"]].append(r)
    problems = [sorted(v, key=lambda r: r["sample"]) for v in by_problem.values()]
    sizes = {len(p) for p in problems}
    if len(sizes) > 1:
        raise ValueError(f"every problem needs the same number of samples; got sizes {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    n_rows = len(rows)
    per_problem = [sum(bool(r["correct"]) for r in p) / n for p in problems] if n else []
    block: dict = {"n_problems": len(problems), "n_samples": n_rows}
    block["avg_at_n"] = _mean(per_problem)
    if len(per_problem) > 1:
        block["avg_at_n_stderr"] = statistics.stdev(per_problem) / math.sqrt(len(per_problem))
    else:
        block["avg_at_n_stderr"] = 0.0 if per_problem else None
    for k in valid_ks(ks, n):
        block[f"pass_at_{k}"] = _mean([pass_at_k(n, sum(bool(r["correct"]) for r in p), k) for p in problems])
        block[f"maj_at_{k}"] = _mean(
            [float(maj_vote_correct([r["answer"] for r in p[:k]], [bool(r["correct"]) for r in p[:k]])) for p in problems]
        )
    lengths = [float(r["n_tokens"]) for r in rows]
    block["mean_length"] = _mean(lengths)
    block["median_length"] = float(statistics.median(lengths)) if lengths else None
    block["mean_length_correct"] = _mean([float(r["n_tokens"]) for r in rows if r["correct"]])
    block["mean_length_incorrect"] = _mean([float(r["n_tokens"]) for r in rows if not r["correct"]])
    block["truncation_rate"] = _mean([float(r["finish_reason"] == "length") for r in rows])
    block["no_answer_rate"] = _mean([float(not r["boxed"]) for r in rows])
    block["grader_timeouts"] = sum(int(bool(r.get("grader_timeout"))) for r in rows)
    return block


def summarize(rows: Sequence[dict], ks: Iterable[int]) -> dict:
    """{"overall": block, "groups": {"source": {s: block}, "level": {l: block}, "source/level": {"s/l": block}}}.

    Rows need `source` (str) and `level` (str or None); level groups only exist for rows that have one.
    """
    ks = list(ks)
    by_source: dict = defaultdict(list)
    by_level: dict = defaultdict(list)
    by_both: dict = defaultdict(list)
    for r in rows:
        by_source[str(r["source"])].append(r)
        if r.get("level") is not None:
            by_level[str(r["level"])].append(r)
            by_both[f"{r['source']}/{r['level']}"].append(r)
    return {
        "overall": metric_block(rows, ks),
        "groups": {
            "source": {k: metric_block(v, ks) for k, v in sorted(by_source.items())},
            "level": {k: metric_block(v, ks) for k, v in _level_order(by_level)},
            "source/level": {k: metric_block(v, ks) for k, v in _level_order(by_both)},
        },
    }


_LEVEL_RANK = {"easy": 0, "medium": 1, "hard": 2}


def _level_order(groups: dict) -> list:
    """Groups sorted with easy < medium < hard first (then by name), so tables read by difficulty."""
    def key(item):
        name = item[0]
        prefix, _, level = name.rpartition("/")
        return (prefix, _LEVEL_RANK.get(level, 3), level)

    return sorted(groups.items(), key=key)
