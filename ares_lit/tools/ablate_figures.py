"""The figures of `python -m ares_lit.tools.ablate` (matplotlib, Agg backend): the old ablation.png
(`figure`) and the paper's figures (`paper_figures`): ares_length.png, ares_accuracy.png and
ares_curves.png. Nothing here fails on a missing model, level, arm curve or tag: a missing point is
left out and a panel without data says "not logged"."""

from __future__ import annotations

import statistics
from pathlib import Path

from ares_lit.tools.ablate_report import LEVELS, _spread, evaluations, model_names, stat

LEVEL_STYLE = {"easy": ("-", "o"), "medium": ("-.", "s"), "hard": (":", "^")}  # line style and marker of a level
SETPOINT_STYLE = "--"  # T*_d, next to T_d in the level's marker


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colors(result: dict) -> dict[str, str]:
    """One colour per model (the same in every figure)."""
    return {name: f"C{i % 10}" for i, name in enumerate(model_names(result))}


def mean_curve(seeds: list[dict], tag: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the seeds that logged the step) of a curve tag; NaN and None values are left out."""
    by_step: dict[int, list[float]] = {}
    for s in seeds:
        for point in (s.get("curves") or {}).get(tag, []):
            step, value = point[0], point[1]
            if value is not None and value == value:
                by_step.setdefault(int(step), []).append(float(value))
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[k]) for k in steps]


def curve_panels(result: dict) -> dict[str, list[dict]]:
    """The panels of ares_curves.png: {title: [{"arm", "level", "tag", "style", "marker", "steps", "values"}]},
    one line per arm and level (τ: per arm), mean over seeds; an empty list where nothing was logged."""
    panels: dict[str, list[tuple[str, str | None, str]]] = {
        "response length per bucket": [(f"bucket/{lv}/response_length", lv, LEVEL_STYLE[lv][0]) for lv in LEVELS],
        "α_d per bucket": [(f"bucket/{lv}/alpha", lv, LEVEL_STYLE[lv][0]) for lv in LEVELS],
        "T_d per bucket (T*_d dashed)": [(f"bucket/{lv}/{key}", lv, LEVEL_STYLE[lv][0] if key == "target" else SETPOINT_STYLE)
                                         for lv in LEVELS for key in ("target", "setpoint")],  # fmt: skip
        "τ (hwe/threshold)": [("hwe/threshold", None, "-")],
        "N_HE per bucket": [(f"bucket/{lv}/n_hwe", lv, LEVEL_STYLE[lv][0]) for lv in LEVELS],
    }
    out: dict[str, list[dict]] = {}
    for title, specs in panels.items():
        out[title] = []
        for arm, body in result.get("arms", {}).items():
            for tag, lv, style in specs:
                steps, values = mean_curve(body.get("seeds", []), tag)
                if steps:
                    marker = LEVEL_STYLE[lv][1] if lv else None
                    out[title].append({"arm": arm, "level": lv, "tag": tag, "style": style, "marker": marker, "steps": steps, "values": values})
    return out


def _not_logged(ax, text: str = "not logged") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def by_level_figure(result: dict, path: Path, key: str) -> Path:
    """`key` ("length" or "accuracy") by level, one line per model (base, coldstart or start, each arm):
    the mean over seeds with error bars = `stat`'s SE (none where it is None: lengths of single models)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names, color, arms = model_names(result), colors(result), result.get("arms", {})
    drawn = 0
    for i, name in enumerate(names):
        points = [(j, stat(result, name, lv, key)) for j, lv in enumerate(LEVELS)]
        points = [(j, st) for j, st in points if st is not None]
        if not points:
            continue
        offset = (i - (len(names) - 1) / 2) * 0.03  # keep the error bars apart
        errors = [st[1] or 0.0 for _, st in points]
        k = len(evaluations(result, name))
        label = f"{name} ({k} seed{'s' if k != 1 else ''})" if name in arms else name
        ax.errorbar([j + offset for j, _ in points], [st[0] for _, st in points], yerr=errors if any(errors) else None,
                    color=color[name], marker="o", ls="-" if name in arms else "--", capsize=3, label=label)  # fmt: skip
        drawn += 1
    ax.set_xticks(range(len(LEVELS)), LEVELS)
    ax.set_xlabel("difficulty level")
    if key == "length":
        ax.set_ylabel("mean response length (tokens)")
        ax.set_title("Response length by difficulty (error bars: SE over seeds)")
    else:
        ax.set_ylabel("accuracy (avg@n)")
        ax.set_title("Accuracy by difficulty (error bars: SE, evaluation and seeds)")
    if drawn:
        ax.legend(fontsize=8)
    else:
        _not_logged(ax, "no evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_figure(result: dict, path: Path) -> Path:
    """The per-step curves (`curve_panels`): one colour per arm, one line style per level; the sixth
    panel is the legend."""
    from matplotlib.lines import Line2D

    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    color = colors(result)
    for ax, (title, lines) in zip(axes.flat, curve_panels(result).items()):
        for line in lines:
            ax.plot(line["steps"], line["values"], line["style"], marker=line["marker"], markersize=3, color=color.get(line["arm"]))
        ax.set_title(title + " (mean over seeds)", fontsize=10)
        ax.set_xlabel("step")
        if not lines:
            _not_logged(ax)
    legend = axes.flat[-1]
    legend.axis("off")
    handles = [Line2D([], [], color=color[a], label=a) for a in result.get("arms", {})]
    handles += [Line2D([], [], color="black", ls=LEVEL_STYLE[lv][0], marker=LEVEL_STYLE[lv][1], label=lv) for lv in LEVELS]
    handles.append(Line2D([], [], color="black", ls=SETPOINT_STYLE, label="T*_d (set-point)"))
    legend.legend(handles=handles, loc="center", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def paper_figures(result: dict, out_dir: Path) -> list[Path]:
    """ares_length.png, ares_accuracy.png and ares_curves.png in out_dir; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [by_level_figure(result, out_dir / "ares_length.png", "length"),
            by_level_figure(result, out_dir / "ares_accuracy.png", "accuracy"),
            curves_figure(result, out_dir / "ares_curves.png")]  # fmt: skip


def figure(result: dict, path: Path) -> None:
    """ablation.png: accuracy and length by level (bars, mean ± std over seeds) and the training
    accuracy and length per bucket (mean over seeds)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = model_names(result)
    width = 0.8 / max(len(names), 1)
    for ax, key, title in ((axes[0, 0], "accuracy", "held-out accuracy (avg@n)"), (axes[0, 1], "length", "mean response length")):
        for i, name in enumerate(names):
            stats = [_spread([e.get(lv, {}).get(key) for e in evaluations(result, name)]) for lv in LEVELS]
            ax.bar([j + i * width for j in range(len(LEVELS))], [m for m, _ in stats], width, yerr=[s for _, s in stats], label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(LEVELS))], LEVELS)
        ax.set_title(title)
        ax.legend(fontsize=8)
    for ax, metric in ((axes[1, 0], "accuracy"), (axes[1, 1], "response_length")):
        for name, arm in result.get("arms", {}).items():
            for lv in LEVELS:
                steps, mean = mean_curve(arm.get("seeds", []), f"bucket/{lv}/{metric}")
                if steps:
                    ax.plot(steps, mean, LEVEL_STYLE[lv][0], label=f"{name} {lv}")
        ax.set_title(f"training: bucket/*/{metric} (mean over seeds)")
        ax.set_xlabel("step")
        if ax.get_lines():
            ax.legend(fontsize=6, ncol=2)
        else:
            _not_logged(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
