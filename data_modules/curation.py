"""Cold-start curation (docs/algorithm.md "AdaCS"): cleaned pool problems in, the curated set and its report out.

The ColdstartDataModule reads and cleans the pool and caches what `curate` returns
(data_modules/coldstart.py); the selection rules are in data_modules/adacs.py. `curate` does, in order:
1. Every candidate is graded against the answer (unless it carries "correct") and normalized
   (`adacs.normalize_trace`). Only correct candidates are eligible, unless `allow_incorrect`.
2. Prompts and candidates are measured in tokens of the policy's own tokenizer; each image
   placeholder of a prompt counts as its image's vision tokens. * Candidates that cannot fit
   `max_length` (prompt + trace + eos) are not eligible either. A problem left without any is
   dropped: too_long if it had eligible candidates before this cut, else no_correct_trace.
3. The AdaCS rules: L(0), L(1) per source, taken over the eligible candidates of step 1 (correct
   and normalizable, or all with `allow_incorrect`) as measured BEFORE the `max_length` cut of
   step 2, so a tight `max_length` does not bias them low (the fallbacks, too, see the uncut
   candidates); then `size` problems sampled uniformly across brackets, and for each the eligible
   trace that fits `max_length` closest to L_target(p).

No Lightning here; the only outside work is grading (`ares_lit.grading.Grader`) and tokenizing.
"""

from __future__ import annotations

import logging
from typing import Any

from ares_lit.grading import Grader
from ares_lit.prompting import build_prompt_text
from data_modules.adacs import anchor_lengths, closest_trace, normalize_trace, sample_problems, target_length
from data_modules.curation_report import build_report

__all__ = ["curate", "token_ids"]

log = logging.getLogger(__name__)


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _grade(problems: list[dict], allow_incorrect: bool, grade_timeout: float) -> dict[str, int]:
    """Step 1: replace each problem's "candidates" by "eligible" [{"text", "correct"}]; candidate counts."""
    stats = {"total": 0, "correct": 0, "incorrect": 0, "unnormalizable": 0, "too_long": 0}
    with Grader(timeout=grade_timeout) as grader:
        for prob in problems:
            prob["eligible"] = []
            for text, flag in prob.pop("candidates"):
                stats["total"] += 1
                correct = flag if flag is not None else grader.grade(text, prob["answer"])
                stats["correct" if correct else "incorrect"] += 1
                if not (correct or allow_incorrect):
                    continue
                normal = normalize_trace(text, prob["answer"] if correct else None)
                if normal is None:
                    stats["unnormalizable"] += 1
                    continue
                prob["eligible"].append({"text": normal, "correct": bool(correct)})
    return stats


def curate(
    problems: list[dict],
    drops: dict[str, int],
    *,
    pool: str,
    rows: int,
    tokenizer: Any,
    processor: Any,
    prompt_suffix: str,
    system_prompt: str | None,
    max_length: int,
    allow_incorrect: bool,
    grade_timeout: float,
    size: int,
    bracket_n: int,
    multimodal_fraction: float | None,
    seed: int,
) -> tuple[list[dict], dict]:
    """The curated records and the curation report (`curation_report.build_report`).

    Args:
        problems: cleaned pool rows: {"id", "source", "question", "answer", "p", "bracket",
            "multimodal", "candidates": [(text, correct flag or None)]}, plus the raw "images" of
            image rows and, when `processor` is set, "sizes" (each image's width and height).
        drops: drop counts by reason so far; updated in place (malformed, no_correct_trace, too_long).
        pool: the pool's display name; rows: its row count, unreadable lines included.
        processor: the policy's `VisionProcessor`, or None for text-only curation.
        the rest: the ColdstartDataModule settings of the same names.

    Returns:
        records: one per selected problem, in `sample_problems` order: the problem's id, source,
            question, answer, p, bracket, multimodal (and images), plus response (the normalized
            trace), response_correct, response_tokens, target_tokens and candidate_tokens.
        report: see `curation_report.build_report`.
    """
    candidates = _grade(problems, allow_incorrect, grade_timeout)
    prompts = [
        build_prompt_text(tokenizer, p["question"], prompt_suffix, system_prompt, len(p.get("images", [])))
        for p in problems
    ]
    matched, prompt_lens = [], []
    for prob, ids in zip(problems, token_ids(tokenizer, prompts)):
        if processor is not None:  # each image placeholder counts as the image's vision tokens
            try:
                ids = processor.expand(ids, prob.pop("sizes"))
            except ValueError:  # the question itself holds image placeholders
                drops["malformed"] += 1
                continue
        matched.append(prob)
        prompt_lens.append(len(ids))
    problems = matched
    texts = [c["text"] for p in problems for c in p["eligible"]]
    lengths = iter(len(ids) for ids in token_ids(tokenizer, texts))
    usable, measured = [], []
    for prob, plen in zip(problems, prompt_lens):
        had = bool(prob["eligible"])
        for c in prob["eligible"]:
            c["tokens"] = next(lengths)
        if had:  # the anchors see every eligible candidate, before the max_length cut
            measured.append({"source": prob["source"], "p": prob["p"], "eligible": list(prob["eligible"])})
        fits = [c for c in prob["eligible"] if plen + c["tokens"] + 1 <= max_length]
        candidates["too_long"] += len(prob["eligible"]) - len(fits)
        prob["eligible"] = fits
        if fits:
            usable.append(prob)
        else:
            drops["too_long" if had else "no_correct_trace"] += 1
    if not usable:
        raise ValueError(
            f"no usable problems in {pool}: dropped {drops} of {rows} rows. Each row needs a question, an "
            "answer, a pass rate (k and n, or p) and at least one correct trace that fits data.max_length; check "
            "the data.*_key settings"
        )
    if sum(drops.values()):
        log.warning("%s: dropped %d of %d rows %s", pool, sum(drops.values()), rows, drops)
    # L(0), L(1) over all eligible candidates, before the max_length cut (a tight max_length would
    # otherwise bias them low); reported for the sources that still have a usable problem.
    kept = {q["source"] for q in usable}
    anchors = {s: a for s, a in anchor_lengths(measured).items() if s in kept}
    records = []
    for prob in sample_problems(usable, size, multimodal_fraction, seed):
        src = anchors[prob["source"]]
        target = target_length(prob["p"], src["L0"], src["L1"])
        best = closest_trace(prob["eligible"], target)
        record = {k: prob[k] for k in ("id", "source", "question", "answer", "p", "bracket", "multimodal")}
        if "images" in prob:
            record["images"] = prob["images"]
        record.update(
            response=best["text"],
            response_correct=best["correct"],
            response_tokens=best["tokens"],
            target_tokens=target,
            candidate_tokens=[c["tokens"] for c in prob["eligible"]],
        )
        records.append(record)
    report = build_report(pool, rows, drops, candidates, usable, records, anchors, bracket_n)
    return records, report
