"""`python -m ares_lit.tools.ablate`: the ARES ablation in miniature (docs/ablation.md; issue #15).

    python -m ares_lit.tools.ablate --output_dir runs/ablation            # the measured setting
    python -m ares_lit.tools.ablate --output_dir /tmp/abl --quick          # 1 step per arm, tiny model

Arms (configs/ablation/*.yaml, each an overlay on configs/aepo.yaml; they differ only in the named
switches): `grpo` (accuracy rewards, fixed KL, ρ = 1), `dynamic_kl` (+ the κ_d controller and
window relaxation), `entropy_shaping` (+ the hierarchical entropy reward), `aepo` (+ HWE
branching). Baselines (configs/baselines/<name>.yaml, issue #23) are arms too: each is one
method added to the `grpo` arm (base + configs/ablation/grpo.yaml + the baseline's overlay), so
`--arms grpo,aepo,clip_cov,forking_tokens` compares them in one table. Every arm is trained once per seed with `python -m ares_lit fit`, one after another,
from a config this tool writes (`<output_dir>/runs/<arm>/seed<k>/config.yaml`: base + overlay +
`--setting`, seeds, output paths, checkpoints every step, validation off). Then every final
model and the starting model are evaluated with `python -m ares_lit.evaluate` on the held-out
split: same problems, seeds and n.

Resumable: a finished fit (its `DONE` file) or evaluation (its `metrics.json`) is not rerun, and
an interrupted fit resumes from its `ckpt/last.ckpt` (saved every 5 steps, deleted once the fit
is done: the exported model is what the evaluation needs). Written to `--output_dir`: `ablation.json`
(settings, wall times, per arm and seed the evaluation by level, and the TensorBoard curves),
`ablation.md` (the table: mean ± spread over seeds, and the controllers' α_d, τ, N_HE and reward
inversions at the first, middle and last step), and `ablation.png` (accuracy and mean
response length per difficulty level and arm; per-step `bucket/*/accuracy` and
`bucket/*/response_length`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

__all__ = ["ARMS", "BASELINES", "SETTINGS", "overlay_chain", "resolve_config", "main"]

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("grpo", "dynamic_kl", "entropy_shaping", "aepo")
LEVELS = ("easy", "medium", "hard")

# The measured setting (docs/ablation.md), applied on top of configs/aepo.yaml + the arm's overlay:
# dotted keys (`rollout.n`, `model.init_args.lr`); `callbacks.<ClassName>.<arg>` addresses an entry of
# trainer.callbacks by class (`callbacks.RolloutCallback.<arg>` means `rollout.<arg>`).
SETTINGS: dict[str, dict] = {
    "default": {
        "trainer.max_steps": 20,
        "model.init_args.lr": 1.0e-5,
    },
    "quick": {  # + a parity reward_fn (QUICK_REWARD): a smoke test of the tool, not an experiment
        "trainer.max_steps": 1,
        "model.init_args.model_path": "builtin:tiny-qwen2",
        "model.init_args.mini_batch_size": 8,
        "data.init_args.batch_size": 2,
        "data.init_args.max_prompt_length": 96,
        "rollout.engine": "hf",
        "rollout.engine_kwargs": {},
        "rollout.max_new_tokens": 8,
    },
}
QUICK_REWARD = """def parity(responses, answers):
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
"""
EVAL = {"default": {"n": 4, "max_tokens": 128, "limit": 0}, "quick": {"n": 2, "max_tokens": 8, "limit": 2}}


def _merge(base: dict, over: dict) -> dict:
    """jsonargparse's layering of configs: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _set(config: dict, key: str, value) -> None:
    if key.startswith("callbacks.RolloutCallback."):  # the rollout callback's settings live in `rollout:`
        key = "rollout." + key[len("callbacks.RolloutCallback."):]
    parts = key.split(".")
    if parts[0] == "callbacks":
        _, cls, arg = parts
        entries = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[-1] == cls]
        if not entries:
            raise ValueError(f"--setting {key}: no {cls} in trainer.callbacks")
        entries[0].setdefault("init_args", {})[arg] = value
        return
    node = config
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def rollout_settings(config: dict) -> dict:
    """The rollout callback's init_args: the `rollout:` group (short or class_path form)."""
    rollout = config.get("rollout") or {}
    return rollout.get("init_args", rollout) if "class_path" in rollout else rollout


BASELINES = ROOT / "configs" / "baselines"


def overlay_chain(arm: str, overlays: Path) -> list[Path]:
    """The overlays of `arm`: `<overlays>/<arm>.yaml` (an ablation arm), or, for a baseline, the
    `grpo` arm then `configs/baselines/<arm>.yaml` (a baseline is one method added to GRPO)."""
    own = overlays / f"{arm}.yaml"
    if own.exists():
        return [own]
    if (BASELINES / f"{arm}.yaml").exists():
        return [overlays / "grpo.yaml", BASELINES / f"{arm}.yaml"]
    known = sorted({p.stem for p in overlays.glob("*.yaml")} | {p.stem for p in BASELINES.glob("*.yaml")})
    raise SystemExit(f"no overlay for arm {arm!r} ({own} or {BASELINES / arm}.yaml); arms are {', '.join(known)}")


def resolve_config(arm: str, base: Path, overlays: Path, settings: dict | None = None) -> dict:
    """configs/aepo.yaml + the arm's overlays (`overlay_chain`) (+ dotted `settings`), merged as the CLI would."""
    config = yaml.safe_load(base.read_text())
    for overlay in overlay_chain(arm, overlays):
        config = _merge(config, yaml.safe_load(overlay.read_text()))
    for k, v in (settings or {}).items():
        _set(config, k, v)
    return config


def run_config(config: dict, run_dir: Path, seed: int) -> dict:
    """The arm's config for one seed, with this run's paths; validation off (evaluated afterwards)."""
    c = copy.deepcopy(config)
    c["seed_everything"] = seed
    _set(c, "rollout.seed", seed)
    t = c["trainer"]
    t["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(run_dir), "name": "tb", "version": 0}}  # fmt: skip
    t["num_sanity_val_steps"] = 0
    t["limit_val_batches"] = 0
    for cb in t["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"] = {"dirpath": str(run_dir / "ckpt"), "save_last": True, "every_n_train_steps": 5, "save_top_k": 0}
    c["model"]["init_args"]["export_dir"] = str(run_dir / "hf_model")
    return c


def _run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return time.perf_counter() - start


def fit(arm: str, seed: int, config: dict, out: Path) -> float:
    """Train one arm and seed (skipped when done, resumed from last.ckpt when interrupted)."""
    run_dir = out / "runs" / arm / f"seed{seed}"
    done = run_dir / "DONE"
    if done.exists():
        return float(json.loads(done.read_text())["seconds"])
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(run_config(config, run_dir, seed), sort_keys=False))
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(path)]
    last = run_dir / "ckpt" / "last.ckpt"
    if last.exists():
        cmd.append(f"--ckpt_path={last}")
    print(f"[ablate] fit {arm} seed {seed}{' (resuming)' if last.exists() else ''} ...", flush=True)
    seconds = _run(cmd, run_dir / "fit.log")
    done.write_text(json.dumps({"seconds": seconds}))
    import shutil

    shutil.rmtree(run_dir / "ckpt", ignore_errors=True)  # the export is what the evaluation needs; optimizer state is GBs
    return seconds


def evaluate(name: str, model_path: str, config: dict, eval_cfg: dict, out: Path, engine: str) -> dict:
    """`python -m ares_lit.evaluate` on the held-out split (skipped when its metrics.json exists)."""
    eval_dir = out / "eval" / name
    metrics = eval_dir / "metrics.json"
    if not metrics.exists():
        rc = rollout_settings(config)
        eval_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "ares_lit.evaluate", "--model_path", model_path, "--data", "builtin:math",
            "--n", str(eval_cfg["n"]), "--max_tokens", str(eval_cfg["max_tokens"]), "--limit", str(eval_cfg["limit"]),
            "--temperature", str(rc.get("temperature", 1.0)), "--top_p", str(rc.get("top_p", 1.0)),
            "--answer_fallback", rc.get("answer_fallback", "none"), "--engine", engine, "--seed", "0",
            "--output_dir", str(eval_dir), "--no_progress", "--no_like_run",
        ]  # fmt: skip
        print(f"[ablate] evaluate {name} ...", flush=True)
        _run(cmd, out / "eval" / f"{name}.log")
    return json.loads(metrics.read_text())


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
    levels = metrics["groups"].get("level", {})
    row = {"all": {"accuracy": metrics["overall"]["avg_at_n"], "length": metrics["overall"]["mean_length"]}}
    for lv in LEVELS:
        if lv in levels:
            row[lv] = {"accuracy": levels[lv]["avg_at_n"], "length": levels[lv]["mean_length"]}
    return row


def _spread(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(result: dict) -> str:
    """The markdown table: accuracy (avg@n) and mean length per level, mean ± std over seeds."""
    cols = ["all", *LEVELS]
    lines = ["| model | " + " | ".join(f"acc {c}" for c in cols) + " | " + " | ".join(f"len {c}" for c in cols) + " | fit min |",
             "|---" * (2 * len(cols) + 2) + "|"]  # fmt: skip
    rows = [("start", [result["start"]], None)] + [(a, result["arms"][a]["seeds"], result["arms"][a]) for a in result["arms"]]
    for name, seeds, arm in rows:
        cells = []
        for key in ("accuracy", "length"):
            for c in cols:
                m, s = _spread([x["eval"].get(c, {}).get(key) for x in seeds] if arm else [seeds[0].get(c, {}).get(key)])
                fmt = "{:.3f}" if key == "accuracy" else "{:.1f}"
                if m != m:  # no problem of this level in the evaluation
                    cells.append("–")
                else:
                    cells.append(fmt.format(m) + ("" if arm is None else " ± " + fmt.format(s)))
        minutes = "" if arm is None else f"{statistics.fmean(x['fit_seconds'] for x in seeds) / 60:.1f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(lines) + "\n"


def controller_table(result: dict) -> str:
    """α_d, τ, N_HE per bucket and reward inversions at the first, middle and last logged step,
    mean over seeds (the runs' `bucket/*` and `hwe/threshold` curves); blank where not logged."""
    keys = [f"alpha {lv}" for lv in LEVELS] + ["tau"] + [f"N_HE {lv}" for lv in LEVELS] + [f"inversions {lv}" for lv in LEVELS]
    tags = [f"bucket/{lv}/alpha" for lv in LEVELS] + ["hwe/threshold"] + [f"bucket/{lv}/n_hwe" for lv in LEVELS]
    tags += [f"bucket/{lv}/reward_inversions" for lv in LEVELS]
    lines = ["| arm | step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, arm in result["arms"].items():
        seeds = arm["seeds"]
        steps = sorted({int(p[0]) for s in seeds for p in s["curves"].get("hwe/voters", [])})  # logged every step
        for k in sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []:
            cells = []
            for tag in tags:
                values = [v for s in seeds for st, v in s["curves"].get(tag, []) if int(st) == k]
                cells.append(f"{statistics.fmean(values):.2f}" if values else "")
            lines.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = ["start", *result["arms"]]
    width = 0.8 / len(names)
    for ax, key, title in ((axes[0, 0], "accuracy", "held-out accuracy (avg@n)"), (axes[0, 1], "length", "mean response length")):
        for i, name in enumerate(names):
            seeds = [{"eval": result["start"]}] if name == "start" else result["arms"][name]["seeds"]
            stats = [_spread([s["eval"].get(lv, {}).get(key) for s in seeds]) for lv in LEVELS]
            ax.bar([j + i * width for j in range(len(LEVELS))], [m for m, _ in stats], width, yerr=[s for _, s in stats], label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(LEVELS))], LEVELS)
        ax.set_title(title)
        ax.legend(fontsize=8)
    for ax, metric in ((axes[1, 0], "accuracy"), (axes[1, 1], "response_length")):
        for name in result["arms"]:
            for lv, style in zip(LEVELS, ("-", "--", ":")):
                tag = f"bucket/{lv}/{metric}"
                runs = [s["curves"].get(tag, []) for s in result["arms"][name]["seeds"]]
                steps = sorted({int(p[0]) for r in runs for p in r})
                if steps:
                    mean = [statistics.fmean(v for r in runs for st, v in r if int(st) == k) for k in steps]
                    ax.plot(steps, mean, style, label=f"{name} {lv}")
        ax.set_title(f"training: bucket/*/{metric} (mean over seeds)")
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ares_lit.tools.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True, help="runs, evaluations, ablation.json / .md / .png")
    p.add_argument("--quick", action="store_true", help="1 step per arm on the tiny model, a tiny evaluation (a smoke test)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1; --quick: 0)")
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated arms, in training order: ablation arms (--overlays) and baselines (configs/baselines)")
    p.add_argument("--base", default="configs/aepo.yaml", help="the AEPO config the overlays apply to")
    p.add_argument("--overlays", default="configs/ablation", help="folder of <arm>.yaml overlays")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=YAML",
                   help="extra dotted override (e.g. trainer.max_steps=40, rollout.n=8); repeatable")  # fmt: skip
    p.add_argument("--eval_n", type=int, default=None, help="samples per held-out problem")
    p.add_argument("--eval_limit", type=int, default=None, help="held-out problems per source (0 = all)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "default"
    settings = dict(SETTINGS[mode])
    for item in args.setting:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--setting {item!r}: expected KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    eval_cfg = dict(EVAL[mode])
    eval_cfg.update({k: v for k, v in (("n", args.eval_n), ("limit", args.eval_limit)) if v is not None})
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    arms = [a for a in args.arms.split(",") if a]
    base, overlays = ROOT / args.base, ROOT / args.overlays
    for a in arms:  # every config error before any training
        overlay_chain(a, overlays)
    configs = {a: resolve_config(a, base, overlays, settings) for a in arms}
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:  # the tiny random model never solves arithmetic: a parity reward gives GRPO signal
        reward = out / "quick_reward.py"
        reward.write_text(QUICK_REWARD)
        for a in arms:
            _set(configs[a], "rollout.reward_fn", f"{reward}:parity")
    started = time.perf_counter()
    result: dict = {"mode": mode, "settings": settings, "eval": eval_cfg, "seeds": seeds, "arms": {}}
    for a in arms:
        for s in seeds:
            fit(a, s, configs[a], out)
    engine = rollout_settings(configs[arms[0]]).get("engine", "vllm")
    start_model = configs[arms[0]]["model"]["init_args"]["model_path"]
    result["start"] = _by_level(evaluate("start", start_model, configs[arms[0]], eval_cfg, out, engine))
    for a in arms:
        result["arms"][a] = {"seeds": []}
        for s in seeds:
            run_dir = out / "runs" / a / f"seed{s}"
            metrics = evaluate(f"{a}_seed{s}", str(run_dir / "hf_model"), configs[a], eval_cfg, out, engine)
            fit_s = float(json.loads((run_dir / "DONE").read_text())["seconds"])
            result["arms"][a]["seeds"].append({"seed": s, "fit_seconds": fit_s, "eval": _by_level(metrics), "curves": curves(run_dir)})
    result["wall_seconds_this_invocation"] = time.perf_counter() - started
    result["fit_seconds_total"] = sum(x["fit_seconds"] for a in result["arms"].values() for x in a["seeds"])
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    table = summarize(result) + "\nControllers (mean over seeds; docs/stages.md, \"The α controller and τ\"):\n\n" + controller_table(result)
    (out / "ablation.md").write_text(table)
    figure(result, out / "ablation.png")
    print(table, flush=True)
    print(f"[ablate] wrote {out / 'ablation.json'}, ablation.md, ablation.png; fits took {result['fit_seconds_total'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
