"""`DifficultyTracker`: per-prompt difficulty history and per-bucket AEPO controller state.

ARES_SPEC "Online difficulty buckets", "Bucket targets", "Hierarchical entropy reward". The math is
in `ares_lit.core` (`assign_buckets`, `bucket_targets`, `update_alpha`); this class only holds the
state that must survive across steps and checkpoints:

- each prompt's last bucket and a bounded history of its group accuracies,
- the per-bucket targets T_d (nan until the bucket is first seen),
- the per-bucket reward scales α_d.

The tracker lives in the prompt DataModule, so Lightning saves it in checkpoints through
`LightningDataModule.state_dict` (rank 0's copy). Under DDP every rank must hold the same state,
although each rank grades only its own prompts: `update_targets`, called once per step on every
rank, gathers the step's records from all ranks (prompt ids and accuracies queued by `assign`,
N_HE and buckets) and applies them in rank order, so every rank runs the same update on the same
global batch. `assign` cannot gather itself: refill rounds make its call count differ per rank.
In a single process nothing is queued or gathered. The per-prompt state is read through
`state_dict()` (checkpoints, analysis); training reads only T_d and α_d.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from ares_lit.core import NUM_BUCKETS, assign_buckets, bucket_targets, update_alpha
from ares_lit.distributed import all_gather_cat, all_gather_object, world_size

__all__ = ["DifficultyTracker"]


class DifficultyTracker:
    """Online difficulty buckets and the α_d / T_d controllers of the entropy reward.

    Args:
        easy_min: group accuracy at or above which a prompt is easy (spec: 2/3).
        medium_min: group accuracy at or above which a prompt is medium, else hard (spec: 1/3).
        target_momentum: EMA momentum μ for T_d (T ← (1-μ)·T + μ·batch mean); None uses the batch mean.
        alpha_init: starting α_d for every bucket (spec: 0.5).
        alpha_eta: α step size η (spec: 0.05).
        alpha_bounds: α_d is clipped to this [low, high] (spec: [0, 2]).
        alpha_update: "relative" (default, spec): α_d += η·(mean N_HE − T_d)/max(T_d, 1);
            "absolute": α_d += η·(mean N_HE − T_d). Sign flipped for hard in both. N_HE is a token
            count, so the absolute step is η·(tens of tokens) and saturates the bounds in a few steps.
        history: how many past group accuracies to keep per prompt.
    """

    def __init__(
        self,
        easy_min: float = 2 / 3,
        medium_min: float = 1 / 3,
        target_momentum: float | None = None,
        alpha_init: float = 0.5,
        alpha_eta: float = 0.05,
        alpha_bounds: tuple[float, float] = (0.0, 2.0),
        history: int = 8,
        alpha_update: str = "relative",
    ) -> None:
        assign_buckets(torch.zeros(1), easy_min, medium_min)  # validates the thresholds now, not mid-run
        if target_momentum is not None and not 0.0 < target_momentum <= 1.0:
            raise ValueError(f"target_momentum must be in (0, 1] or None; got {target_momentum}")
        low, high = alpha_bounds
        if not low <= alpha_init <= high:
            raise ValueError(f"alpha_init must lie in alpha_bounds {tuple(alpha_bounds)}; got {alpha_init}")
        if alpha_update not in ("relative", "absolute"):
            raise ValueError(f"alpha_update must be 'relative' or 'absolute'; got {alpha_update!r}")
        if history < 1:
            raise ValueError(f"history must be >= 1; got {history}")
        self.easy_min = easy_min
        self.medium_min = medium_min
        self.target_momentum = target_momentum
        self.alpha_init = alpha_init
        self.alpha_eta = alpha_eta
        self.alpha_bounds = (float(low), float(high))
        self.alpha_update = alpha_update
        self.history = history
        self.targets = torch.full((NUM_BUCKETS,), math.nan)
        self.alpha = torch.full((NUM_BUCKETS,), float(alpha_init))
        self.last_batch_counts = torch.zeros(NUM_BUCKETS, dtype=torch.long)
        self._bucket: dict[str, int] = {}
        self._history: dict[str, deque[float]] = {}
        # DDP only: this rank's (prompt id, group accuracy) records since the last update_targets.
        self._pending: tuple[list[str], list[float]] = ([], [])

    # ------------------------------------------------------------------ buckets
    def assign(self, prompt_ids: list[str], group_accuracy: torch.Tensor) -> torch.Tensor:
        """Bucket each prompt from its CURRENT rollouts, before any shaped reward is computed.

        Args:
            prompt_ids: P prompt ids.
            group_accuracy: [P] mean accuracy of each prompt's group of G rollouts.

        Returns:
            [P] long buckets (0 easy, 1 medium, 2 hard) on group_accuracy's device. Each prompt's
            last bucket is recorded and its accuracy appended to its bounded history: at once in
            a single process; under DDP at this step's `update_targets`, together with the other
            ranks' prompts. A bucket depends only on the prompt's own accuracy, so the returned
            buckets need no other rank.
        """
        acc = group_accuracy.detach().reshape(-1)
        if acc.numel() != len(prompt_ids):
            raise ValueError(f"got {len(prompt_ids)} prompt ids but {acc.numel()} group accuracies")
        buckets = assign_buckets(acc, self.easy_min, self.medium_min)
        ids, accs = [str(p) for p in prompt_ids], acc.double().tolist()
        if world_size() > 1:
            self._pending[0].extend(ids)
            self._pending[1].extend(accs)
        else:
            self._record(ids, accs)
        return buckets

    def _record(self, prompt_ids: list[str], accuracies: list[float]) -> None:
        """Store each prompt's bucket and append its accuracy to its history, in list order."""
        buckets = assign_buckets(torch.tensor(accuracies, dtype=torch.float64), self.easy_min, self.medium_min)
        self.last_batch_counts = torch.bincount(buckets, minlength=NUM_BUCKETS)[:NUM_BUCKETS]
        # Bookkeeping on P python strings per step; not a tensor hot path.
        for pid, b, a in zip(prompt_ids, buckets.tolist(), accuracies):
            self._bucket[pid] = b
            self._history.setdefault(pid, deque(maxlen=self.history)).append(a)

    def _merge_pending(self) -> None:
        """DDP: apply every rank's queued records, rank 0's first, identically on all ranks."""
        ids: list[str] = []
        accs: list[float] = []
        for rank_ids, rank_accs in all_gather_object(self._pending):
            ids.extend(rank_ids)
            accs.extend(rank_accs)
        self._pending = ([], [])
        if ids:
            self._record(ids, accs)

    # ---------------------------------------------------------- α and targets
    def update_targets(self, n_hwe: torch.Tensor, bucket: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold one batch into T_d and α_d; return the (targets, alpha) for THIS batch's reward.

        Collective under DDP: every rank calls it once per step, with its own responses (N may
        differ per rank, and may be 0). The prompt records queued by `assign` and the N_HE and
        buckets of all ranks are gathered first, so T_d and α_d come from the global batch and
        are identical on every rank.

        Args:
            n_hwe: [N] N_HE per response.
            bucket: [N] long bucket of each response (its prompt's bucket).

        Order, per ARES_SPEC "Bucket targets" and "Hierarchical entropy reward":
            1. prev = self.targets (before this batch)
            2. new, mean, present = core.bucket_targets(n_hwe, bucket, prev, target_momentum):
               T_d is this batch's mean N_HE of bucket d (EMA-smoothed if target_momentum is set);
               a bucket empty in this batch keeps its last target.
            3. alpha_now = self.alpha: the reward of this batch uses α_d as it was before the batch.
            4. self.alpha = core.update_alpha(self.alpha, mean, prev, present, eta, bounds): α moves
               by η·(mean N_HE - T_d^prev)/max(T_d^prev, 1) with alpha_update="relative" (the
               default; a per-bucket step η/max(T_d^prev, 1)), or by η·(mean N_HE - T_d^prev) with
               "absolute" (sign flipped for hard in both). Against the target that
               already includes this batch the step would be identically 0 without momentum,
               so the PREVIOUS target is used; on a bucket's first batch (prev nan) α stays.
            5. self.targets = new.

        Returns:
            (targets [3], alpha [3]) on n_hwe's device: `new` and `alpha_now`.
        """
        n = n_hwe.detach().reshape(-1).float().cpu()
        b = bucket.detach().reshape(-1).long().cpu()
        if n.numel() != b.numel():
            raise ValueError(f"n_hwe has {n.numel()} values but bucket has {b.numel()}")
        if b.numel() and (b.min() < 0 or b.max() >= NUM_BUCKETS):
            raise ValueError(f"buckets must be in [0, {NUM_BUCKETS}); got values {sorted(set(b.tolist()))}")
        if world_size() > 1:
            self._merge_pending()
            n, b = all_gather_cat(n), all_gather_cat(b)
        prev = self.targets.clone()
        new, mean, present = bucket_targets(n, b, prev, self.target_momentum)
        alpha_now = self.alpha.clone()
        self.alpha = update_alpha(self.alpha, mean, prev, present, self._eta(prev), self.alpha_bounds)
        self.targets = new
        device = n_hwe.device
        return new.to(device), alpha_now.to(device)

    def _eta(self, prev: torch.Tensor) -> float | torch.Tensor:
        """Step size for `core.update_alpha`: η, or per bucket η/max(T_d^prev, 1) when relative.

        A bucket without a previous target (nan) gets η/1; update_alpha leaves its α unchanged
        anyway, and a finite step keeps its masked 0 from turning into nan.
        """
        if self.alpha_update == "absolute":
            return self.alpha_eta
        prev = prev.float()
        scale = torch.where(torch.isfinite(prev), prev.clamp(min=1.0), torch.ones_like(prev))
        return self.alpha_eta / scale

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Plain Python and CPU tensors, loadable with `torch.load(weights_only=True)`.

        Records queued under DDP but not merged yet (only after a step in which every rank
        dropped all its groups) are left out: rank 0's queue does not stand for the others'.
        """
        return {
            "targets": self.targets.clone(),
            "alpha": self.alpha.clone(),
            "last_batch_counts": self.last_batch_counts.clone(),
            "bucket": dict(self._bucket),
            "history": {pid: list(h) for pid, h in self._history.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved. Settings (thresholds, η, bounds, alpha_update) come from the config."""
        self.targets = torch.as_tensor(state["targets"], dtype=torch.float32).clone().cpu()
        self.alpha = torch.as_tensor(state["alpha"], dtype=torch.float32).clone().cpu()
        if "last_batch_counts" in state:
            self.last_batch_counts = torch.as_tensor(state["last_batch_counts"], dtype=torch.long).clone().cpu()
        self._bucket = {str(k): int(v) for k, v in state.get("bucket", {}).items()}
        self._history = {
            str(k): deque((float(x) for x in v), maxlen=self.history) for k, v in state.get("history", {}).items()
        }
