"""Full fine-tuning against LoRA at the default AEPO shape: memory, step phases, sync, checkpoint, parameters.

    python benchmarks/bench_lora.py                      # SmolLM2-135M, vLLM engine, 4 steps per arm
    python benchmarks/bench_lora.py --steps 3 --arms full,lora --engine hf

Each arm is one real `python -m ares_lit fit --config configs/aepo.yaml` run (the default AEPO
shape: 4 prompts x 4 samples, 128 new tokens, KL to the reference, one update per step), in its
own process, with validation off and a checkpoint at the last step:
  - full:        every weight trains; the reference is a frozen second copy;
  - full_no_ref: every weight trains, no KL term, so no reference copy (isolates its memory);
  - lora:        a LoRA adapter, r 16, alpha 32, all linear layers; the reference is the
                 adapter-disabled policy (no copy).
Printed per arm: peak RSS of the run's process (ru_maxrss of the child), mean seconds per step
and per phase (TensorBoard's time/* panels, first step excluded; a step is weight sync + generation +
grading + both scoring passes + update), the checkpoint's size,
trainable / total parameters, and the bytes of the reference copy that LoRA does not build.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PHASES = ("weight_sync", "generation", "score_policy", "score_reference", "update")
STEP = ("weight_sync", "generation", "grading", "logprobs", "update")  # time/logprobs = both scoring passes
ARMS = ("full", "full_no_ref", "lora")
# Peak RSS of one run: ru_maxrss of the wrapper's only child (RUSAGE_CHILDREN of this script would
# keep the largest arm's peak for every later arm).
_PEAK = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def _overlay(name: str, steps: int, out: Path) -> Path:
    """The arm's callbacks (no DynamicKL without a KL term), a checkpoint at the last step, and the LoRA block."""
    kl = "" if name == "full_no_ref" else "    - class_path: callbacks.dynamic_kl.DynamicKLCallback\n"
    text = (
        f"trainer:\n  callbacks:\n{kl}"
        "    - class_path: callbacks.entropy_logging.EntropyLoggingCallback\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{save_last: true, every_n_train_steps: {steps}, save_top_k: 0, dirpath: {out / 'ckpt'}}}\n"
        "model:\n  init_args:\n    export_dir: ''\n"
    )
    if name == "full_no_ref":
        text += "    use_kl_loss: false\n"
    if name == "lora":
        text += "    lora: {r: 16, alpha: 32, target_modules: all-linear}\n"
    path = out / "overlay.yaml"
    path.write_text(text)
    return path


def run_arm(name: str, steps: int, engine: str, work: Path) -> dict:
    out = work / name
    out.mkdir(parents=True)
    args = [
        sys.executable, "-c", _PEAK, sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"),
        "--config", str(_overlay(name, steps, out)), f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--rollout.engine={engine}",
    ]  # fmt: skip
    if engine == "hf":
        args.append("--rollout.engine_kwargs={}")  # configs/aepo.yaml's kv_cache_gb is vLLM's
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    res = subprocess.run(args, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (out / "stdout.log").write_text(res.stdout)
    (out / "stderr.log").write_text(res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"arm {name} failed (rc {res.returncode}); see {out}/stderr.log:\n{res.stderr[-3000:]}")
    peak_kb = int(re.findall(r"PEAK_KB (\d+)", res.stderr)[-1])
    return {"name": name, "wall": wall, "peak_rss_gb": peak_kb / 2**20, **_panels(out), **_sizes(out), **_params(res.stdout, name)}


def _panels(out: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((out / "runs" / "aepo").glob("version_*"))), size_guidance={"scalars": 0})
    acc.Reload()
    result = {}
    for phase in set(PHASES) | set(STEP):
        tag = f"time/{phase}"
        values = [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)] if tag in acc.Tags()["scalars"] else []
        result[phase] = statistics.mean(values[1:]) if len(values) > 1 else 0.0  # no reference pass: 0
    result["step"] = sum(result[p] for p in STEP)
    return result


def _sizes(out: Path) -> dict:
    ckpt = out / "ckpt" / "last.ckpt"
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) if ckpt.is_dir() else ckpt.stat().st_size
    return {"ckpt_mb": size / 2**20}


def _params(stdout: str, name: str) -> dict:
    match = re.search(r"LoRA r=\d+: ([\d,]+) trainable parameters of ([\d,]+)", stdout)
    if match:
        trainable, total = (int(g.replace(",", "")) for g in match.groups())
        return {"trainable": trainable, "total": total}
    from ares_lit.models.resolve import resolve_model_path
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path("builtin:smollm2-135m-instruct")))
    n = sum(p.numel() for p in model.parameters())
    return {"trainable": n, "total": n, "reference_mb": n * 4 / 2**20 if name == "full" else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--engine", default="vllm", choices=("vllm", "hf"))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--work_dir", default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_lora-"))
    rows = [run_arm(name, args.steps, args.engine, work) for name in args.arms.split(",")]
    print(f"\nSmolLM2-135M-Instruct fp32, configs/aepo.yaml shape, engine {args.engine}, {args.steps} steps per arm "
          f"(means exclude step 1); runs in {work}")
    head = ("arm", "peak RSS GB", "s/step", *[f"{p} s" for p in PHASES], "ckpt MB", "trainable", "total", "wall s")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = (r["name"], f"{r['peak_rss_gb']:.2f}", f"{r['step']:.1f}", *[f"{r[p]:.2f}" for p in PHASES],
                 f"{r['ckpt_mb']:.1f}", f"{r['trainable']:,}", f"{r['total']:,}", f"{r['wall']:.0f}")
        print("| " + " | ".join(cells) + " |")
    ref = next((r.get("reference_mb") for r in rows if r.get("reference_mb")), None)
    if ref:
        print(f"\nreference copy that LoRA does not build: {ref:.0f} MB of fp32 weights")


if __name__ == "__main__":
    main()
