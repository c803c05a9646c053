"""bf16-mixed, the first update: how far from on-policy, by scoring layout, and what the exact layout costs.

    python benchmarks/bench_precision.py                       # SmolLM2-135M, hf engine, one step per layout
    python benchmarks/bench_precision.py --model builtin:tiny-qwen2

At step 0 the policy, the old policy and the reference are the same weights, so in exact
arithmetic the first update's PPO ratio is 1 (`train/ppo_kl` = 0) and the k3 KL is 0 (`train/kl`).
Under bf16-mixed, matmul kernels that choose their blocking by batch shape (cuBLAS) are not
batch-invariant: the no-grad scoring passes (old and reference log-probs) batch rows by
`max_tokens_per_score_batch`, the update by `max_tokens_per_micro_batch`, and different row
groupings can give slightly different bf16 results (on our CPU, oneDNN's did not; docs/scale-out.md). Each layout is one real
`python -m ares_lit fit --config configs/aepo.yaml` step in its own process (bf16-mixed,
validation off); printed: the two step-0 panels, and the scoring passes' seconds (`time/logprobs`).
  - default: the configs/aepo.yaml budgets, 512 (update) and 1024 (scoring);
  - equal:   1024 -> 512, so scoring groups rows exactly as the update does.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"default": [], "equal": ["--model.init_args.max_tokens_per_score_batch=512"]}


def run(layout: str, model: str, work: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = work / layout
    out.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"),
        "--trainer.precision=bf16-mixed", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", "--rollout.engine=hf",
        "--rollout.engine_kwargs={}", f"--model.init_args.model_path={model}", "--model.init_args.export_dir=",
        f"--trainer.logger.init_args.save_dir={out / 'runs'}", *LAYOUTS[layout],
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=out, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{layout} failed:\n{res.stderr[-3000:]}")
    acc = EventAccumulator(str(next((out / "runs" / "aepo").glob("version_*"))), size_guidance={"scalars": 0})
    acc.Reload()
    first = {tag: acc.Scalars(tag)[0].value for tag in ("train/ppo_kl", "train/kl", "time/logprobs", "time/update")}
    return {"layout": layout, **first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_precision-"))
    rows = [run(layout, args.model, work) for layout in LAYOUTS]
    print(f"\n{args.model}, bf16-mixed, configs/aepo.yaml step 0 (hf engine); runs in {work}")
    print("| layout | update / scoring tokens | train/ppo_kl | train/kl | time/logprobs s | time/update s |\n|---|---|---|---|---|---|")
    budgets = {"default": "512 / 1024", "equal": "512 / 512"}
    for r in rows:
        print(f"| {r['layout']} | {budgets[r['layout']]} | {r['train/ppo_kl']:.3g} | {r['train/kl']:.3g} | "
              f"{r['time/logprobs']:.2f} | {r['time/update']:.2f} |")


if __name__ == "__main__":
    main()
