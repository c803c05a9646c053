"""Online difficulty buckets (docs/algorithm.md "Online difficulty buckets").

Pure torch: no Lightning, no I/O.
"""

from __future__ import annotations

import torch

__all__ = ["EASY", "MEDIUM", "HARD", "BUCKET_NAMES", "NUM_BUCKETS", "assign_buckets"]

EASY, MEDIUM, HARD = 0, 1, 2
BUCKET_NAMES = ("easy", "medium", "hard")
NUM_BUCKETS = 3

# Group accuracies are means of k/G; 2/3 in float32 can round a hair below the Python float 2/3.
_TOL = 1e-6


def assign_buckets(group_accuracy: torch.Tensor, easy_min: float = 2 / 3, medium_min: float = 1 / 3) -> torch.Tensor:
    """Bucket per prompt (or per sample) from its group accuracy: 0 easy, 1 medium, 2 hard.

    easy if acc >= easy_min; medium if acc >= medium_min; hard otherwise. With G = 8 this is
    easy >= 6/8 and hard <= 2/8. Buckets come from the current rollouts, before any shaped reward.
    """
    if not 0.0 <= medium_min <= easy_min <= 1.0:
        raise ValueError(f"need 0 <= medium_min <= easy_min <= 1; got medium_min={medium_min}, easy_min={easy_min}")
    acc = group_accuracy.double()
    out = torch.full(acc.shape, HARD, dtype=torch.long, device=acc.device)
    out = torch.where(acc >= medium_min - _TOL, torch.full_like(out, MEDIUM), out)
    return torch.where(acc >= easy_min - _TOL, torch.full_like(out, EASY), out)
