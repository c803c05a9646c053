"""DynamicKLCallback: per-bucket KL coefficients κ_d, relaxed inside HWE windows (ARES_SPEC "Dynamic KL").

It hands its `core.DynamicKL` controller to the module (which asks it for β_{i,t} in the loss)
and, after each step, updates κ_d from KL_d, the mean k3 over bucket d's non-window tokens. The
sums and token counts are all-reduced across ranks first, so every rank holds the same κ (the
released code updated β on each rank unsynchronised). Its state is checkpointed.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ares_lit.core import BUCKET_NAMES, DynamicKL

__all__ = ["DynamicKLCallback"]


class DynamicKLCallback(pl.Callback):
    """Token-wise dynamic KL scheduling.

    Args:
        kl_coef: initial κ_d for every bucket.
        targets: KL targets δ_d (easy, medium, hard); easy is held tighter than hard.
        rho: ρ in (0, 1], the KL relaxation inside validated HWE windows (1 = no relaxation).
        rate: η_κ, the controller gain.
        step_clip: bound on the relative error KL_d / δ_d - 1 per step.
        kappa_min: lower bound of κ_d.
        kappa_max: upper bound of κ_d.
    """

    def __init__(
        self,
        kl_coef: float = 0.01,
        targets: tuple[float, float, float] = (0.02, 0.05, 0.1),
        rho: float = 0.5,
        rate: float = 0.1,
        step_clip: float = 0.2,
        kappa_min: float = 1e-4,
        kappa_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.controller = DynamicKL(kl_coef, targets, rho, rate, step_clip, kappa_min, kappa_max)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not getattr(pl_module.hparams, "use_kl_loss", False):
            raise ValueError("DynamicKLCallback needs model.use_kl_loss: true (a frozen reference model)")
        pl_module.kl_controller = self.controller

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        stats = getattr(pl_module, "kl_stats", None)
        if stats is None:
            return
        kl_sum, kl_cnt = (trainer.strategy.reduce(t.clone(), reduce_op="sum") for t in stats)
        kl_by_bucket = torch.where(kl_cnt > 0, kl_sum / kl_cnt.clamp_min(1), torch.full_like(kl_sum, float("nan")))
        kappa = self.controller.update(kl_by_bucket)
        logs = {}
        for d, name in enumerate(BUCKET_NAMES):
            logs[f"bucket/{name}/kappa"] = float(kappa[d])
            if kl_cnt[d] > 0:
                logs[f"bucket/{name}/kl"] = float(kl_by_bucket[d])
        pl_module.log_dict(logs, on_step=True, on_epoch=False)
        pl_module.kl_stats = None

    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.controller.load_state_dict(state_dict)
