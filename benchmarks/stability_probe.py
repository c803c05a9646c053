"""The callback behind benchmarks/bench_stability.py: one JSON line per training step.

Per step: the step's wall seconds (batch end to batch end, so the rollout, grading, scoring and
update are all in it), the trainer process's RSS and open file descriptors and threads, and the
RSS of its child processes (vLLM's engine core, when it runs in its own process), and the
step's generated tokens (`rollout/generated_tokens`), since step time follows response length.
"""

from __future__ import annotations

import json
import os
import time

import lightning.pytorch as pl
import psutil


class StabilityProbe(pl.Callback):
    def __init__(self, out_path: str) -> None:
        self.out_path, self.last = out_path, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now, me = time.monotonic(), psutil.Process()
        children = me.children(recursive=True)
        row = {
            "step": trainer.global_step, "seconds": now - self.last,
            "rss_mb": me.memory_info().rss / 2**20,
            "children_rss_mb": sum(c.memory_info().rss for c in children if c.is_running()) / 2**20,
            "open_files": len(os.listdir("/proc/self/fd")), "threads": me.num_threads(), "children": len(children),
            "generated_tokens": float(trainer.callback_metrics.get("rollout/generated_tokens", float("nan"))),
        }  # fmt: skip
        self.last = now
        with open(self.out_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
