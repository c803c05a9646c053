"""A test-only DeepSpeed strategy that runs on the CPU (gloo), for ZeRO-2/3 tests without a GPU.

Lightning's `DeepSpeedStrategy` refuses any accelerator but CUDA, although DeepSpeed itself
initialises ZeRO-2 and ZeRO-3 on the CPU. Three changes make it run (ENVIRONMENT.md, "DeepSpeed"):

1. `setup_environment` skips DeepSpeedStrategy's CUDA check and does what DDPStrategy does;
2. `_validate_device_index_selection` (which expects CUDA indices) is patched to a no-op, only
   while `setup_distributed` runs, so nothing else in the process is affected;
3. the devices are CPU devices and the process group backend is gloo.

It lives in tests/ on purpose: the product never runs DeepSpeed on the CPU. Use it from the CLI
(`--trainer.strategy=tests.strategies.CPUDeepSpeedStrategy --trainer.strategy.stage=3`, or a YAML
`class_path`) or construct it in Python: `CPUDeepSpeedStrategy(stage=3)`.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import lightning.pytorch.strategies.deepspeed as lightning_deepspeed
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

__all__ = ["CPUDeepSpeedStrategy"]


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
