"""Flat vs branching rollouts on the embedded default (issue #14): the same n, seeds and data.

    .venv/bin/python benchmarks/bench_branching.py                 # 6 steps per arm
    .venv/bin/python benchmarks/bench_branching.py --steps 3 --output_dir runs/bench_branching

Each arm is a real `python -m ares_lit fit` (configs/aepo.yaml, configs/aepo_branching.yaml) with
validation off; the numbers are read back from its TensorBoard run. Per arm, means over steps 2..S
(the first step also starts the engine): generated tokens per step (every round, kept or dropped
groups; a child's own tokens), wall seconds per step (between consecutive `train/pg_loss`
events), vLLM's prefix-cache hit rate (prompt tokens found in the cache), and, over all steps,
the share of informative groups (0 < accuracy < 1, before the filter) overall and per bucket
(with branching the bucket is the phase-1 one). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"flat": "configs/aepo.yaml", "branching": "configs/aepo_branching.yaml"}


def run_arm(name: str, config: str, out: Path, steps: int) -> Path:
    cmd = [
        sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / config),
        f"--trainer.max_steps={steps}", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.logger.init_args.name={name}", "--model.init_args.export_dir=",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-4000:]}")
    return next((out / name).glob("version_*"))


def read(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])

    def values(tag):
        return [e.value for e in acc.Scalars(tag)] if tag in tags else []

    def later(tag):
        v = values(tag)[1:]
        return sum(v) / len(v) if v else float("nan")

    wall = [e.wall_time for e in acc.Scalars("train/pg_loss")]
    per_step = [b - a for a, b in zip(wall, wall[1:])]
    out = {
        "tokens": later("rollout/generated_tokens"),
        "wall": sum(per_step) / len(per_step) if per_step else float("nan"),
        "cache": later("rollout/prefix_cache_hit_rate"),
        "extra": {},
    }
    sampled, informative = 0.0, 0.0
    for b in ("easy", "medium", "hard"):
        s, share = values(f"groups/{b}/sampled"), values(f"groups/{b}/informative")
        k = sum(s)
        inf = sum(x * y for x, y in zip(s, share))
        out[b] = (inf / k if k else float("nan"), int(k))
        sampled, informative = sampled + k, informative + inf
        points = values(f"branch/{b}/points")
        if points:
            out["extra"][b] = (sum(points) / len(points), sum(values(f"branch/{b}/extra_tokens")) / len(points))
    out["informative"] = informative / sampled if sampled else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--output_dir", default=None, help="TensorBoard runs (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_branching_"))
    results = {}
    for name, config in ARMS.items():
        print(f"running {name} ({config}), {args.steps} steps ...", flush=True)
        results[name] = read(run_arm(name, config, out, args.steps))
    print(f"\n== {args.steps} steps per arm (the configs' vLLM engine); per-step means over steps 2..{args.steps} ==")
    print("arm        tok/step  s/step  cache hit | informative groups: all    easy         medium       hard")
    for name, r in results.items():
        cells = "  ".join(f"{r[b][0]:5.2f} ({r[b][1]:3d})" for b in ("easy", "medium", "hard"))
        print(f"{name:9s} {r['tokens']:9.0f} {r['wall']:7.1f} {r['cache']:9.2f} | {r['informative']:22.2f}   {cells}")
    extra = results["branching"]["extra"]
    if extra:
        print("branching: points / extra child tokens per prompt, by phase-1 bucket: "
              + ", ".join(f"{b} {p:.2f} / {t:.1f}" for b, (p, t) in extra.items()))  # fmt: skip
    print(f"runs: {out}")


if __name__ == "__main__":
    main()
