"""The AdaCS rules (docs/algorithm.md "AdaCS"): pass-rate brackets, anchor lengths, L_target(p), the choice
of one trace per problem, uniform bracket quotas, and trace normalization.

Pure functions of plain Python values: no Lightning, no tokenizer, no I/O. `data_modules/curation.py`
grades and measures the candidates, then applies these rules; the ColdstartDataModule caches the result.

A problem, as these functions see it, is a dict with "source" (str), "p" (pass rate in [0, 1]),
"bracket" (int), "multimodal" (bool) and "eligible": its candidate traces that may be selected,
each {"text", "correct", "tokens"} (tokens: length under the policy's tokenizer).

Rules (ours where the paper is silent, marked *):
1. p = k / n, k correct out of n reference samples (paper: n = 8), or a given p in [0, 1].
2. Per source, L(0) and L(1) are the medians of the eligible candidates' lengths over the problems
   with p = 0 and p = 1 exactly. * Fallback when a source has no such problem: the median over
   all sources ("global"); when no source has one, the median of the source's lowest (for L(0))
   or highest (for L(1)) pass-rate bracket present ("nearest_bracket"). The report says which.
   * The candidates that count are all eligible ones (correct and normalizable, or any with
   `allow_incorrect`), measured BEFORE the `max_length` cut: `curation.curate` passes the uncut
   lists, so a tight `max_length` does not bias the anchors low. Only the choice (rule 3) is
   restricted to candidates that fit.
3. L_target(p) = (1 − p)·L(0) + p·L(1); each problem keeps the eligible candidate whose length is
   closest to it (* ties: the shorter, then the earlier).
4. Problems are binned into brackets b = round(p · bracket_n) (k/n with n = bracket_n = 8) and
   `size` of them are sampled uniformly across the non-empty brackets (* water-filling: each
   bracket gets an equal share, a bracket with fewer problems gives its leftover to the others,
   and an indivisible remainder goes to the hardest brackets first). With `multimodal_fraction`
   set, round(size · fraction) places go to multimodal rows and the rest to text rows, each filled
   uniformly across brackets; * a modality that runs short hands its places to the other.

Normalization to `<think>…</think>` + `\\boxed{}` (* our rules):
- A trace that starts with `<think>` and has exactly one `<think>` and one `</think>` keeps its
  reasoning and its tail (the text after `</think>`). Any other trace is raw reasoning: stray
  think tags are removed and all of it goes inside the tags, with an empty tail.
- If the tail has no balanced `\\boxed{}`, one is appended to it: the trace's own last boxed answer
  if it has one, else the gold answer (only for traces flagged or graded correct; an incorrect
  trace without a boxed answer cannot be normalized and is dropped).
- Output: "<think>\\n{reasoning}\\n</think>\\n{tail}", which `grading.format_ok` accepts.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from ares_lit.grading import extract_boxed, format_ok

__all__ = [
    "anchor_lengths",
    "bracket_of",
    "closest_trace",
    "normalize_trace",
    "pass_rate",
    "sample_problems",
    "target_length",
    "uniform_quotas",
]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def normalize_trace(text: str, fallback_answer: str | None = None) -> str | None:
    """The trace as "<think>\\n…\\n</think>\\n… \\boxed{…}" (module docstring), or None if impossible."""
    body = text.strip()
    if (
        body.startswith(_THINK_OPEN)
        and body.count(_THINK_OPEN) == 1
        and body.count(_THINK_CLOSE) == 1
    ):
        end = body.index(_THINK_CLOSE)
        reasoning, tail = body[len(_THINK_OPEN) : end].strip(), body[end + len(_THINK_CLOSE) :].strip()
    else:
        reasoning, tail = body.replace(_THINK_OPEN, " ").replace(_THINK_CLOSE, " ").strip(), ""
    if extract_boxed(tail) is None:
        final = extract_boxed(reasoning)
        final = final if final is not None else fallback_answer
        if final is None:
            return None
        tail = f"{tail}\n\\boxed{{{final}}}" if tail else f"\\boxed{{{final}}}"
    out = f"{_THINK_OPEN}\n{reasoning}\n{_THINK_CLOSE}\n{tail}"
    return out if format_ok(out) else None


def pass_rate(row: dict, k_key: str, n_key: str, p_key: str) -> float | None:
    """p = k / n (preferred when either column is present) or the row's p; None when missing or out of range."""
    k, n = row.get(k_key), row.get(n_key)
    if k is not None or n is not None:
        ints = all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in (k, n))
        if not ints or not 1 <= n or not 0 <= k <= n:
            return None
        return float(k) / float(n)
    p = row.get(p_key)
    if isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0.0 <= p <= 1.0:
        return float(p)
    return None


def bracket_of(p: float, bracket_n: int) -> int:
    """The pass-rate bracket b = round(p · bracket_n) (rule 4), 0 = never solved."""
    return int(round(p * bracket_n))


def target_length(p: float, l0: float, l1: float) -> float:
    """L_target(p) = (1 − p)·L(0) + p·L(1) (docs/algorithm.md "AdaCS")."""
    return (1.0 - p) * l0 + p * l1


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def anchor_lengths(problems: list[dict]) -> dict[str, dict]:
    """Per source (sorted): {"L0", "L0_from", "L1", "L1_from"}, the anchor lengths and where each came from (rule 2).

    `problems` carry, in "eligible", ALL their eligible candidates, before any `max_length` cut.
    """

    def lengths(probs, p):
        return [c["tokens"] for q in probs if q["p"] == p for c in q["eligible"]]

    global_ = {"L0": _median(lengths(problems, 0.0)), "L1": _median(lengths(problems, 1.0))}
    out = {}
    for source in sorted({q["source"] for q in problems}):
        probs = [q for q in problems if q["source"] == source]
        entry = {}
        for key, p, pick in (("L0", 0.0, min), ("L1", 1.0, max)):
            value, origin = _median(lengths(probs, p)), "source"
            if value is None and global_[key] is not None:
                value, origin = global_[key], "global"
            if value is None:
                edge = pick(q["p"] for q in probs)
                value, origin = _median(lengths(probs, edge)), f"nearest_bracket(p={edge:.3f})"
            entry[key], entry[f"{key}_from"] = value, origin
        out[source] = entry
    return out


def closest_trace(eligible: list[dict], target: float) -> dict:
    """The candidate whose length is closest to L_target (rule 3); ties: the shorter, then the earlier."""
    return min(eligible, key=lambda c: (abs(c["tokens"] - target), c["tokens"]))


def uniform_quotas(counts: dict[int, int], total: int) -> dict[int, int]:
    """Places per bracket: equal shares, capped by what each bracket has (rule 4, water-filling)."""
    quotas = dict.fromkeys(counts, 0)
    remaining = min(total, sum(counts.values()))
    open_ = sorted(b for b, c in counts.items() if c > 0)
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:  # fewer places than brackets: the hardest brackets first
            for b in open_[:remaining]:
                quotas[b] += 1
            break
        for b in open_:
            add = min(share, counts[b] - quotas[b])
            quotas[b] += add
            remaining -= add
        open_ = [b for b in open_ if quotas[b] < counts[b]]
    return quotas


def sample_problems(problems: list[dict], size: int, multimodal_fraction: float | None, seed: int) -> list[dict]:
    """`size` problems (all if fewer), uniform across brackets, with the multimodal share (rule 4).

    Seeded by (seed, 0, 4). The result lists the groups in turn (text then multimodal, or all
    problems when multimodal_fraction is None), each bracket by bracket in the problems' order.
    """
    rng = np.random.default_rng([seed, 0, 4])
    size = min(size, len(problems))
    groups = {"text": [q for q in problems if not q["multimodal"]], "multimodal": [q for q in problems if q["multimodal"]]}
    if multimodal_fraction is None:
        wanted = {"all": size}
        groups = {"all": problems}
    else:
        mm = min(int(round(size * multimodal_fraction)), len(groups["multimodal"]))
        text = min(size - mm, len(groups["text"]))
        mm = min(size - text, len(groups["multimodal"]))  # a short modality hands its places over
        wanted = {"text": text, "multimodal": mm}
    chosen = []
    for group, want in wanted.items():
        by_bracket: dict[int, list[dict]] = {}
        for q in groups[group]:
            by_bracket.setdefault(q["bracket"], []).append(q)
        quotas = uniform_quotas({b: len(v) for b, v in by_bracket.items()}, want)
        for b in sorted(by_bracket):
            picks = rng.permutation(len(by_bracket[b]))[: quotas[b]]
            chosen.extend(by_bracket[b][i] for i in sorted(picks.tolist()))
    return chosen
