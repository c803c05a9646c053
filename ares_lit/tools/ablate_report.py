"""The report of `python -m ares_lit.tools.ablate` (docs/ablation.md, docs/ares.md): TensorBoard curves
read back from each run, the per-level evaluation rows, the standard error over seeds, the markdown
tables (results, the paper's claims, the controllers) and the figures (drawn in `ablate_figures`).

A result holds single models (`models`: base and cold start, two-stage only; `start`: the RL arms'
starting model) and arms (`arms[arm]["seeds"]`, one evaluation per seed); every evaluation is a
BY_LEVEL dict {"all"|"easy"|"medium"|"hard": {"accuracy", "length", "stderr", "n_problems"}}."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

LEVELS = ("easy", "medium", "hard")


# Per-step TensorBoard curves kept in ablation.json: training accuracy and length per bucket, and the
# α controller and τ (docs/stages.md "The α controller and τ") for the controllers table.
CURVE_SUFFIXES = ("/accuracy", "/response_length", "/alpha", "/target", "/setpoint", "/n_hwe", "/reward_inversions")
CURVE_TAGS = ("hwe/threshold", "hwe/voters")


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """Per-step `bucket/*/<CURVE_SUFFIXES>` and `CURVE_TAGS` of a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb" / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if (tag.startswith("bucket/") and tag.endswith(CURVE_SUFFIXES)) or tag in CURVE_TAGS:
            by_step = {e.step: e.value for e in acc.Scalars(tag)}  # a resumed run may log a step twice
            out[tag] = [[s, by_step[s]] for s in sorted(by_step)]
    return out


def _by_level(metrics: dict) -> dict:
    """BY_LEVEL of an evaluation's metrics.json: avg@n (`accuracy`), its standard error over the problems
    (`stderr`, ares_lit/evaluation/metrics.py), the mean response length (`length`) and `n_problems`,
    overall ("all") and for each level the evaluation has."""

    def block(b: dict) -> dict:
        return {"accuracy": b["avg_at_n"], "length": b["mean_length"], "stderr": b.get("avg_at_n_stderr"), "n_problems": b.get("n_problems")}

    levels = metrics.get("groups", {}).get("level", {})
    row = {"all": block(metrics["overall"])}
    for lv in LEVELS:
        if lv in levels:
            row[lv] = block(levels[lv])
    return row


def _spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_error(means: Sequence[float], stderrs: Sequence[float | None] | None = None) -> float | None:
    """The standard error of the mean of k evaluations (an arm's seeds, or one single model):

        SE = sqrt( Σ_i se_i² / k²  +  (s_between² / k  if k ≥ 2 else 0) )

    se_i is evaluation i's own standard error (avg@n: the sample std of its per-problem accuracies / √P;
    a missing one counts as 0), s_between the sample standard deviation (ddof=1) of the k means. The
    first term is the held-out sampling noise averaged over the seeds, the second the seed-to-seed spread.
    A single model (k = 1) gets SE = se_1, its evaluation stderr. Without stderrs (lengths) only the
    spread term is left: s_between/√k. None when there is no value, or no se_i and k < 2. Means that are
    None or NaN are dropped together with their se_i."""
    pairs = [(float(m), None if stderrs is None else stderrs[i]) for i, m in enumerate(means) if m is not None and m == m]
    k = len(pairs)
    known = [float(s) for _, s in pairs if s is not None]
    if k == 0 or (not known and k < 2):
        return None
    within = math.fsum(s * s for s in known) / k**2
    between = statistics.variance([m for m, _ in pairs]) / k if k >= 2 else 0.0
    return math.sqrt(within + between)


def model_names(result: dict) -> list[str]:
    """The report's models in order: base and coldstart (two-stage, `models`) or else start, then the arms."""
    models = result.get("models") or {}
    singles = [n for n in ("base", "coldstart") if n in models] if models else (["start"] if result.get("start") else [])
    return singles + list(result.get("arms", {}))


def evaluations(result: dict, name: str) -> list[dict]:
    """The BY_LEVEL evaluations of a model: one per seed of an arm, the one of a single model (base,
    coldstart, start); [] when the result has no such model."""
    if name in result.get("arms", {}):
        return [s.get("eval") or {} for s in result["arms"][name].get("seeds", [])]
    if name in (result.get("models") or {}):
        return [result["models"][name]]
    if name == "start" and result.get("start"):
        return [result["start"]]
    return []


def stat(result: dict, name: str, level: str = "all", key: str = "accuracy") -> tuple[float, float | None, int] | None:
    """(mean over the model's evaluations, SE, k) of `key` ("accuracy" or "length") at `level`; None when
    the model or the level is missing. Accuracy: SE = seed_error(values, evaluation stderrs); length:
    SE = seed_error(values) (the spread over seeds only; None for a single model)."""
    cells = [e.get(level) for e in evaluations(result, name)]
    cells = [c for c in cells if c and c.get(key) is not None and c[key] == c[key]]
    if not cells:
        return None
    values = [float(c[key]) for c in cells]
    se = seed_error(values, [c.get("stderr") for c in cells] if key == "accuracy" else None)
    return statistics.fmean(values), se, len(values)


def _fmt(st: tuple | None, fmt: str = "{:.3f}") -> str:
    if st is None:
        return "–"
    return fmt.format(st[0]) + ("" if st[1] is None else " ± " + fmt.format(st[1]))


SE_NOTE = ("accuracy: avg@n, mean over seeds ± SE = sqrt(Σ se_i²/k² + s_between²/k) (se_i: each evaluation's stderr over "
           "the problems, s_between: the std of the seed means; a single model: its stderr); length: mean ± s_between/√k.")  # fmt: skip


def summarize(result: dict) -> str:
    """The markdown table, one row per model (base and coldstart, or start; then the arms): accuracy (avg@n)
    ± SE (`seed_error`) and mean length ± its spread over seeds (s_between/√k) per level, the seeds and
    the mean fit minutes; the SE is explained in a line under the table (SE_NOTE)."""
    cols = ["all", *LEVELS]
    lines = ["| model | " + " | ".join(f"acc {c}" for c in cols) + " | " + " | ".join(f"len {c}" for c in cols) + " | seeds | fit min |",
             "|---" * (2 * len(cols) + 3) + "|"]  # fmt: skip
    for name in model_names(result):
        arm = result.get("arms", {}).get(name)
        cells = [_fmt(stat(result, name, c, key), fmt) for key, fmt in (("accuracy", "{:.3f}"), ("length", "{:.1f}")) for c in cols]
        seeds = arm.get("seeds", []) if arm is not None else []
        fits = [s["fit_seconds"] for s in seeds if s.get("fit_seconds") is not None]
        ids = ",".join(str(s.get("seed", "?")) for s in seeds) if arm is not None else "–"
        minutes = f"{statistics.fmean(fits) / 60:.1f}" if fits else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ids} | {minutes} |")
    return "\n".join(lines) + "\n\n" + SE_NOTE + "\n"


# The ablation chain (docs/ablation.md): each arm adds one switch to the one before; other arms are baselines.
CHAIN = ("grpo", "dynamic_kl", "entropy_shaping", "aepo")
CLAIMS = {
    "C1": ("The cold start makes length grow with difficulty", "reproduced: coldstart length easy < medium < hard; partly: only hard > easy; else not"),
    "C2": ("RL shortens easy answers at equal or better accuracy",
           "aepo vs coldstart, easy: reproduced: shorter and acc ≥ coldstart − 2·SE_diff; partly: one of the two; else not"),
    "C3": ("Hard answers get deeper or more accurate",
           "aepo vs grpo, hard: reproduced: Δacc > 2·SE_diff; partly: longer or Δacc > 0; else not"),
    "C4": ("Each switch adds accuracy",
           "overall acc along grpo → dynamic_kl → entropy_shaping → aepo (those present): reproduced: every Δ > 2·SE_diff; "
           "partly: every Δ > 0, or some Δ > 2·SE_diff and none < −2·SE_diff; else not"),
    "C5": ("AEPO beats the baselines", "overall acc, aepo − each baseline: reproduced: every Δ > 2·SE_diff; partly: every Δ > 0; else not"),
}  # fmt: skip


def _diff(a: tuple, b: tuple) -> tuple[float, float]:
    """(a − b, SE_diff = sqrt(SE_a² + SE_b²)); an unknown SE counts as 0."""
    return a[0] - b[0], math.hypot(a[1] or 0.0, b[1] or 0.0)


def _d(d: float, se: float) -> str:
    return f"Δ {d:+.3f}, 2·SE_diff {2 * se:.3f}"


def _c1(result: dict) -> tuple[str, str]:
    cs = [stat(result, "coldstart", lv, "length") for lv in LEVELS]
    base = [stat(result, "base", lv, "length") for lv in LEVELS]
    if "coldstart" not in (result.get("models") or {}) or None in cs:
        return "no coldstart evaluation with easy, medium and hard", "n/a"
    e, m, h = (x[0] for x in cs)
    numbers = "coldstart length easy/medium/hard: " + " / ".join(f"{x[0]:.1f}" for x in cs)
    numbers += "; base: " + " / ".join("–" if x is None else f"{x[0]:.1f}" for x in base)
    return numbers, "reproduced" if e < m < h else "partly" if h > e else "not"


def _c2(result: dict) -> tuple[str, str]:
    la, lc = stat(result, "aepo", "easy", "length"), stat(result, "coldstart", "easy", "length")
    aa, ac = stat(result, "aepo", "easy", "accuracy"), stat(result, "coldstart", "easy", "accuracy")
    if "coldstart" not in (result.get("models") or {}) or None in (la, lc, aa, ac):
        return "needs coldstart and aepo evaluations of easy problems", "n/a"
    d, se = _diff(aa, ac)
    shorter, accurate = la[0] < lc[0], d >= -2 * se
    numbers = f"easy length aepo {_fmt(la, '{:.1f}')} vs coldstart {_fmt(lc, '{:.1f}')}; easy acc aepo {_fmt(aa)} vs coldstart {_fmt(ac)} ({_d(d, se)})"
    return numbers, "reproduced" if shorter and accurate else "partly" if shorter or accurate else "not"


def _c3(result: dict) -> tuple[str, str]:
    aa, ag = stat(result, "aepo", "hard", "accuracy"), stat(result, "grpo", "hard", "accuracy")
    la, lg = stat(result, "aepo", "hard", "length"), stat(result, "grpo", "hard", "length")
    if None in (aa, ag):
        return "needs aepo and grpo evaluations of hard problems", "n/a"
    d, se = _diff(aa, ag)
    longer = la is not None and lg is not None and la[0] > lg[0]
    numbers = f"hard acc aepo {_fmt(aa)} vs grpo {_fmt(ag)} ({_d(d, se)}); hard length aepo {_fmt(la, '{:.1f}')} vs grpo {_fmt(lg, '{:.1f}')}"
    return numbers, "reproduced" if d > 2 * se else "partly" if longer or d > 0 else "not"


def _c4(result: dict) -> tuple[str, str]:
    chain = [(a, stat(result, a)) for a in CHAIN if a in result.get("arms", {})]
    chain = [(a, st) for a, st in chain if st is not None]
    if len(chain) < 2:
        return "needs two or more of " + ", ".join(CHAIN), "n/a"
    steps = [_diff(b[1], a[1]) for a, b in zip(chain, chain[1:])]
    numbers = f"{chain[0][0]} {_fmt(chain[0][1])}" + "".join(f" → {b[0]} {_fmt(b[1])} ({_d(d, se)})" for b, (d, se) in zip(chain[1:], steps))
    if all(d > 2 * se for d, se in steps):
        return numbers, "reproduced"
    if all(d > 0 for d, _ in steps) or (any(d > 2 * se for d, se in steps) and not any(d < -2 * se for d, se in steps)):
        return numbers, "partly"
    return numbers, "not"


def _c5(result: dict) -> tuple[str, str]:
    aepo = stat(result, "aepo")
    baselines = [(b, stat(result, b)) for b in result.get("arms", {}) if b not in CHAIN]
    baselines = [(b, st) for b, st in baselines if st is not None]
    if aepo is None or not baselines:
        return "needs aepo and at least one baseline", "n/a"
    diffs = [_diff(aepo, st) for _, st in baselines]
    numbers = f"aepo {_fmt(aepo)}; " + "; ".join(f"vs {b} {_fmt(st)} ({_d(d, se)})" for (b, st), (d, se) in zip(baselines, diffs))
    return numbers, "reproduced" if all(d > 2 * se for d, se in diffs) else "partly" if all(d > 0 for d, _ in diffs) else "not"


def claims(result: dict) -> dict[str, dict]:
    """{claim id: {"claim", "rule", "numbers", "verdict"}} for the claims of the ARES paper; the verdict
    is "reproduced", "partly", "not", or "n/a" when the models it needs are missing. Means and SEs are
    `stat`'s (accuracy SE: `seed_error`), SE_diff = sqrt(SE_a² + SE_b²). The rules:

    - C1 "The cold start makes length grow with difficulty": coldstart mean length easy < medium < hard
      → reproduced; only hard > easy → partly; else not (base lengths shown alongside).
    - C2 "RL shortens easy answers at equal or better accuracy" (aepo vs coldstart, easy): easy length
      lower AND easy accuracy ≥ coldstart − 2·SE_diff → reproduced; exactly one of the two → partly; else not.
    - C3 "Hard answers get deeper or more accurate" (aepo vs grpo, hard): accuracy higher by > 2·SE_diff
      → reproduced; hard length longer or accuracy higher (within noise) → partly; else not.
    - C4 "Each switch adds accuracy" (overall accuracy along the arms of CHAIN present, in that order,
      at least two): every step's Δ > 2·SE_diff → reproduced; every Δ > 0, or at least one Δ > 2·SE_diff
      and none < −2·SE_diff → partly; else not.
    - C5 "AEPO beats the baselines" (aepo − each arm not in CHAIN, overall accuracy): every Δ > 2·SE_diff
      → reproduced; every Δ > 0 → partly; else not.
    C1 and C2 need the two-stage `models["coldstart"]` (n/a for one-stage results)."""
    out = {}
    for cid, rule_fn in (("C1", _c1), ("C2", _c2), ("C3", _c3), ("C4", _c4), ("C5", _c5)):
        numbers, verdict = rule_fn(result)
        out[cid] = {"claim": CLAIMS[cid][0], "rule": CLAIMS[cid][1], "numbers": numbers, "verdict": verdict}
    return out


def claims_table(result: dict) -> str:
    """The markdown table of `claims`: claim | rule | numbers (± SE) | verdict, one row per claim."""
    lines = ["| claim | rule | numbers (± SE) | verdict |", "|---|---|---|---|"]
    for cid, c in claims(result).items():
        lines.append(f"| {cid} {c['claim']} | {c['rule']} | {c['numbers']} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def controller_table(result: dict) -> str:
    """α_d, τ, N_HE per bucket and reward inversions at the first, middle and last logged step,
    mean over seeds (the runs' `bucket/*` and `hwe/threshold` curves); blank where not logged."""
    keys = [f"alpha {lv}" for lv in LEVELS] + ["tau"] + [f"N_HE {lv}" for lv in LEVELS] + [f"inversions {lv}" for lv in LEVELS]
    tags = [f"bucket/{lv}/alpha" for lv in LEVELS] + ["hwe/threshold"] + [f"bucket/{lv}/n_hwe" for lv in LEVELS]
    tags += [f"bucket/{lv}/reward_inversions" for lv in LEVELS]
    lines = ["| arm | step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, arm in result.get("arms", {}).items():
        seeds = arm.get("seeds", [])
        steps = sorted({int(p[0]) for s in seeds for p in (s.get("curves") or {}).get("hwe/voters", [])})  # logged every step
        for k in sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []:
            cells = []
            for tag in tags:
                values = [v for s in seeds for st, v in (s.get("curves") or {}).get(tag, []) if int(st) == k and v is not None and v == v]
                cells.append(f"{statistics.fmean(values):.2f}" if values else "")
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    """ablation.png: accuracy and length by level (bars, ± std over seeds) and the training curves."""
    from ares_lit.tools.ablate_figures import figure as draw

    draw(result, Path(path))


def paper_figures(result: dict, out_dir: Path) -> list[Path]:
    """ares_length.png, ares_accuracy.png and ares_curves.png in out_dir (ares_lit/tools/ablate_figures.py)."""
    from ares_lit.tools.ablate_figures import paper_figures as draw

    return draw(result, Path(out_dir))
