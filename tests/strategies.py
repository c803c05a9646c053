"""A test-only DeepSpeed strategy that runs on the CPU (gloo), for ZeRO-2/3 tests without a GPU.

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA, although DeepSpeed itself
initialises ZeRO-2 and ZeRO-3 on the CPU. Three changes make it run (ENVIRONMENT.md, "DeepSpeed"):

1. `setup_environment` skips DeepSpeedStrategy's CUDA check and does what DDPStrategy does;
2. `_validate_device_index_selection` (which expects CUDA indices) is patched to a no-op, only
   while `setup_distributed` runs, so nothing else in the process is affected;
3. the devices are CPU devices and the process group backend is gloo.

It lives in tests/ on purpose: the product never runs DeepSpeed on the CPU. Use it from the CLI
(`--trainer.strategy=tests.strategies.CPUDeepSpeedStrategy --trainer.strategy.init_args.stage=3`,
or a YAML `class_path`) or construct it in Python: `CPUDeepSpeedStrategy(stage=3)`.
Also here: `fit_coldstart` (+ `coldstart_overlay`, `run_cli`), a two-step cold-start fit on the shim through
the real CLI (the ZeRO tests and the export tests share it), and `DeepSpeedProbe`, a callback that
records what DeepSpeed made of the policy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch.strategies.deepspeed as lightning_deepspeed
import torch
from lightning.pytorch import Callback
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

__all__ = ["CPUDeepSpeedStrategy", "DeepSpeedProbe", "coldstart_overlay", "fit_coldstart", "run_cli", "write_small_pool"]


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy on CPU devices with gloo (tests only).

    Args:
        stage: ZeRO stage (1, 2 or 3).
        num_processes: CPU processes on this node (one per "device").
        param_persistence_threshold: ZeRO-3 keeps parameters with fewer elements than this whole on
            every rank. DeepSpeed's default (1e5) covers every tensor of a tiny test model, so
            nothing would be partitioned; 0 (ours) partitions all of them, so tests exercise the
            sharded code paths. None keeps DeepSpeed's default.
        **kwargs: any other `DeepSpeedStrategy` argument.
    """

    strategy_name = "cpu_deepspeed"

    def __init__(
        self, stage: int = 2, num_processes: int = 1, param_persistence_threshold: int | None = 0, **kwargs: Any
    ) -> None:
        # `or`, not setdefault: the CLI passes every DeepSpeedStrategy argument, None included.
        kwargs["parallel_devices"] = kwargs.get("parallel_devices") or [torch.device("cpu", i) for i in range(num_processes)]
        kwargs["process_group_backend"] = kwargs.get("process_group_backend") or "gloo"
        super().__init__(stage=stage, **kwargs)
        if param_persistence_threshold is not None and stage == 3 and isinstance(self.config, dict):
            self.config.setdefault("zero_optimization", {})["stage3_param_persistence_threshold"] = param_persistence_threshold

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        with mock.patch.object(lightning_deepspeed, "_validate_device_index_selection", lambda devices: None):
            super().setup_distributed()


# ------------------------------------------------------------------ a cold-start fit on the shim
ROOT = Path(__file__).resolve().parents[1]


def write_small_pool(path: Path, rows: int = 12) -> Path:
    """A cold-start pool of `rows` arithmetic problems whose traces carry `correct` flags (no grading
    needed), with pass rates k/8 from 0 to 8 in each of two sources."""
    lines = []
    for i in range(rows):
        a, b = 3 + i, 5 + 2 * i
        steps = " ".join(f"Step {j}: {a} + {b} is {a + b}." for j in range(1 + i % 4))
        lines.append(
            {
                "source": f"src{i % 2}",
                "question": f"What is {a} + {b}?",
                "answer": str(a + b),
                "k": (i * 3) % 9,
                "n": 8,
                "traces": [
                    {"text": f"<think>{steps}</think> \\boxed{{{a + b}}}", "correct": True},
                    {"text": f"<think>{a} + {b}.</think> \\boxed{{{a + b}}}", "correct": True},
                    {"text": f"<think>{steps} Wait.</think> \\boxed{{{a + b + 1}}}", "correct": False},
                ],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def coldstart_overlay(
    tmp: Path, stage: int | None, steps: int = 2, model_path: str = "builtin:tiny-qwen2", val_path: str = "null"
) -> Path:
    """A YAML overlay on configs/coldstart.yaml: the tiny model, a small pool, `steps` optimizer steps,
    on this shim at ZeRO `stage` (None: Lightning's default single-device strategy); validation on
    the first 2 problems of `val_path` (null: none)."""
    pool = write_small_pool(tmp / "pool.jsonl")
    strategy = probe = ""
    if stage is not None:
        strategy = f"""
  strategy:
    class_path: tests.strategies.CPUDeepSpeedStrategy
    init_args: {{stage: {stage}}}"""
        probe = f"""
    - class_path: tests.strategies.DeepSpeedProbe
      init_args: {{out_path: {tmp / "probe.json"}}}"""
    overlay = tmp / f"coldstart_zero{stage}_overlay.yaml"
    overlay.write_text(
        f"""
trainer:
  enable_progress_bar: false
  max_steps: {steps}{strategy}
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp / "runs"}, name: coldstart}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp / "ckpt"}, save_last: true, save_top_k: 0}}{probe}
model:
  init_args:
    model_path: {model_path}
    lr: 3.0e-3
    warmup_steps: 0
    lr_schedule: constant
    export_dir: {tmp / "hf_model"}
    validation: {{n: 2, max_tokens: 8}}
data:
  init_args:
    path: {pool}
    size: 12
    batch_size: 4
    max_length: 256
    cache_dir: {tmp / "curation"}
    val_path: {val_path}
    val_size: 2
"""
    )
    return overlay


def fit_coldstart(tmp: Path, stage: int | None, steps: int = 2):
    """Run the overlay above through `python -m ares_lit fit`; returns the CompletedProcess."""
    return run_cli(tmp, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config", str(coldstart_overlay(tmp, stage, steps)))


def run_cli(cwd: Path, *args: str, module: str = "ares_lit", timeout: int = 600, env: dict | None = None):
    """`python -m <module> <args>` in a subprocess, offline, with this repo importable (tests.strategies too)."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ARES_LIT_CACHE": str(Path(cwd).parent / "ares_cache"),  # builtin models, as tests/e2e do
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/ares_lit/torch_extensions")),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


class DeepSpeedProbe(Callback):
    """Writes, at train start, what DeepSpeed made of the policy: ZeRO stage, how many parameters are
    partitioned, and the element counts that `configure_optimizers` puts in its decay / no-decay groups."""

    def __init__(self, out_path: str) -> None:
        self.out_path = out_path

    def on_train_start(self, trainer, pl_module) -> None:
        params = list(pl_module.policy.parameters())
        groups = pl_module.configure_optimizers()["optimizer"].param_groups  # a fresh optimizer, not the one in use
        numel = lambda p: int(getattr(p, "ds_numel", p.numel()))  # noqa: E731
        info = {
            "stage": trainer.strategy.config["zero_optimization"]["stage"],
            "world_size": trainer.world_size,
            "params": len(params),
            "partitioned": sum(1 for p in params if hasattr(p, "ds_id") and p.numel() == 0),
            "decay_numel": sum(numel(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]),
            "no_decay_numel": sum(numel(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]),
        }
        if trainer.is_global_zero:
            Path(self.out_path).write_text(json.dumps(info))
