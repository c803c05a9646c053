"""Reports of an evaluation: a markdown table, TensorBoard scalars and a figure by level."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["markdown_table", "flat_scalars", "write_tensorboard", "plot_by_level"]


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if pct else f"{value:.1f}"


def _blocks(summary: dict) -> list[tuple[str, dict]]:
    """(label, block) rows of a table: overall, then per source, level and source/level."""
    out = [("overall", summary["overall"])]
    groups = summary["groups"]
    if len(groups["source"]) > 1:  # with one source these equal "overall" and "source/level"
        out += list(groups["source"].items()) + list(groups["level"].items())
    out += list(groups["source/level"].items())
    return out


def markdown_table(summaries: dict[str, dict], ks: list[int]) -> str:
    """One table; `summaries` maps a model label ("model", "baseline") to its summary.

    Accuracy-like columns are percentages; lengths are response tokens."""
    header = ["group", "model", "problems", "avg@n", "±se"]
    header += [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
    header += ["mean len", "median len", "len ✓", "len ✗", "trunc %", "no box %", "timeouts"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = list(summaries)
    first = summaries[labels[0]]
    for group, _ in _blocks(first):
        for label in labels:
            block = dict(_blocks(summaries[label])).get(group)
            if block is None:
                continue
            cells = [group, label, str(block["n_problems"]), _fmt(block["avg_at_n"], True), _fmt(block["avg_at_n_stderr"], True)]
            cells += [_fmt(block.get(f"pass_at_{k}"), True) for k in ks]
            cells += [_fmt(block.get(f"maj_at_{k}"), True) for k in ks]
            cells += [
                _fmt(block["mean_length"]),
                _fmt(block["median_length"]),
                _fmt(block["mean_length_correct"]),
                _fmt(block["mean_length_incorrect"]),
                _fmt(block["truncation_rate"], True),
                _fmt(block["no_answer_rate"], True),
                str(block["grader_timeouts"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flat_scalars(summary: dict, prefix: str, ks: list[int]) -> dict[str, float]:
    """`<prefix>/<group>/<metric>` scalars: groups `overall`, `<source>`, `<level>`, `<source>/<level>`
    (names made tag-safe: characters other than letters, digits, `_.-` become `_`).

    Metrics: avg_at_n, pass_at_<k>, maj_at_<k>, length (mean), truncation_rate, no_answer_rate."""
    keys = ["avg_at_n", *[f"pass_at_{k}" for k in ks], *[f"maj_at_{k}" for k in ks], "truncation_rate", "no_answer_rate"]
    groups = {"overall": summary["overall"]}
    groups.update({_tag(k): v for k, v in summary["groups"]["source"].items()})
    groups.update({_tag(k): v for k, v in summary["groups"]["level"].items()})
    for key, block in summary["groups"]["source/level"].items():
        source, _, level = key.rpartition("/")
        groups[f"{_tag(source)}/{_tag(level)}"] = block
    out: dict[str, float] = {}
    for name, block in groups.items():
        for key in keys:
            if block.get(key) is not None:
                out[f"{prefix}/{name}/{key}"] = float(block[key])
        if block.get("mean_length") is not None:
            out[f"{prefix}/{name}/length"] = float(block["mean_length"])
    return out


def _tag(name: str) -> str:
    """A group name as one TensorBoard tag component: `builtin:math` -> `builtin_math`, `org/set` -> `org_set`."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def write_tensorboard(log_dir: str | Path, scalars: dict[str, float], step: int = 0) -> Path:
    """Write scalars as one TensorBoard event file under log_dir."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()
    return Path(log_dir)


def plot_by_level(summaries: dict[str, dict], path: str | Path) -> Path | None:
    """Accuracy (avg@n) and mean response length per level, one bar per model; None without levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summaries)
    levels = list(summaries[labels[0]]["groups"]["level"])
    if not levels:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        blocks = summaries[label]["groups"]["level"]
        xs = [j + i * width for j in range(len(levels))]
        acc = [100 * (blocks.get(lv, {}).get("avg_at_n") or 0.0) for lv in levels]
        err = [100 * (blocks.get(lv, {}).get("avg_at_n_stderr") or 0.0) for lv in levels]
        length = [blocks.get(lv, {}).get("mean_length") or 0.0 for lv in levels]
        axes[0].bar(xs, acc, width, yerr=err, label=label)
        axes[1].bar(xs, length, width, label=label)
    for ax, title in zip(axes, ("accuracy avg@n (%)", "mean response length (tokens)")):
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(levels))], levels)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
