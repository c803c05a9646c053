"""DynamicKLCallback: per-bucket KL coefficients κ_d, relaxed inside HWE windows (docs/algorithm.md "Dynamic KL").

Its `core.DynamicKL` controller starts from the model's `kl_coef`. It hands the controller to the
module (which asks it for β_{i,t} in the loss) and, after each step, updates κ_d from KL_d, the
mean k3 over bucket d's non-window tokens. The sums and token counts are all-reduced across ranks
first, so every rank holds the same κ (the released code updated β on each rank unsynchronised).
Its state is checkpointed.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from ares_lit.core import BUCKET_NAMES, DynamicKL

__all__ = ["DynamicKLCallback"]


class DynamicKLCallback(pl.Callback):
    """Token-wise dynamic KL scheduling.

    κ_d starts from the model's `kl_coef` (`model.init_args.kl_coef`), the one source of truth for
    the KL coefficient: with this callback it is the initial κ_d of every bucket, without it the
    constant β.

    Args:
        kl_coef: deprecated duplicate of model.kl_coef; None (default) = take the model's. A value
            that differs from model.kl_coef fails at fit start, naming both.
        targets: KL targets δ_d (easy, medium, hard); easy is held tighter than hard.
        rho: ρ in (0, 1], the KL relaxation inside validated HWE windows (1 = no relaxation).
        rate: η_κ, the controller gain.
        step_clip: bound on the relative error KL_d / δ_d - 1 per step.
        kappa_min: lower bound of κ_d.
        kappa_max: upper bound of κ_d.
    """

    def __init__(
        self,
        kl_coef: float | None = None,
        targets: tuple[float, float, float] = (0.02, 0.05, 0.1),
        rho: float = 0.5,
        rate: float = 0.1,
        step_clip: float = 0.2,
        kappa_min: float = 1e-4,
        kappa_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.kl_coef = kl_coef
        self._settings = (targets, rho, rate, step_clip, kappa_min, kappa_max)
        # Checks the settings now; `setup` rebuilds it from the model's kl_coef before any model loads.
        self.controller = DynamicKL(kappa_min if kl_coef is None else kl_coef, *self._settings)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        hp = pl_module.hparams
        if not getattr(hp, "use_kl_loss", False):
            raise ValueError("DynamicKLCallback needs model.use_kl_loss: true (a frozen reference model)")
        model_coef = getattr(hp, "kl_coef", None)
        if self.kl_coef is not None and model_coef is not None and float(self.kl_coef) != float(model_coef):
            raise ValueError(
                f"DynamicKLCallback.kl_coef={self.kl_coef} conflicts with model.kl_coef={model_coef}: κ_d starts "
                "from model.kl_coef. Remove the callback's kl_coef (set --model.init_args.kl_coef instead)."
            )
        coef = model_coef if self.kl_coef is None else self.kl_coef
        if coef is None:
            raise ValueError("DynamicKLCallback needs a model with a kl_coef (its initial κ_d)")
        coef = float(coef)
        kappa_min, kappa_max = self._settings[-2:]
        if not kappa_min <= coef <= kappa_max:
            raise ValueError(
                f"model.kl_coef={coef} is DynamicKLCallback's initial κ_d and must lie in "
                f"[kappa_min={kappa_min}, kappa_max={kappa_max}]"
            )
        # A checkpoint's κ_d (load_state_dict) is restored after setup and replaces this start value.
        self.controller = DynamicKL(coef, *self._settings)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
