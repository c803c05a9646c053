"""Sample, grade, bucket and filter prompt groups: the first half of an AEPO step.

docs/algorithm.md "Online difficulty buckets" and "Group filter (DAPO dynamic sampling)". Plain code, no
Lightning. The collaborators are passed in:

- `engine`: a `RolloutEngine` (vLLM, HF generate, or a scripted one in tests);
- `grade(texts, golds) -> (accuracy, format)`: per response, e.g. `grade_responses` bound to a
  math-verify `Grader` or a user `reward_fn`;
- `tracker`: has `assign(prompt_ids, group_accuracy) -> buckets` (the DataModule's
  `DifficultyTracker`);
- `refill(k) -> prompts`: k fresh prompt records (the DataModule's `refill_prompts`).

Each round runs sample → grade → buckets → filter, in that order, so a prompt's bucket comes from
its group accuracy alone, before any shaped reward exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ares_lit.core import informative_groups
from ares_lit.distributed import world_max
from ares_lit.experience.config import ExperienceConfig
from ares_lit.experience.seeds import StepSeeds
from ares_lit.rollout.base import Completion, RolloutEngine

__all__ = [
    "PromptGroup",
    "CollectedGroups",
    "sample_groups",
    "grade_responses",
    "grade_groups",
    "assign_group_buckets",
    "drop_uninformative",
    "collect_groups",
    "timer",
]

Grade = Callable[[list[str], list[str]], tuple[list[float], list[float]]]
PhaseReport = Callable[..., None]


def _no_report(phase: str, done: int | None = None, total: int | None = None) -> None:
    pass


@contextmanager
def timer(timings: dict, key: str):
    """Add the wall time of the block to `timings[key]` (the `time/*` scalars)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


@dataclass
class PromptGroup:
    """One prompt and its G sampled responses, filled in stage by stage."""

    prompt: dict
    """The DataModule's record: "id", "prompt_ids", "answer"; optionally "question", "images"."""
    completions: list[Completion]
    """The G responses, in the engine's order."""
    accuracy: torch.Tensor | None = None
    """[G] fp32 R_acc per response (set by `grade_groups`)."""
    format: torch.Tensor | None = None
    """[G] fp32 R_format per response (set by `grade_groups`)."""
    bucket: int | None = None
    """0 easy / 1 medium / 2 hard, from this group's accuracy (set by `assign_group_buckets`)."""
    inherited: list[int] | None = None
    """Branching: tokens each response took over from its parent (0 for a root); None: all roots."""
    parents: list[int] | None = None
    """Branching: index of each response's parent in this group (-1 for a root)."""
    scores: list | None = None
    """Branching: per response, the trainer's (old log-probs, entropy) [len] from phase 1, or None
    (children and fresh roots are scored with the batch)."""


@dataclass
class CollectedGroups:
    """What `collect_groups` kept, and how hard it had to try."""

    groups: list[PromptGroup]
    """Groups with signal, in the order they were sampled, at most one per requested prompt."""
    dropped: int
    """Groups the filter dropped (all right or all wrong), over every round."""
    refills: int
    """Refill rounds run."""
    generated_tokens: int = 0
    """Tokens the engine generated for every round's groups, kept or dropped (a child's own tokens)."""
    informative: list | None = None
    """Per bucket, [groups sampled, groups with filter_low < accuracy < filter_high], every round."""


def sample_groups(engine: RolloutEngine, prompts: list[dict], cfg: ExperienceConfig, seed: int) -> list[PromptGroup]:
    """G = cfg.n responses per prompt (branching: its initial_n) from the engine, with this round's seed."""
    if not prompts:
        return []
    images = [p.get("images") or None for p in prompts]
    images = images if any(images) else None
    outputs = engine.generate([p["prompt_ids"] for p in prompts], cfg.sampling(seed, cfg.first_n), images=images)
    return [PromptGroup(prompt=p, completions=c) for p, c in zip(prompts, outputs)]


def grade_responses(
    texts: list[str],
    golds: list[str],
    *,
    grader=None,
    reward_fn: Callable | None = None,
    format_weight: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """R_acc and R_format per response (docs/algorithm.md "Hierarchical entropy reward": R = R_acc + ...).

    A user `reward_fn(texts, golds)` (floats, or dicts with "accuracy" and optionally "format")
    replaces the `grader` (math-verify, `grader.grade(text, gold)`), and is called once per round.
    With the grader, `format_weight > 0` scores `<think>…</think> … \\boxed{}` as R_format.
    `on_progress(done, total)` is told after each graded response.
    """
    total = len(texts)
    if reward_fn is not None:
        raw = reward_fn(texts, golds)
        acc = [float(r["accuracy"] if isinstance(r, dict) else r) for r in raw]
        fmt = [float(r.get("format", 0.0)) if isinstance(r, dict) else 0.0 for r in raw]
        if on_progress is not None:
            on_progress(total, total)
        return acc, fmt
    acc = []
    for text, gold in zip(texts, golds):  # one answer at a time: math-verify runs in a worker anyway
        acc.append(float(grader.grade(text, gold)))
        if on_progress is not None:
            on_progress(len(acc), total)
    fmt = [0.0] * total
    if format_weight:
        from ares_lit.grading import format_ok

        fmt = [float(format_ok(t)) for t in texts]
    return acc, fmt


def grade_groups(groups: list[PromptGroup], grade: Grade) -> None:
    """Set each group's per-response `accuracy` and `format` from one `grade(texts, golds)` call."""
    texts = [c.text for g in groups for c in g.completions]
    golds = [g.prompt["answer"] for g in groups for _ in g.completions]
    acc, fmt = grade(texts, golds) if texts else ([], [])
    i = 0
    for g in groups:
        k = len(g.completions)
        g.accuracy = torch.tensor(acc[i : i + k], dtype=torch.float32)
        g.format = torch.tensor(fmt[i : i + k], dtype=torch.float32)
        i += k


def assign_group_buckets(tracker, groups: list[PromptGroup]) -> None:
    """Difficulty bucket per group from its mean accuracy only (docs/algorithm.md "Online difficulty buckets").

    Runs right after grading, before any shaped reward is computed (the released code shaped first,
    with every sample defaulted to "easy"). The tracker also records the prompt's history.
    """
    if not groups:
        return
    acc = torch.stack([g.accuracy.mean() for g in groups])
    buckets = tracker.assign([g.prompt["id"] for g in groups], acc)
    for g, b in zip(groups, buckets.tolist()):
        g.bucket = b


def drop_uninformative(groups: list[PromptGroup], low: float, high: float) -> list[PromptGroup]:
    """The groups whose mean accuracy is strictly inside (low, high), in order (docs/algorithm.md "Group
    filter"): all right or all wrong carries no GRPO signal."""
    if not groups:
        return []
    means = torch.stack([g.accuracy.mean() for g in groups])
    keep = informative_groups(torch.arange(len(groups)), means, low, high)
    return [g for g, k in zip(groups, keep.tolist()) if k]


def collect_groups(
    prompts: list[dict],
    cfg: ExperienceConfig,
    *,
    engine: RolloutEngine,
    grade: Grade,
    tracker,
    refill: Callable[[int], list[dict]],
    seed: StepSeeds | int,
    on_phase: PhaseReport = _no_report,
    timings: dict | None = None,
    branch: Callable[[list[PromptGroup], int], list[PromptGroup]] | None = None,
) -> CollectedGroups:
    """Sample → grade → buckets → filter, then refill dropped groups with fresh prompts.

    docs/algorithm.md "Group filter (DAPO dynamic sampling)": up to `cfg.max_refill_tries` rounds of
    `refill(k)` prompts; every round's groups are bucketed,
    kept ones are appended in order, and the result is cut to `len(prompts)` groups. The buckets
    of dropped groups are recorded by the tracker too (they are real observations of the prompt).
    Round r samples with `seed.for_round(r, ...)` (`seeds.py`: no sample seed repeats across
    steps, ranks, rounds, prompts and samples); an int `seed` is `StepSeeds(seed)` (rank 0, step 0).

    `branch(groups, round)` (branching rollouts, `experience/branching.py`) completes each
    bucketed group to n responses before the filter. It scores and gathers (collectives), so with
    it every rank runs the same rounds: another round runs while ANY rank still lacks groups, and
    a rank that has enough runs it on zero prompts.
    """
    timings = {} if timings is None else timings
    seeds = seed if isinstance(seed, StepSeeds) else StepSeeds(int(seed))
    target = len(prompts)
    generated = [0]
    informative = [[0, 0] for _ in range(3)]

    def one_round(batch: list[dict], refill_round: int, have: int) -> list[PromptGroup]:
        on_phase("generation", have, target)
        with timer(timings, "generation"):
            groups = sample_groups(engine, batch, cfg, seeds.for_round(refill_round, len(batch), cfg.n))
        on_phase("grading", 0, sum(len(g.completions) for g in groups))
        with timer(timings, "grading"):
            grade_groups(groups, grade)
        assign_group_buckets(tracker, groups)
        groups = groups if branch is None else branch(groups, refill_round)
        for g in groups:
            generated[0] += sum(len(c.token_ids) for c in g.completions) - sum(g.inherited or [])
            informative[g.bucket][0] += 1
            informative[g.bucket][1] += int(cfg.filter_low < float(g.accuracy.mean()) < cfg.filter_high)
        return groups

    def short(have: int) -> bool:  # shared by all ranks when branch stages are collectives
        return (target - have if branch is None else world_max(target - have)) > 0

    groups = one_round(prompts, 0, 0)
    if not cfg.filter_groups:
        return CollectedGroups(groups, 0, 0, generated[0], informative)
    kept = drop_uninformative(groups, cfg.filter_low, cfg.filter_high)
    dropped, refills = len(groups) - len(kept), 0
    while refills < cfg.max_refill_tries and short(len(kept)):
        refills += 1
        need = target - len(kept)
        more = one_round(refill(need) if need > 0 else [], refills, len(kept))
        good = drop_uninformative(more, cfg.filter_low, cfg.filter_high)
        dropped += len(more) - len(good)
        kept.extend(good)
    return CollectedGroups(kept[:target], dropped, refills, generated[0], informative)


def probed_grader(timeout: float, answer_fallback: str, probe: bool):
    """A math-verify grader; with `probe`, it must first accept one known pair, so that a broken
    install fails at start, not after many steps in which every answer counted as wrong."""
    from ares_lit.grading import Grader

    grader = Grader(timeout=timeout, answer_fallback=answer_fallback)
    if probe and not grader.grade("\\boxed{1/2}", "0.5"):
        stats = dict(grader.stats)
        grader.close()
        raise RuntimeError(
            "the math-verify grader failed its start-up check (\\boxed{1/2} graded against 0.5 was not "
            f"accepted; counters {stats}). Check that math-verify is installed in this Python "
            "(pip install 'math-verify>=0.8') and that a grading subprocess can start, or pass a "
            "rollout reward_fn (path.py:function) to grade without it."
        )
    grader.stats = dict.fromkeys(grader.stats, 0)  # the logged grading/* counters count training answers only
    return grader
