"""A test-only callback: after every step, each rank appends its AEPO controller state to a file.

tests/e2e/test_ddp_cli.py adds it to a 2-process DDP run and compares the ranks' files.
"""

import json
import math
from pathlib import Path

import lightning.pytorch as pl

from callbacks.dynamic_kl import DynamicKLCallback
from callbacks.rollout import RolloutCallback


def _plain(x):
    """JSON-comparable values: tensors as lists, nan as None (nan != nan would fail every compare)."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


class ControllerStateDump(pl.Callback):
    """Appends one JSON line per step to `<out_dir>/state_rank{r}.jsonl`.

    Each line holds the shared controller state (tracker, τ, κ) and this rank's own inputs to it:
    the ids of its batch slice and the N_HE and bucket of its rollouts.
    """

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        rollout_cb = next(c for c in trainer.callbacks if isinstance(c, RolloutCallback))
        kl_cb = next(c for c in trainer.callbacks if isinstance(c, DynamicKLCallback))
        rollout = batch.get("rollout")
        line = {
            "step": trainer.global_step,
            "local": {
                "batch_ids": [p["id"] for p in batch["prompts"]],
                "n_hwe": _plain(rollout.extras["n_hwe"]) if rollout is not None else [],
                "bucket": _plain(rollout.bucket) if rollout is not None else [],
            },
            "shared": {
                "tracker": _plain(trainer.datamodule.tracker.state_dict()),
                "hwe": _plain(rollout_cb.hwe.state_dict()),
                "kappa": _plain(kl_cb.controller.kappa),
            },
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"state_rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
