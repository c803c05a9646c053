"""`DifficultyTracker`: per-prompt difficulty history and per-bucket AEPO controller state.

docs/algorithm.md "Online difficulty buckets", "Bucket targets", "The α controller". The math is in
`ares_lit.core` (`assign_buckets`, `bucket_targets`, `calibrate_setpoint`, `log_ratio_alpha`,
`update_alpha`); this class only holds the state that must survive across steps and checkpoints:

- each prompt's last bucket and a bounded history of its group accuracies,
- the per-bucket targets T_d (nan until the bucket is first seen),
- the per-bucket reward scales α_d,
- the α controller's set-point calibration (Σ N_HE, responses and batches per bucket; T*_d).

The tracker lives in the prompt DataModule, so Lightning saves it in checkpoints through
`LightningDataModule.state_dict` (rank 0's copy). Under DDP every rank must hold the same state,
although each rank grades only its own prompts: `update_targets`, called once per step on every
rank, gathers the step's records from all ranks (prompt ids and accuracies queued by `assign`,
N_HE and buckets) and applies them in rank order, so every rank runs the same update on the same
global batch. `assign` cannot gather itself: refill rounds make its call count differ per rank.
In a single process nothing is queued or gathered. The per-prompt state is read through
`state_dict()` (checkpoints, analysis); training reads T_d and α_d, and the panels `metrics()`.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from ares_lit.core import (
    ALPHA_UPDATES,
    BUCKET_NAMES,
    DEFAULT_ALPHA_ETA,
    DEFAULT_ALPHA_MIN_RESPONSES,
    NUM_BUCKETS,
    alpha_reference,
    assign_buckets,
    bucket_targets,
    calibrate_setpoint,
    log_ratio_alpha,
    update_alpha,
)
from ares_lit.distributed import all_gather_cat, all_gather_object, world_size

__all__ = ["DifficultyTracker"]


class DifficultyTracker:
    """Online difficulty buckets and the α_d / T_d controllers of the entropy reward.

    Args:
        easy_min: group accuracy at or above which a prompt is easy (spec: 2/3).
        medium_min: group accuracy at or above which a prompt is medium, else hard (spec: 1/3).
        target_momentum: EMA momentum μ for T_d (T ← (1-μ)·T + μ·batch mean); None uses the batch mean.
        alpha_init: α_0, the starting α_d of every bucket (spec: 0.5).
        alpha_eta: η of the α update; None takes the form's own (0.5 for log_ratio, 0.05 for the others).
        alpha_bounds: α_d is clipped to this [low, high] (spec: [0, 2]).
        alpha_update: the α controller (docs/algorithm.md "The α controller"; `ares_lit/core/alpha.py`):
            "log_ratio" (default, ours): after K calibration batches fix the set-point T*_d,
            α_d = clip(α_0 + s_d·η·ln((1 + T_d)/(1 + T*_d))), s = (+1, +1, −1); drift-free.
            "absolute" (paper): α_d += s_d·η·(mean N_HE − T_d^prev).
            "relative" (2026-11-30, drifts): α_d += s_d·η·(mean N_HE − T_d^prev)/max(T_d^prev, 1).
            "released" (authors' code): α_d += s_d·η·(mean N_HE − round(mean N_HE)).
        calibration_batches: K, the batches of a bucket that set T*_d before log_ratio moves α_d (spec: 5).
        alpha_min_responses: a batch with fewer responses of bucket d updates neither T_d nor α_d
            (nor the calibration); None takes the form's own (4 for log_ratio, 1 for the others,
            which reproduces their old numbers).
        history: how many past group accuracies to keep per prompt.

    Every form's reward for a batch uses α_d as it stood before that batch; the update runs after.
    """

    def __init__(
        self,
        easy_min: float = 2 / 3,
        medium_min: float = 1 / 3,
        target_momentum: float | None = None,
        alpha_init: float = 0.5,
        alpha_eta: float | None = None,
        alpha_bounds: tuple[float, float] = (0.0, 2.0),
        history: int = 8,
        alpha_update: str = "log_ratio",
        calibration_batches: int = 5,
        alpha_min_responses: int | None = None,
    ) -> None:
        assign_buckets(torch.zeros(1), easy_min, medium_min)  # validates the thresholds now, not mid-run
        if target_momentum is not None and not 0.0 < target_momentum <= 1.0:
            raise ValueError(f"target_momentum must be in (0, 1] or None; got {target_momentum}")
        low, high = alpha_bounds
        if not low <= alpha_init <= high:
            raise ValueError(f"alpha_init must lie in alpha_bounds {tuple(alpha_bounds)}; got {alpha_init}")
        if alpha_update not in ALPHA_UPDATES:
            raise ValueError(f"alpha_update must be one of {ALPHA_UPDATES}; got {alpha_update!r}")
        if alpha_eta is not None and alpha_eta < 0:
            raise ValueError(f"alpha_eta must be >= 0 or None (the form's default); got {alpha_eta}")
        if calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1; got {calibration_batches}")
        if alpha_min_responses is not None and alpha_min_responses < 1:
            raise ValueError(f"alpha_min_responses must be >= 1 or None (the form's default); got {alpha_min_responses}")
        if history < 1:
            raise ValueError(f"history must be >= 1; got {history}")
        self.easy_min = easy_min
        self.medium_min = medium_min
        self.target_momentum = target_momentum
        self.alpha_init = alpha_init
        self.alpha_update = alpha_update
        self.alpha_eta = DEFAULT_ALPHA_ETA[alpha_update] if alpha_eta is None else float(alpha_eta)
        self.alpha_bounds = (float(low), float(high))
        self.calibration_batches = calibration_batches
        self.alpha_min_responses = (
            DEFAULT_ALPHA_MIN_RESPONSES[alpha_update] if alpha_min_responses is None else alpha_min_responses
        )
        self.history = history
        self.targets = torch.full((NUM_BUCKETS,), math.nan)
        self.alpha = torch.full((NUM_BUCKETS,), float(alpha_init))
        # log_ratio's set-point calibration: Σ N_HE, responses and batches so far, per bucket.
        self.setpoint_sum = torch.zeros(NUM_BUCKETS, dtype=torch.float64)
        self.setpoint_count = torch.zeros(NUM_BUCKETS, dtype=torch.long)
        self.setpoint_batches = torch.zeros(NUM_BUCKETS, dtype=torch.long)
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
        buckets of all ranks are gathered first, so T_d, T*_d and α_d come from the global batch
        and are identical on every rank.

        Args:
            n_hwe: [N] N_HE per response.
            bucket: [N] long bucket of each response (its prompt's bucket).

        Order, per docs/algorithm.md "Bucket targets" and "The α controller":
            1. present_d: bucket d has >= alpha_min_responses responses in the global batch; only
               present buckets update anything below.
            2. T_d: this batch's mean N_HE of bucket d (EMA-smoothed with target_momentum); the
               others keep their last target.
            3. alpha_now = α_d before the batch: the reward of this batch uses it.
            4. α_d for the next batch. log_ratio: the batch joins its bucket's calibration while
               fewer than K batches have, T*_d = their response-weighted mean N_HE; once K have,
               α_d = clip(α_0 + s_d·η·ln((1 + T_d)/(1 + T*_d))), else α_0. Incremental forms:
               `core.update_alpha` against the PREVIOUS T_d (absolute, relative) or round(mean)
               (released); on a bucket's first batch (no previous T_d) α stays.

        Returns:
            (targets [3], alpha [3]) on n_hwe's device: the new T_d and alpha_now.
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
        new, mean, present = bucket_targets(n, b, prev, self.target_momentum, self.alpha_min_responses)
        alpha_now = self.alpha.clone()
        if self.alpha_update == "log_ratio":
            counts = torch.bincount(b, minlength=NUM_BUCKETS)[:NUM_BUCKETS]
            self.setpoint_sum, self.setpoint_count, self.setpoint_batches = calibrate_setpoint(
                self.setpoint_sum, self.setpoint_count, self.setpoint_batches, mean, counts, present, self.calibration_batches
            )
            self.alpha = log_ratio_alpha(new, self.setpoint, self.calibrated, self.alpha_init, self.alpha_eta, self.alpha_bounds)
        else:
            reference, eta = alpha_reference(self.alpha_update, mean, prev, self.alpha_eta)
            self.alpha = update_alpha(self.alpha, mean, reference, present, eta, self.alpha_bounds)
        self.targets = new
        device = n_hwe.device
        return new.to(device), alpha_now.to(device)

    @property
    def setpoint(self) -> torch.Tensor:
        """T*_d [3]: the mean N_HE of bucket d's calibration batches so far (nan before the first)."""
        return torch.where(self.setpoint_count > 0, self.setpoint_sum / self.setpoint_count.clamp_min(1), math.nan).float()

    @property
    def calibrated(self) -> torch.Tensor:
        """[3] bool: bucket d's set-point is final (K calibration batches seen)."""
        return self.setpoint_batches >= self.calibration_batches

    def metrics(self) -> dict[str, float]:
        """The controller's state for the panels: `bucket/<d>/setpoint` (T*_d, once it has a value)
        and `bucket/<d>/calibration` (calibration batches seen, K when final). log_ratio only."""
        if self.alpha_update != "log_ratio":
            return {}
        out = {}
        for d, name in enumerate(BUCKET_NAMES):
            out[f"bucket/{name}/calibration"] = float(self.setpoint_batches[d])  # stops at K (calibrate_setpoint)
            if self.setpoint_count[d] > 0:
                out[f"bucket/{name}/setpoint"] = float(self.setpoint[d])
        return out

    # -------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        """Plain Python and CPU tensors, loadable with `torch.load(weights_only=True)`.

        Records queued under DDP but not merged yet (only after a step in which every rank
        dropped all its groups) are left out: rank 0's queue does not stand for the others'.
        """
        return {
            "targets": self.targets.clone(),
            "alpha": self.alpha.clone(),
            "setpoint_sum": self.setpoint_sum.clone(),
            "setpoint_count": self.setpoint_count.clone(),
            "setpoint_batches": self.setpoint_batches.clone(),
            "last_batch_counts": self.last_batch_counts.clone(),
            "bucket": dict(self._bucket),
            "history": {pid: list(h) for pid, h in self._history.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved. Settings (thresholds, η, bounds, alpha_update, K) come from the config."""
        self.targets = torch.as_tensor(state["targets"], dtype=torch.float32).clone().cpu()
        self.alpha = torch.as_tensor(state["alpha"], dtype=torch.float32).clone().cpu()
        # A checkpoint from before the log_ratio controller has no calibration: it starts afresh.
        zeros = torch.zeros(NUM_BUCKETS, dtype=torch.long)
        self.setpoint_sum = torch.as_tensor(state.get("setpoint_sum", zeros), dtype=torch.float64).clone().cpu()
        self.setpoint_count = torch.as_tensor(state.get("setpoint_count", zeros), dtype=torch.long).clone().cpu()
        self.setpoint_batches = torch.as_tensor(state.get("setpoint_batches", zeros), dtype=torch.long).clone().cpu()
        if "last_batch_counts" in state:
            self.last_batch_counts = torch.as_tensor(state["last_batch_counts"], dtype=torch.long).clone().cpu()
        self._bucket = {str(k): int(v) for k, v in state.get("bucket", {}).items()}
        self._history = {
            str(k): deque((float(x) for x in v), maxlen=self.history) for k, v in state.get("history", {}).items()
        }
