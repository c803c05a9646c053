"""The update loop's bookkeeping for AEPOModule, out of aepo.py: DeepSpeed's accumulation boundary,
the zero-weight dummy micro-batches, the mini-batches' global loss normalizers and horizon, and the
gradient norm (docs/stages.md "Micro-batches")."""

from __future__ import annotations

import torch

from ares_lit.batch import RolloutBatch
from ares_lit.distributed import all_gather_cat, world_max, world_size

__all__ = ["UpdateHelpersMixin"]


class UpdateHelpersMixin:
    """Needs `self.hparams`, `self.device`, `self.policy`, `self.reference`, `self._trainer` and
    ScoringMixin's `_dummy_inputs`."""

    def _deepspeed_engine(self):
        return getattr(self._trainer.strategy, "deepspeed_engine", None) if self._trainer is not None else None

    def _accumulation_boundary(self, last: bool) -> None:
        """Tell DeepSpeed whether this backward ends the mini-batch: ZeRO-2 otherwise reduces and
        overwrites the gradients at every micro-batch, keeping only the last one's."""
        engine = self._deepspeed_engine()
        if engine is not None:
            engine.set_gradient_accumulation_boundary(last)

    def _dummy_micro(self, rollout: RolloutBatch | None) -> tuple[dict, float]:
        """A one-row micro-batch whose loss is multiplied by 0: a real row of this rank, else pad+eos;
        marked "dummy" (no token of it enters the forking quantile or the entropy controller)."""
        if rollout is not None and rollout.size > 0:
            micro = rollout.select(torch.zeros(1, dtype=torch.long, device=self.device))
            return {**micro, "dummy": True}, rollout.temperature
        ids, mask, _, r_len = self._dummy_inputs()
        row = RolloutBatch.placeholder(ids.to(self.device), mask.to(self.device), r_len, self.reference is not None)
        return {**row.select(torch.zeros(1, dtype=torch.long, device=self.device)), "dummy": True}, 1.0

    def _normalizers(self, rollout: RolloutBatch | None, minis: list[torch.Tensor]) -> list[float]:
        """Each planned mini-batch's loss denominator (verl's global token-mean): its tokens (token-mean) or
        sequences (seq-mean-*) over ALL ranks, / world_size as DDP averages gradients, so a step is
        Σ_ranks Σ_tokens ∇ℓ / global count. A collective: every rank calls it once per PPO epoch."""
        token_mean = self.hparams.loss_agg == "token-mean"
        none = torch.zeros(1, len(minis), dtype=torch.float64, device=self.device)
        counts = none if rollout is None else rollout.loss_counts(minis, token_mean)
        total = all_gather_cat(counts).sum(0)  # [ranks, M] → [M]
        return (total.clamp_min(1) / world_size()).tolist()

    def _horizon(self, rollout: RolloutBatch | None) -> float | None:
        """seq-mean-token-sum-norm's constant divisor: model.loss_horizon, else the rollout's
        max_new_tokens, else (an old pipeline) the padded width; the largest over ranks (a collective)."""
        if self.hparams.loss_agg != "seq-mean-token-sum-norm":
            return None
        h = self.hparams.loss_horizon or (rollout and (rollout.max_new_tokens or rollout.response_len)) or 0
        return float(world_max(h))

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.policy.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(grads)))
