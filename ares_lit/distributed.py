"""Collectives that keep the AEPO controller state identical on every data-parallel rank.

Each rank samples and grades its own prompts, but τ, T_d, α_d, κ_d and the per-prompt difficulty
history must be computed from the whole global batch (docs/algorithm.md "Dynamic KL": "all-reduced across
ranks"). The pattern is always *gather, then compute*: every rank receives the same inputs in rank
order and runs the same deterministic update, so the results agree bit for bit.

These are collectives: under DDP every rank must call each one the same number of times, in the
same order. Without an initialised process group, or with a group of one (a single process; vLLM's
in-process engine creates such a group), each returns its input unchanged and communicates nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["world_size", "world_max", "all_gather_cat", "all_gather_object"]


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo (CPU DDP) wants CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def world_max(value: int) -> int:
    """The largest `value` over all ranks (e.g. the most micro-batches any rank must run); the
    identity in a single process. A collective."""
    if world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0, in rank order, on `tensor`'s device.

    The ranks may hold different numbers of rows (e.g. a different count of kept groups); the
    trailing dimensions and the dtype must agree. Rows are padded to the longest rank for the
    exchange and trimmed afterwards.
    """
    n_ranks = world_size()
    if n_ranks == 1:
        return tensor
    dev = _comm_device()
    x = tensor.to(dev)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)  # gloo has no bool collectives
    rows = torch.tensor([x.shape[0]], dtype=torch.long, device=dev)
    all_rows = [torch.empty_like(rows) for _ in range(n_ranks)]
    dist.all_gather(all_rows, rows)
    sizes = [int(r) for r in all_rows]
    longest = max(sizes)
    if longest == 0:  # every rank is empty: nothing to exchange
        return tensor
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(n_ranks)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out.to(device=tensor.device, dtype=tensor.dtype)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (`[obj]` in a single process)."""
    n_ranks = world_size()
    if n_ranks == 1:
        return [obj]
    out: list[Any] = [None] * n_ranks
    dist.all_gather_object(out, obj)
    return out
