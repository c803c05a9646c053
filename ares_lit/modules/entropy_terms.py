"""The module side of entropy control (core/entropy_control.py): the `model.entropy_control`
settings, the collectives that keep the forking threshold and the coefficient identical on every
rank, and the terms AEPOModule's `_micro_loss` adds.

    L = L_PG(kept tokens) + L_KL(all tokens) − c·H̄(kept tokens)

- **Forking tokens** (ρ = `top_entropy_quantile` < 1): each micro-batch's forward gives the current
  policy's token entropy H_t (the same fp32 log-softmax as the update's log-probs; the mask takes it
  without gradient); the threshold is the (1 − ρ)-quantile of the valid H_t of this micro-batch on
  every rank (gathered, `all_gather_cat`), and the policy loss keeps the tokens with H_t >= it, as
  per-token weights (times the rollout-correction weights, if any), aggregated over all valid tokens:
  TRL's `per_token_loss * entropy_mask`. The KL term keeps every token, as TRL.
- **Quantile per micro-batch**, as TRL (its "batch" is the per-device micro-batch of one
  `compute_loss`, gathered over processes): the update's entropies exist one micro-batch at a time,
  and a mini-batch quantile would need every micro-batch's forward before the first backward (a second
  forward, or every graph kept). `micro_batch_size = mini_batch_size` (no token budget) makes it the
  mini-batch's quantile; ares_lit's micro-batches hold rows sorted by length, TRL's shuffled ones.
- **Entropy bonus** (c ≠ 0 or adaptive): H̄ = aggregate(H ⊙ keep, mask, loss_agg) with the policy
  loss's normalizer, from the same forward with gradient (`response_logprobs(entropy_grad=True)`);
  for `loss_agg: token-mean` this is TRL's term. Adaptive c moves once per optimizer step from the
  step's entropy over the kept tokens of all ranks (a sum and a count, gathered), as TRL; its state
  is in the module's checkpoint (`entropy_control` key).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from ares_lit.core import AdaptiveEntropyCoef, entropy_bonus, forking_mask, forking_threshold, get_policy_loss
from ares_lit.distributed import all_gather_cat

__all__ = ["EntropyControl", "EntropyTermsMixin", "gathered_forking_mask", "gathered_mean_entropy"]


@dataclass
class EntropyControl:
    """`model.entropy_control`: the forking-token mask and the entropy bonus (off by default).

    Reference implementation: TRL's GRPOTrainer (`top_entropy_quantile`, `entropy_coef`,
    `use_adaptive_entropy`, `entropy_target`, `entropy_coef_delta`, `entropy_coef_min`,
    `entropy_coef_max`; trl/trainer/grpo_config.py, grpo_trainer.py), whose defaults these are.
    """

    top_entropy_quantile: float = 1.0
    """ρ: the policy loss keeps tokens with H_t >= the (1 − ρ)-quantile of the micro-batch's valid
    entropies over all ranks (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939; paper
    0.2). 1 = off (every token); 0 keeps only the highest-entropy token(s). In [0, 1]."""
    entropy_coef: float = 0.0
    """c of L − c·H̄ (H̄ aggregated with `loss_agg`); 0 = no bonus. With `adaptive`, the initial c."""
    adaptive: bool = False
    """Move c to hold `entropy_target` (Skywork-OR1, He et al. 2025, arXiv 2505.22312): after each
    optimizer step c ← min(c + δ, c_max) if H <= target else max(c − δ, c_min); c applies only
    while the last step's H <= target (the first step applies 0)."""
    entropy_target: float | None = None
    """Target mean token entropy in nats, over the tokens the policy loss keeps; needed when
    adaptive (TRL's default 0.2 is Skywork-OR1's, for models whose entropy has already collapsed)."""
    entropy_coef_delta: float = 0.005
    """δ, the change of c per optimizer step (Skywork-OR1's scripts: 1e-4)."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive c."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive c (Skywork-OR1's scripts: 0.005)."""

    def __post_init__(self) -> None:
        def bad(field: str, rule: str) -> ValueError:
            return ValueError(f"model.entropy_control.{field} must be {rule}; got {getattr(self, field)!r}")

        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise bad("top_entropy_quantile", "in [0, 1] (1 = off)")
        if not abs(self.entropy_coef) < float("inf"):
            raise bad("entropy_coef", "finite")
        if not self.adaptive:
            return
        if self.entropy_target is None or not 0.0 <= self.entropy_target < float("inf"):
            raise bad("entropy_target", "a finite entropy >= 0 in nats when adaptive is true")
        if not 0.0 < self.entropy_coef_delta < float("inf"):
            raise bad("entropy_coef_delta", "> 0")
        if not 0.0 <= self.entropy_coef_min <= self.entropy_coef_max < float("inf"):
            raise bad("entropy_coef_max", f">= entropy_coef_min={self.entropy_coef_min} >= 0")
        if not self.entropy_coef_min <= self.entropy_coef <= self.entropy_coef_max:
            bounds = f"[{self.entropy_coef_min}, {self.entropy_coef_max}]"
            raise bad("entropy_coef", f"in [entropy_coef_min, entropy_coef_max] = {bounds}")

    @property
    def forking(self) -> bool:
        return self.top_entropy_quantile < 1.0

    @property
    def bonus(self) -> bool:
        return self.entropy_coef != 0.0 or self.adaptive


def gathered_forking_mask(entropy: torch.Tensor, valid: torch.Tensor, top_quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep [B, T] bool, threshold): the threshold from the valid entropies of every rank (a
    collective: every rank calls it once per micro-batch, a dummy with no valid token too)."""
    values = all_gather_cat(entropy.detach().float()[valid.bool()])
    threshold = forking_threshold(values, top_quantile)
    return forking_mask(entropy, valid, threshold), threshold


def gathered_mean_entropy(stats: torch.Tensor) -> tuple[float, float]:
    """(Σ H_t, token count) over all ranks from this rank's [2] fp64 `stats`, summed in rank order
    (bit-identical on every rank). A collective."""
    total = all_gather_cat(stats.reshape(1, 2)).sum(0)
    return float(total[0]), float(total[1])


class EntropyTermsMixin:
    """For AEPOModule: needs `self.hparams` (entropy_control, loss_agg, policy_loss) and `self.device`."""

    def configure_entropy_control(self, settings: EntropyControl | dict | None) -> None:
        """Check and hold the settings (the policy loss must take per-token `weights` for the forking
        mask) and start the coefficient's state."""
        s = settings if isinstance(settings, EntropyControl) else EntropyControl(**(settings or {}))
        params = inspect.signature(get_policy_loss(self.hparams.policy_loss)).parameters
        takes_weights = "weights" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        if s.forking and not takes_weights:
            raise ValueError(
                f"model.entropy_control.top_entropy_quantile={s.top_entropy_quantile} masks the policy loss through its "
                f"per-token `weights`, which policy loss {self.hparams.policy_loss!r} does not take"
            )
        self.entropy_settings = s
        self.entropy_coef_ctl = None
        if s.bonus:
            self.entropy_coef_ctl = AdaptiveEntropyCoef(
                s.entropy_coef, s.adaptive, s.entropy_target, s.entropy_coef_delta, s.entropy_coef_min, s.entropy_coef_max
            )
        self._entropy_window = torch.zeros(2, dtype=torch.float64)  # [Σ H_t, kept tokens] of this optimizer step

    def entropy_request(self) -> dict:
        """The `response_logprobs` options of the update's forward: entropy (with gradient for a bonus)."""
        s = self.entropy_settings
        return {"with_entropy": True, "entropy_grad": s.bonus} if s.forking or s.bonus else {}

    def entropy_terms(self, micro: dict, entropy: torch.Tensor | None, corr: dict, agg_kwargs: dict):
        """(corr, bonus, metrics) of one micro-batch: `corr` with the forking mask folded into the
        policy loss's `weights`, the term c·H̄ to subtract from the loss (None when none), and the
        panels' metrics. A dummy micro-batch (`micro["dummy"]`) joins the collectives with no token."""
        s, metrics = self.entropy_settings, {}
        if entropy is None:
            return corr, None, metrics
        mask = micro["response_mask"].bool()
        valid = torch.zeros_like(mask) if micro.get("dummy", False) else mask
        keep = None
        if s.forking:
            keep, threshold = gathered_forking_mask(entropy, valid, s.top_entropy_quantile)
            w = keep.to(torch.float32)
            corr = {**corr, "weights": w if corr.get("weights") is None else corr["weights"] * w}
            metrics["forking_frac"] = keep.sum() / valid.sum().clamp_min(1)
            metrics["forking_threshold"] = threshold.nan_to_num(0.0)
        if not s.bonus:
            return corr, None, metrics
        h_bar = entropy_bonus(entropy, mask, self.hparams.loss_agg, keep, **agg_kwargs)
        kept = valid if keep is None else keep
        self._entropy_window = self._entropy_window.to(entropy.device) + torch.stack(
            [entropy.detach().double()[kept].sum(), kept.sum().double()]
        )
        c = self.entropy_coef_ctl.applied()
        metrics["entropy_bonus"] = h_bar.detach()
        metrics["entropy_coef"] = c
        return corr, (c * h_bar if c != 0.0 else None), metrics

    def entropy_step_end(self) -> None:
        """At each optimizer step: the adaptive c from the step's entropy over all ranks (a collective
        then), and a fresh window."""
        ctl = self.entropy_coef_ctl
        if ctl is not None and ctl.adaptive:
            ctl.update(*gathered_mean_entropy(self._entropy_window))
        self._entropy_window = torch.zeros_like(self._entropy_window)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.entropy_coef_ctl is not None:
            checkpoint["entropy_control"] = self.entropy_coef_ctl.state_dict()
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.entropy_coef_ctl is not None and "entropy_control" in checkpoint:
            self.entropy_coef_ctl.load_state_dict(checkpoint["entropy_control"])
        super().on_load_checkpoint(checkpoint)
