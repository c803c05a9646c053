"""The cold-start curation report: what was kept, dropped and selected, and how close the selected
traces came to L_target(p); printed once, saved next to the run, and drawn in TensorBoard.

`build_report` returns a JSON-ready dict (saved as report.json beside curated.jsonl):

    pool, rows, usable, selected      the pool's name, its rows (unreadable lines included), the
                                      problems left after cleaning and grading, and those selected
    dropped                           rows skipped, by reason (ColdstartDataModule DROP_REASONS)
    candidates                        candidate traces: total, correct, incorrect, unnormalizable, too_long
    sources                           per source: L0, L1 and where each came from, usable and
                                      selected counts, their brackets, mean selected / target tokens
    brackets_usable, brackets_selected   problems per bracket "k/n"
    modality_selected                 {"text", "multimodal"} counts of the selection
    mean_abs_length_error             mean |selected trace tokens − L_target(p)|
    selected_incorrect                selected traces that are not correct (0 unless allow_incorrect)

`log_report` writes it to the run's log dir (curation_report.json) and to TensorBoard: text
`curation/report`, scalars `data/*` and `curation/<source>/{L0,L1}`, figures `curation/brackets`
(usable vs selected problems per bracket and source) and `curation/lengths` (selected length vs
L_target(p)).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ares_lit.tb import tensorboard_writer

__all__ = ["bracket_figure", "build_report", "length_figure", "log_report"]


def build_report(
    pool: str,
    rows: int,
    drops: dict[str, int],
    candidates: dict[str, int],
    usable: list[dict],
    records: list[dict],
    anchors: dict[str, dict],
    bracket_n: int,
) -> dict[str, Any]:
    """The report (module docstring) of one curation."""

    def label(b: int) -> str:
        return f"{b}/{bracket_n}"

    def counts(items, key="bracket"):
        out: dict[str, int] = {}
        for q in sorted(items, key=lambda q: q[key]):
            out[label(q[key])] = out.get(label(q[key]), 0) + 1
        return out

    sources = {}
    for source, anchor in anchors.items():
        sel = [r for r in records if r["source"] == source]
        sources[source] = {
            **anchor,
            "usable": sum(q["source"] == source for q in usable),
            "selected": len(sel),
            "brackets_usable": counts([q for q in usable if q["source"] == source]),
            "brackets_selected": counts(sel),
            "mean_selected_tokens": float(np.mean([r["response_tokens"] for r in sel])) if sel else None,
            "mean_target_tokens": float(np.mean([r["target_tokens"] for r in sel])) if sel else None,
        }
    errors = [abs(r["response_tokens"] - r["target_tokens"]) for r in records]
    return {
        "pool": pool,
        "rows": rows,
        "usable": len(usable),
        "selected": len(records),
        "dropped": drops,
        "candidates": candidates,
        "sources": sources,
        "brackets_usable": counts(usable),
        "brackets_selected": counts(records),
        "modality_selected": {
            "text": sum(not r["multimodal"] for r in records),
            "multimodal": sum(r["multimodal"] for r in records),
        },
        "mean_abs_length_error": float(np.mean(errors)),
        "selected_incorrect": sum(not r["response_correct"] for r in records),
    }


def log_report(trainer: Any, report: dict, records: list[dict], bracket_n: int) -> None:
    """Print one line, save curation_report.json in the log dir, and draw the report in TensorBoard.

    Call it on every rank: `trainer.log_dir` is a collective in Lightning. Only rank 0 writes.
    """
    log_dir = trainer.log_dir  # a collective (broadcast) in Lightning: every rank must ask
    if not trainer.is_global_zero:
        return
    print(
        f"[ares_lit] cold-start curation: {report['selected']} selected of {report['usable']} usable problems "
        f"({report['rows']} rows; skipped {report['dropped']}); L(0)/L(1) per source: "
        + ", ".join(f"{s}={v['L0']:.1f}/{v['L1']:.1f}" for s, v in report["sources"].items()),
        flush=True,
    )
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        Path(log_dir, "curation_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    writer = tensorboard_writer(trainer)
    if writer is None:
        return
    writer.add_text("curation/report", "```\n" + json.dumps(report, indent=2) + "\n```", 0)
    writer.add_scalar("data/usable_rows", report["usable"], 0)
    writer.add_scalar("data/selected_rows", report["selected"], 0)
    for reason, count in report["dropped"].items():
        writer.add_scalar(f"data/dropped_{reason}", count, 0)
    for source, v in report["sources"].items():
        writer.add_scalar(f"curation/{source}/L0", v["L0"], 0)
        writer.add_scalar(f"curation/{source}/L1", v["L1"], 0)
    writer.add_figure("curation/brackets", bracket_figure(report, bracket_n), 0)
    writer.add_figure("curation/lengths", length_figure(report, records), 0)
    writer.flush()


def bracket_figure(report: dict, bracket_n: int):
    """Bars of usable (plain) and selected (hatched) problems per bracket k/n, per source."""
    plt = _pyplot()
    labels = [f"{b}/{bracket_n}" for b in range(bracket_n + 1)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(len(labels))
    sources = list(report["sources"])
    width = 0.8 / max(1, 2 * len(sources))
    for i, source in enumerate(sources):
        v = report["sources"][source]
        for j, (kind, hatch) in enumerate((("usable", ""), ("selected", "//"))):
            ys = [v[f"brackets_{kind}"].get(lab, 0) for lab in labels]
            ax.bar(x + (2 * i + j) * width - 0.4, ys, width, label=f"{source} {kind}", hatch=hatch, align="edge")
    ax.set_xticks(x, labels)
    ax.set_xlabel("pass-rate bracket k/n")
    ax.set_ylabel("problems")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def length_figure(report: dict, records: list[dict]):
    """Selected trace length against L_target(p), one point per selected problem, per source."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for source in report["sources"]:
        rs = [r for r in records if r["source"] == source]
        ax.scatter([r["target_tokens"] for r in rs], [r["response_tokens"] for r in rs], s=12, label=source)
    top = max([r["target_tokens"] for r in records] + [r["response_tokens"] for r in records])
    ax.plot([0, top], [0, top], color="gray", linewidth=0.8)
    ax.set_xlabel("L_target(p) (tokens)")
    ax.set_ylabel("selected trace (tokens)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
