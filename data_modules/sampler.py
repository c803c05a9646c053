"""`ResumableBatchSampler`: a seeded per-epoch batch order that resumes mid-epoch, sharded by rank.

Both stages use it: the AEPO prompts (one batch = `batch_size` prompts) and the cold-start SFT
data (one "row" = one precomputed length-grouped batch, batch_size 1). The DataModule saves
(epoch, consumed) in checkpoints; a resumed run continues with the next unseen batch.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DistributedSampler

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler(DistributedSampler):
    """Yields one list of row indices per training step, from a seeded per-epoch permutation.

    Epoch e's order is a permutation seeded by (seed, e) (identity when shuffle is off). Global
    batch b is rows [b·B·R, (b+1)·B·R) of it, B = batch_size, R = num_replicas; rank r takes its
    B-slice. The last incomplete batch is dropped. `consumed` counts batches handed out this
    epoch and iteration restarts from it, so setting (epoch, consumed) resumes mid-epoch.

    It subclasses DistributedSampler only so that Lightning sees a distribution-aware sampler and
    does not try to wrap it; it shards by rank itself and needs no process group.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
        consumed: int = 0,
    ) -> None:  # DistributedSampler.__init__ is skipped on purpose: it wants a dataset and a process group
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas); got rank={rank}, num_replicas={num_replicas}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = epoch
        self.consumed = consumed
        self.drop_last = True

    def __len__(self) -> int:
        return self.num_rows // (self.batch_size * self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start; a new epoch starts from its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_rows).tolist()

    def __iter__(self):
        n = len(self)
        if self.consumed >= n:  # a finished epoch iterated again without set_epoch: move on
            self.epoch, self.consumed = self.epoch + 1, 0
        order = self.permutation(self.epoch)
        step = self.batch_size * self.num_replicas
        for b in range(self.consumed, n):
            start = b * step + self.rank * self.batch_size
            self.consumed = b + 1  # counted when handed out, not when collated or trained on
            yield order[start : start + self.batch_size]
