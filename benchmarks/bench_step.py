"""One whole RL step, side by side: ares_lit (hf engine, vllm engine) against TRL's GRPOTrainer.

    pip install -e ".[bench]"            # TRL, for this benchmark only
    python benchmarks/bench_step.py      # 128 and 256 new tokens, 4 steps per arm (first excluded)
    python benchmarks/bench_step.py --max-tokens 128 --steps 3 --arms ares_hf,trl

Workload (`step_protocol.py`): SmolLM2-135M-Instruct in fp32 on the CPU, the same 4 arithmetic
prompts x 4 samples every step, temperature 1.0, a KL term (0.01, k3) to a frozen reference, one
optimizer update per step in micro-batches of 8 (ares_lit: the default's token budgets). Each arm
runs in its own worker process; the arms are stepped in turn (arm A step 1, arm B step 1, ...),
so load drift on the machine hits all of them alike.

Printed per arm: seconds per step (mean of steps 2..S, first excluded), generated tokens per
step, seconds per 1k generated tokens, each phase's seconds, the padding share of each forward
pass kind, the achieved GFLOP/s of the scoring and update passes against a plain fp32 matmul
timed here, and the ratio of the step time to TRL's. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import step_protocol as sp  # noqa: E402

ARMS = {
    "ares_hf": [str(HERE / "step_arm_ares.py"), "--engine", "hf"],
    "trl": [str(HERE / "step_arm_trl.py")],
    "ares_vllm": [str(HERE / "step_arm_ares.py"), "--engine", "vllm"],
}
PHASES = ("generation", "score_policy", "score_reference", "update", "other")


class Worker:
    def __init__(self, name: str, max_tokens: int, steps: int, log_dir: Path, extra: list[str]) -> None:
        self.name = name
        self.log = open(log_dir / f"{name}_{max_tokens}.log", "w")
        cmd = [sys.executable, *ARMS[name], "--max-tokens", str(max_tokens), "--steps", str(steps), *extra]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)

    def read(self, event: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                msg = json.loads(line[6:])
                if msg["event"] == event:
                    return msg
            else:
                self.log.write(line)
        raise RuntimeError(f"arm {self.name} ended before its {event!r} line; see {self.log.name}")

    def step(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.read("step")

    def close(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def matmul_gflops(threads: int) -> float:
    """A plain fp32 matmul shaped like the model's MLP ([4096, 576] @ [576, 1536]), best of 20."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(4096, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 576 * 1536 / best / 1e9


def summarize(name: str, reports: list[dict], dims: dict) -> dict:
    measured = reports[1:] if len(reports) > 1 else reports  # the first step warms caches and allocators
    mean = lambda xs: statistics.fmean(xs) if xs else 0.0  # noqa: E731
    out = {
        "arm": name,
        "s_per_step": mean([r["wall"] for r in measured]),
        "tokens": mean([r["gen_tokens"] for r in measured]),
        "phases": {p: mean([r["phases"].get(p, 0.0) for r in measured]) for p in PHASES},
        "pad": {},
        "gflops": {},
    }
    out["s_per_1k"] = 1000 * out["s_per_step"] / max(out["tokens"], 1)
    for kind in ("score_policy", "score_reference", "update"):
        real = sum(r["passes"].get(kind, {}).get("real", 0) for r in measured)
        computed = sum(r["passes"].get(kind, {}).get("computed", 0) for r in measured)
        head = sum(r["passes"].get(kind, {}).get("response", 0) for r in measured)
        seconds = sum(r["phases"].get(kind, 0.0) for r in measured)
        if computed:
            out["pad"][kind] = 1 - real / computed
            flops = sp.pass_flops(dims, computed, head, backward=kind == "update")
            out["gflops"][kind] = flops / max(seconds, 1e-9) / 1e9
    return out


def print_table(max_tokens: int, rows: list[dict], peak: float) -> None:
    trl = next((r for r in rows if r["arm"] == "trl"), None)
    print(f"\n== max_new_tokens {max_tokens}: mean of steps 2..{len(rows[0]['steps'])} ==")
    print(f"{'arm':<10} {'s/step':>7} {'tok/step':>8} {'s/1k tok':>8} {'vs TRL':>7} | "
          + " ".join(f"{p:>9}" for p in ("gen", "score_pol", "score_ref", "update", "other")))
    for r in rows:
        ratio = f"{r['s_per_step'] / trl['s_per_step']:.2f}x" if trl else "-"
        print(f"{r['arm']:<10} {r['s_per_step']:7.1f} {r['tokens']:8.0f} {r['s_per_1k']:8.1f} {ratio:>7} | "
              + " ".join(f"{r['phases'][p]:9.1f}" for p in PHASES))
    print(f"padding share of computed positions, and achieved GFLOP/s (plain fp32 matmul here: {peak:.0f} GFLOP/s)")
    for r in rows:
        parts = []
        for kind in ("score_policy", "score_reference", "update"):
            if kind in r["pad"]:
                g = r["gflops"][kind]
                parts.append(f"{kind} pad {100 * r['pad'][kind]:4.1f}% {g:5.0f} GFLOP/s ({100 * g / peak:3.0f}%)")
            else:
                parts.append(f"{kind} -")
        print(f"  {r['arm']:<10} " + " | ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", default="128,256", help="comma-separated max_new_tokens shapes")
    ap.add_argument("--steps", type=int, default=4, help="steps per arm; the first is excluded from the means")
    ap.add_argument("--arms", default="ares_hf,trl,ares_vllm", help=f"comma-separated, of {sorted(ARMS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every arm (0 = torch's default)")
    ap.add_argument("--ares-args", default="", help="extra arguments for the ares arms, e.g. '--micro-tokens 0'")
    ap.add_argument("--log-dir", default="bench_step_logs", help="each worker's stderr goes here")
    ap.add_argument("--json", default="", help="also write the summaries to this file")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or args.steps < 1:
        ap.error(f"unknown arms {unknown} (known: {sorted(ARMS)}) or --steps < 1")
    if "trl" in arms:
        try:
            import trl  # noqa: F401
        except ImportError:
            ap.error('the trl arm needs TRL: pip install -e ".[bench]"')
    from transformers import AutoConfig

    from ares_lit.models.resolve import resolve_model_path

    dims = sp.model_dims(AutoConfig.from_pretrained(resolve_model_path(sp.MODEL)))
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    peak = matmul_gflops(args.threads)
    threads = ["--threads", str(args.threads)] if args.threads else []
    print(f"bench_step: arms {arms}, {args.steps} steps each, {sp.PROMPTS} prompts x {sp.N}, T={sp.TEMPERATURE}, "
          f"fp32 CPU, {os.cpu_count()} cores; worker logs in {log_dir}/", flush=True)
    results = {}
    for max_tokens in [int(x) for x in args.max_tokens.split(",")]:
        workers = []
        try:
            for name in arms:
                extra = threads + (args.ares_args.split() if name.startswith("ares") else [])
                workers.append(Worker(name, max_tokens, args.steps, log_dir, extra))
            for w in workers:
                w.read("ready")
            reports = {w.name: [] for w in workers}
            for step in range(args.steps):
                for w in workers:  # interleaved: every arm's step i before any arm's step i + 1
                    r = w.step()
                    reports[w.name].append(r)
                    print(f"  [{max_tokens}] step {step + 1} {w.name:<10} {r['wall']:6.1f} s  {r['gen_tokens']:5d} tokens", flush=True)
        finally:
            for w in workers:
                w.close()
        rows = []
        for name in arms:
            row = summarize(name, reports[name], dims)
            row["steps"] = reports[name]
            rows.append(row)
        print_table(max_tokens, rows, peak)
        results[max_tokens] = rows
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": peak, "results": results}, indent=1))


if __name__ == "__main__":
    main()
