"""Evaluation: the metrics, the sampling-and-grading loop, data sources and reports behind
`python -m ares_lit.evaluate` and the validation of both training stages."""

from ares_lit.evaluation.metrics import METRIC_KEYS, maj_vote_correct, metric_block, pass_at_k, summarize, valid_ks
from ares_lit.evaluation.runner import EvalSettings, evaluate_batches, grade_rows, sample_rows

__all__ = [
    "METRIC_KEYS",
    "EvalSettings",
    "evaluate_batches",
    "grade_rows",
    "maj_vote_correct",
    "metric_block",
    "pass_at_k",
    "sample_rows",
    "summarize",
    "valid_ks",
]
