"""`python -m ares_lit.tools.ablate`: the ARES ablation in miniature (docs/ares.md, docs/ablation.md).

    python -m ares_lit.tools.ablate --output_dir runs/ares                          # both stages (preset `ares`)
    python -m ares_lit.tools.ablate --output_dir /tmp/abl --quick                   # both stages, tiny model
    python -m ares_lit.tools.ablate --preset one_stage --output_dir runs/ablation   # the issue #15 setting

Presets (`PRESETS` in ablate_configs.py). `ares` (issue #24) runs the whole method on the
chained-arithmetic task (`builtin:chain`): the cold start (configs/coldstart.yaml +
configs/chain/coldstart.yaml) once, in `<output_dir>/coldstart/`; the base and cold-start models
evaluated; the gate (`GATE`: stops before RL when it fails, unless --no_gate); then every arm from
the cold-start export. `one_stage` (issue #15) trains the arms from the base model on builtin:math.

Arms (configs/ablation/*.yaml, each an overlay on the base configs; they differ only in the named
switches): `grpo` (accuracy rewards, fixed KL, ρ = 1), `dynamic_kl` (+ the κ_d controller and
window relaxation), `entropy_shaping` (+ the hierarchical entropy reward), `aepo` (+ HWE
branching). Baselines (configs/baselines/<name>.yaml, issue #23) are arms too: each is one
method added to the `grpo` arm (base + configs/ablation/grpo.yaml + the baseline's overlay). Every
arm is trained once per seed (`--seeds`, per arm or for all) with `python -m ares_lit fit`, one
after another, from a config this tool writes (`<output_dir>/runs/<arm>/seed<k>/config.yaml`: base
+ overlay + `--setting`, seeds, output paths, validation off; `--dry_run` writes them and stops).
Then every final model and the starting models are evaluated with `python -m ares_lit.evaluate`
on the held-out split: same problems, seeds and n.

Resumable: a finished fit (its `DONE` file) or evaluation (its `metrics.json`) is not rerun, and
an interrupted fit resumes from its `ckpt/last.ckpt` (deleted once the fit is done: the exported
model is what the evaluation needs). Each `DONE` records the sha256 of the weights the fit started
from (and the cold start's, of the weights it exported). Written to `--output_dir`: `ablation.json`
(settings, wall times, the evaluations by level, the gate, the curation by level, the TensorBoard
curves), `ablation.md` (the table with ± SE, the claims table, the gate, the curation, the
controllers), `ablation.png`, and for the two-stage preset `ares_length.png`, `ares_accuracy.png`
and `ares_curves.png` (ablate_report.py, ablate_figures.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ares_lit.tools.ablate_configs import (  # noqa: F401 (re-exported: the tool's public names)
    ARMS, BASELINES, COLDSTART_SETTINGS, EVAL, GATE, PRESETS, QUICK_REWARD, ROOT, SETTINGS, _set, gate,
    overlay_chain, resolve_chain, resolve_config, rollout_settings, run_config, weights_sha256,
)
from ares_lit.tools.ablate_report import LEVELS, _by_level, controller_table, curves, figure, summarize

__all__ = ["ARMS", "BASELINES", "GATE", "PRESETS", "SETTINGS", "gate", "overlay_chain", "resolve_config", "main"]

def _run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return time.perf_counter() - start


def _train(config: dict, run_dir: Path, label: str, before=dict, after=dict) -> dict:
    """`python -m ares_lit fit` of a run folder, once: skipped when its DONE exists, resumed from ckpt/last.ckpt when
    interrupted. DONE holds the seconds and the fields
    of `before()` (called before the fit) and `after()` (after it); the checkpoints go once done (optimizer state is
    GBs, and the export is what the evaluation needs)."""
    done = run_dir / "DONE"
    if not done.exists():
        path = _write_config(config, run_dir / "config.yaml")
        cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(path)]
        last = run_dir / "ckpt" / "last.ckpt"
        if last.exists():
            cmd.append(f"--ckpt_path={last}")
        print(f"[ablate] {label}{' (resuming)' if last.exists() else ''} ...", flush=True)
        fields = before()
        seconds = _run(cmd, run_dir / "fit.log")
        done.write_text(json.dumps({"seconds": seconds, **fields, **after()}))
        shutil.rmtree(run_dir / "ckpt", ignore_errors=True)
    return json.loads(done.read_text())


def fit(arm: str, seed: int, config: dict, out: Path) -> float:
    """Train one arm and seed; its DONE records the sha256 of the weights it started from."""
    run_dir = out / "runs" / arm / f"seed{seed}"
    start = config["model"]["init_args"]["model_path"]
    done = _train(run_config(config, run_dir, seed), run_dir, f"fit {arm} seed {seed}",
                  before=lambda: {"start_model_sha256": weights_sha256(start)})  # fmt: skip
    return float(done["seconds"])


def evaluate(name: str, model_path: str, config: dict, eval_cfg: dict, out: Path, engine: str, data: str = "builtin:math") -> dict:
    """`python -m ares_lit.evaluate` on the held-out split (skipped when its metrics.json exists)."""
    eval_dir = out / "eval" / name
    metrics = eval_dir / "metrics.json"
    if not metrics.exists():
        rc = rollout_settings(config)
        eval_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "ares_lit.evaluate", "--model_path", model_path, "--data", data,
            "--n", str(eval_cfg["n"]), "--max_tokens", str(eval_cfg["max_tokens"]), "--limit", str(eval_cfg["limit"]),
            "--batch_size", str(eval_cfg.get("batch_size", 16)),
            "--temperature", str(rc.get("temperature", 1.0)), "--top_p", str(rc.get("top_p", 1.0)),
            "--answer_fallback", rc.get("answer_fallback", "none"), "--engine", engine, "--seed", "0",
            "--output_dir", str(eval_dir), "--no_progress", "--no_like_run",
        ]  # fmt: skip
        print(f"[ablate] evaluate {name} ...", flush=True)
        _run(cmd, out / "eval" / f"{name}.log")
    return json.loads(metrics.read_text())


def _curation_by_level(config: dict, cache_dir: Path) -> dict:
    """Mean L_target(p), selected length and count per level of the curated set (levels from the pool's rows)."""
    from data_modules.readers import read_pool

    d = config["data"]["init_args"]
    files = sorted(cache_dir.glob("*/curated.jsonl"))
    if not files:
        return {}
    pool, _ = read_pool(d["path"], d.get("builtin_size", 192), d.get("builtin_seed", 0))
    level = {r["question"]: r.get("level") for r in pool.rows if isinstance(r, dict)}
    by: dict[str, list] = {}
    for line in files[-1].read_text().splitlines():
        row = json.loads(line)
        by.setdefault(level.get(row["question"], "unknown"), []).append(row)
    order = sorted(by, key=lambda lv: LEVELS.index(lv) if lv in LEVELS else len(LEVELS))
    return {lv: {"problems": len(by[lv]), "L_target": statistics.fmean(r["target_tokens"] for r in by[lv]),
                 "selected_tokens": statistics.fmean(r["response_tokens"] for r in by[lv]),
                 "pass_rate": statistics.fmean(r["p"] for r in by[lv])} for lv in order}  # fmt: skip


def coldstart_config(config: dict, cs_dir: Path) -> dict:
    """The cold start's config with this run's paths; validation off (evaluated afterwards, on the whole split)."""
    c = copy.deepcopy(config)
    t = c["trainer"]
    t["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": str(cs_dir), "name": "tb", "version": 0}}  # fmt: skip
    t["num_sanity_val_steps"], t["limit_val_batches"] = 0, 0
    for cb in t["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"] = {"dirpath": str(cs_dir / "ckpt"), "save_last": True, "every_n_train_steps": 10, "save_top_k": 0}
    c["model"]["init_args"]["export_dir"] = str(cs_dir / "hf_model")
    c["data"]["init_args"]["cache_dir"] = str(cs_dir / "curation")
    return c


def _write_config(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_coldstart(config: dict, cs_dir: Path, out: Path, preset: dict, eval_cfg: dict, engine: str, rl_config: dict) -> dict:
    """Stage 1, once for every arm: AdaCS (resumable: DONE, or resumed from ckpt/last.ckpt), then the base and the
    cold-start models evaluated on the held-out split, the gate, and the curation by level."""
    c = coldstart_config(config, cs_dir)
    info = _train(c, cs_dir, "cold start", after=lambda: {"model_sha256": weights_sha256(str(cs_dir / "hf_model"))})
    base_model = c["model"]["init_args"]["model_path"]
    levels = _by_level(evaluate("coldstart", str(cs_dir / "hf_model"), rl_config, eval_cfg, out, engine, preset["data"]))
    return {
        "fit_seconds": float(info["seconds"]),
        "model_path": str(cs_dir / "hf_model"),
        "model_sha256": info.get("model_sha256"),
        "base_eval": _by_level(evaluate("base", base_model, rl_config, eval_cfg, out, engine, preset["data"])),
        "eval": levels,
        "gate": gate(levels),
        "curation": _curation_by_level(c, cs_dir / "curation"),
    }


def write_report(result: dict, out: Path) -> str:
    """ablation.md (the table, the claims and the controllers) and the figures."""
    from ares_lit.tools import ablate_report as report

    parts = [summarize(result)]
    if "models" in result:
        parts += ["\nClaims of the paper (rules: docs/ares.md):\n", report.claims_table(result)]
    if result.get("coldstart"):
        cs = result["coldstart"]
        parts += ["\nCold-start gate: " + ("passed" if cs["gate"]["passed"] else "FAILED") + "; " + "; ".join(cs["gate"]["checks"]) + "\n"]
        rows = ["| level | problems | mean p | mean L_target(p) | mean selected tokens |", "|---|---|---|---|---|"]
        rows += [f"| {lv} | {v['problems']} | {v['pass_rate']:.2f} | {v['L_target']:.1f} | {v['selected_tokens']:.1f} |"
                 for lv, v in cs.get("curation", {}).items()]  # fmt: skip
        parts += ["\nAdaCS curation by level:\n", "\n".join(rows) + "\n"]
    parts += ["\nControllers (mean over seeds; docs/stages.md, \"The α controller and τ\"):\n", controller_table(result)]
    table = "".join(parts)
    (out / "ablation.md").write_text(table)
    figure(result, out / "ablation.png")
    if "models" in result:
        report.paper_figures(result, out)
    print(table, flush=True)
    return table


def _preset(args) -> dict:
    preset = copy.deepcopy(PRESETS[args.preset])
    mode = args.preset + ("_quick" if args.quick else "")
    preset["settings"] = dict(SETTINGS[mode])
    preset["eval"] = dict(EVAL[mode])
    preset["mode"] = mode
    if args.quick:
        preset["seeds"] = {"*": [0]}
    return preset


def _seeds(spec: str | None, arms: list[str], default: dict) -> dict[str, list[int]]:
    """Seeds per arm: `--seeds 0,1` (every arm) or `--seeds grpo=0,1,2;aepo=0,1,2;*=0,1`; default: the preset's."""
    table = dict(default)
    if spec:
        if "=" in spec:
            table = {}
            for part in spec.split(";"):
                arm, _, seeds = part.partition("=")
                table[arm.strip()] = [int(x) for x in seeds.split(",") if x.strip()]
        else:
            table = {"*": [int(x) for x in spec.split(",") if x.strip()]}
    out = {a: table.get(a, table.get("*")) for a in arms}
    missing = [a for a, v in out.items() if not v]
    if missing:
        raise SystemExit(f"--seeds: no seeds for arm(s) {', '.join(missing)}; add '*=0,1' or '<arm>=...'")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ares_lit.tools.ablate", description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True, help="runs, evaluations, ablation.json / .md / .png")
    p.add_argument("--preset", choices=sorted(PRESETS), default="ares",
                   help="ares: cold start once, then every arm from it on builtin:chain (docs/ares.md); "
                        "one_stage: the issue #15 setting, RL from the base model on builtin:math (docs/ablation.md)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="the preset on the tiny model: a few steps, a tiny evaluation (a smoke test)")
    p.add_argument("--seeds", default=None, help="seeds of every arm (0,1) or per arm ('grpo=0,1,2;aepo=0,1,2;*=0,1')")
    p.add_argument("--arms", default=None,
                   help="comma-separated arms, in training order: ablation arms (--overlays) and baselines (configs/baselines)")
    p.add_argument("--base", default=None, help="comma-separated AEPO config(s) the overlays apply to (default: the preset's)")
    p.add_argument("--overlays", default="configs/ablation", help="folder of <arm>.yaml overlays")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=YAML",
                   help="extra dotted override of every RL arm (e.g. trainer.max_steps=40, rollout.n=8); repeatable")  # fmt: skip
    p.add_argument("--coldstart_setting", action="append", default=[], metavar="KEY=YAML",
                   help="extra dotted override of the cold start (e.g. trainer.max_epochs=3); repeatable")
    p.add_argument("--dry_run", action="store_true",
                   help="write every run's resolved config (coldstart/config.yaml, runs/<arm>/seed<k>/config.yaml) and stop")
    p.add_argument("--no_gate", action="store_true", help="train the RL arms even when the cold-start gate fails")
    p.add_argument("--eval_n", type=int, default=None, help="samples per held-out problem")
    p.add_argument("--eval_limit", type=int, default=None, help="held-out problems per source (0 = all)")
    args = p.parse_args(argv)
    preset = _preset(args)
    settings, cs_settings = preset["settings"], dict(COLDSTART_SETTINGS.get(preset["mode"], {}))
    for target, items in ((settings, args.setting), (cs_settings, args.coldstart_setting)):
        for item in items:
            key, _, value = item.partition("=")
            if not _:
                raise SystemExit(f"--setting {item!r}: expected KEY=VALUE")
            target[key] = yaml.safe_load(value)
    eval_cfg = preset["eval"]
    eval_cfg.update({k: v for k, v in (("n", args.eval_n), ("limit", args.eval_limit)) if v is not None})
    arms = [a for a in (args.arms or preset["arms"]).split(",") if a]
    seeds = _seeds(args.seeds, arms, preset["seeds"])
    bases = [ROOT / b for b in (args.base.split(",") if args.base else preset["base"])]
    overlays = ROOT / args.overlays
    for a in arms:  # every config error before any training
        overlay_chain(a, overlays)
    out = Path(args.output_dir).resolve()
    coldstart_dir = out / "coldstart"
    if preset["coldstart"]:  # every arm starts from the one cold-start export
        settings["model.init_args.model_path"] = str(coldstart_dir / "hf_model")
    configs = {a: resolve_config(a, bases, overlays, settings) for a in arms}
    cs_config = resolve_chain([ROOT / c for c in preset["coldstart"]], cs_settings) if preset["coldstart"] else None
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:  # the tiny random model never solves arithmetic: a parity reward gives GRPO signal
        reward = out / "quick_reward.py"
        reward.write_text(QUICK_REWARD)
        for a in arms:
            _set(configs[a], "rollout.reward_fn", f"{reward}:parity")
    if args.dry_run:
        written = [_write_config(coldstart_config(cs_config, coldstart_dir), coldstart_dir / "config.yaml")] if cs_config else []
        for a in arms:
            for s in seeds[a]:
                run_dir = out / "runs" / a / f"seed{s}"
                written.append(_write_config(run_config(configs[a], run_dir, s), run_dir / "config.yaml"))
        print("[ablate] dry run: wrote\n" + "\n".join(f"  {p}" for p in written), flush=True)
        return {"configs": [str(p) for p in written]}
    started = time.perf_counter()
    result: dict = {"mode": preset["mode"], "preset": args.preset, "settings": settings, "eval": eval_cfg,
                    "data": preset["data"], "seeds": seeds, "arms": {}}  # fmt: skip
    engine = rollout_settings(configs[arms[0]]).get("engine", "vllm")
    if cs_config is not None:
        result["coldstart"] = run_coldstart(cs_config, coldstart_dir, out, preset, eval_cfg, engine, configs[arms[0]])
        result["models"] = {"base": result["coldstart"].pop("base_eval"), "coldstart": result["coldstart"].pop("eval")}
        gate = result["coldstart"]["gate"]
        print(f"[ablate] cold-start gate: {'passed' if gate['passed'] else 'FAILED'}: {'; '.join(gate['checks'])}", flush=True)
        if not gate["passed"] and not args.no_gate and not args.quick:
            (out / "ablation.json").write_text(json.dumps(result, indent=1))
            raise SystemExit("[ablate] the cold-start gate failed (docs/ares.md \"The gate\"): change the task or the cold-start "
                             "budget (--coldstart_setting), not the RL; --no_gate trains the arms anyway")  # fmt: skip
    for a in arms:
        for s in seeds[a]:
            fit(a, s, configs[a], out)
    start_model = configs[arms[0]]["model"]["init_args"]["model_path"]
    start_name = "coldstart" if cs_config is not None else "start"
    result["start"] = _by_level(evaluate(start_name, start_model, configs[arms[0]], eval_cfg, out, engine, preset["data"]))
    for a in arms:
        result["arms"][a] = {"seeds": []}
        for s in seeds[a]:
            run_dir = out / "runs" / a / f"seed{s}"
            metrics = evaluate(f"{a}_seed{s}", str(run_dir / "hf_model"), configs[a], eval_cfg, out, engine, preset["data"])
            done = json.loads((run_dir / "DONE").read_text())
            result["arms"][a]["seeds"].append({"seed": s, "fit_seconds": float(done["seconds"]), "start_model_sha256": done.get("start_model_sha256"),
                                               "eval": _by_level(metrics), "curves": curves(run_dir)})  # fmt: skip
    result["wall_seconds_this_invocation"] = time.perf_counter() - started
    result["fit_seconds_total"] = sum(x["fit_seconds"] for a in result["arms"].values() for x in a["seeds"])
    result["fit_seconds_total"] += result.get("coldstart", {}).get("fit_seconds", 0.0)
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    write_report(result, out)
    print(f"[ablate] wrote {out / 'ablation.json'}, ablation.md, figures; fits took {result['fit_seconds_total'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
