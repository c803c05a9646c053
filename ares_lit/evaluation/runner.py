"""Sample, grade and record: the evaluation loop shared by `python -m ares_lit.evaluate` and the
validation of both training stages (`validation_step`), so a number means the same thing in both.

Problems are prompt records as `PromptDataModule` makes them (`id`, `question`, `answer`,
`prompt_text`, `prompt_ids`, optional `images`, `level`, `source`, `options`). They are handled in
fixed batches of `batch_size` problems; problem p (its index in the whole evaluation) gets the
sampling seeds `seed + p·n + j` for its samples j = 0..n−1 (exact for vLLM, which seeds each
request; the hf engine seeds each batch with the seed of its first row). Batches are aligned to
problem indices, so an interrupted run that resumes at a batch boundary draws exactly the samples
an uninterrupted run draws.

Grading is the training grader (`ares_lit.grading.Grader`: math-verify in a killable worker, a
per-answer time bound); a multiple-choice problem (it has `options`, or its gold answer is a
letter A–J) is graded by letter with `ares_lit.choices.grade_choice`, so "B", "(B)" and the
option's text all count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

__all__ = ["EvalSettings", "evaluate_batches", "grade_rows", "sample_rows"]


@dataclass
class EvalSettings:
    """How each problem is sampled and graded."""

    n: int = 4
    """Samples per problem."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    top_k: int = -1
    """Top-k (-1 = off)."""
    max_tokens: int = 256
    """Response budget in tokens."""
    seed: int = 0
    """Base seed: problem p, sample j uses seed + p·n + j."""
    batch_size: int = 8
    """Problems per engine call (the unit of resuming)."""
    answer_fallback: str = "none"
    """"none": only \\boxed{} answers count (ARES); "last_number": grade an unboxed response on its last number."""
    grade_timeout: float = 5.0
    """Seconds of grading per answer; a hang counts as incorrect and as a grader timeout."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1; got {self.n}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1; got {self.batch_size}")
        if self.max_tokens < 1:
            raise ValueError(f"--max_tokens must be >= 1; got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1]; got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"--top_k must be -1 (off) or >= 1; got {self.top_k}")
        from ares_lit.grading import ANSWER_FALLBACKS

        if self.answer_fallback not in ANSWER_FALLBACKS:
            raise ValueError(f"--answer_fallback must be one of {ANSWER_FALLBACKS}; got {self.answer_fallback!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def sample_rows(engine, problems: Sequence[dict], first_index: int, settings: EvalSettings) -> list[dict]:
    """Sample `settings.n` responses for each problem; ungraded rows, problem-major.

    `first_index` is the index of `problems[0]` in the whole evaluation (it fixes the seeds)."""
    from ares_lit.rollout import SamplingConfig

    if not problems:
        return []
    n = settings.n
    sampling = SamplingConfig(
        n=n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_tokens=settings.max_tokens,
        seed=settings.seed + first_index * n,
    )
    images = [p.get("images") or None for p in problems]
    outputs = engine.generate([p["prompt_ids"] for p in problems], sampling, images=images if any(images) else None)
    rows = []
    for offset, (problem, completions) in enumerate(zip(problems, outputs)):
        index = first_index + offset
        for j, c in enumerate(completions):
            rows.append(
                {
                    "problem": index,
                    "id": str(problem["id"]),
                    "source": problem.get("source"),
                    "level": problem.get("level"),
                    "sample": j,
                    "prompt": problem.get("prompt_text", problem.get("question", "")),
                    "response": c.text,
                    "gold": str(problem["answer"]),
                    "n_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "seed": settings.seed + index * n + j,
                    "_options": problem.get("options"),
                }
            )
    return rows


def grade_rows(rows: list[dict], grader, answer_fallback: str = "none") -> list[dict]:
    """Fill `answer`, `boxed`, `correct` and `grader_timeout` of each row (in place); returns rows."""
    from ares_lit.choices import grade_choice
    from ares_lit.grading import extract_answer, extract_boxed

    for row in rows:
        options = row.pop("_options", None)
        answer = extract_answer(row["response"], answer_fallback)
        row["answer"] = answer
        row["boxed"] = extract_boxed(row["response"]) is not None
        verdict = grade_choice(answer, row["gold"], options)
        timeouts = grader.stats["timeouts"]
        if verdict is None:  # not multiple choice: math-verify
            verdict = grader.grade_answer(answer, row["gold"]) if answer is not None else False
        row["correct"] = bool(verdict)
        row["grader_timeout"] = grader.stats["timeouts"] > timeouts
    return rows


def evaluate_batches(
    engine,
    grader,
    problems: Sequence[dict],
    settings: EvalSettings,
    start_problem: int = 0,
    index_offset: int = 0,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> Iterator[list[dict]]:
    """Graded rows, one list per batch of `settings.batch_size` problems, from `start_problem` on.

    `start_problem` must be a multiple of the batch size (batches are the unit of resuming);
    `index_offset` shifts problem indices (and so seeds) when `problems` is a slice of a larger
    evaluation. `on_batch` is called with each batch's rows before it is yielded."""
    if start_problem % settings.batch_size:
        raise ValueError(f"start_problem ({start_problem}) must be a multiple of batch_size ({settings.batch_size})")
    for start in range(start_problem, len(problems), settings.batch_size):
        chunk = problems[start : start + settings.batch_size]
        rows = grade_rows(sample_rows(engine, chunk, index_offset + start, settings), grader, settings.answer_fallback)
        if on_batch is not None:
            on_batch(rows)
        yield rows
