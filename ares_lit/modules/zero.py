"""DeepSpeed ZeRO-3 and Hugging Face models: loading into shards, building unsharded copies, gathering.

Under `DeepSpeedStrategy(stage=3)` Lightning runs `configure_model` inside `deepspeed.zero.Init`,
so every parameter is partitioned the moment its module is built. What follows from that, one helper each:

- `hf_zero3_loading`: `from_pretrained` must know about it, or it writes the checkpoint into
  empty shards (an IndexError, or silently random weights). transformers loads shard-aware while
  an `HfDeepSpeedConfig` is alive; the context keeps one alive during loading only.
- `unpartitioned`: a frozen reference model that DeepSpeed does not wrap must not be partitioned
  (nothing would gather its weights in forward); build it with zero.Init's patches lifted.
- `param_shape` / `gathered_state_dict`: a partitioned parameter has shape [0]; its real shape is
  `ds_shape`, and reading its values (the final export) needs a gather, one parameter at a time
  so that no rank ever holds the whole model.
- `shard_for_inference`: the AEPO reference, partitioned for forward passes only (no optimizer).
- `gathered_parameters`: weight sync into the rollout engine, one gathered parameter at a time.
- `same_count_on_all_ranks`: each call of a sharded module is a collective, so a loop over a
  per-rank number of chunks must run the same number of times on every rank.

Everything here is a no-op without ZeRO-3, and imports DeepSpeed only under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "zero3_enabled",
    "hf_zero3_loading",
    "unpartitioned",
    "param_shape",
    "gathered_state_dict",
    "shard_for_inference",
    "gathered_parameters",
    "same_count_on_all_ranks",
]


def zero3_enabled(strategy) -> bool:
    """True when `strategy` is Lightning's DeepSpeedStrategy with ZeRO stage 3."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict) and strategy.zero_stage_3


@contextlib.contextmanager
def hf_zero3_loading(strategy) -> Iterator[None]:
    """Inside `configure_model`: let `from_pretrained` load the checkpoint straight into ZeRO-3 shards."""
    if strategy is None or not zero3_enabled(strategy):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(strategy.config)  # transformers holds only a weakref: keep this one alive
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf_config


@contextlib.contextmanager
def unpartitioned(strategy) -> Iterator[None]:
    """Build modules normally even inside Lightning's `deepspeed.zero.Init` (for models DeepSpeed does not wrap)."""
    if strategy is None or not zero3_enabled(strategy):
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context

    shutdown_init_context()
    try:
        yield
    finally:
        restore_init_context()


def param_shape(p: torch.Tensor) -> torch.Size:
    """The full shape of a parameter, also when ZeRO-3 has partitioned it (its `.shape` is then [0])."""
    return getattr(p, "ds_shape", p.shape)


def gathered_state_dict(model: torch.nn.Module, rank_zero: bool, names: set[str] | None = None) -> dict[str, torch.Tensor] | None:
    """The full state dict of a ZeRO-3 model, on the CPU of rank 0 (None on the other ranks).

    Every rank must call it (each gather is a collective). Parameters are gathered one at a
    time and copied to the CPU, so a rank holds at most one full parameter on its device.
    Tied parameters appear under each of their names, as in `state_dict()`. `names`: only these
    entries (every rank must pass the same set).
    """
    import deepspeed

    out: dict[str, torch.Tensor | None] = {}
    seen: dict[int, torch.Tensor | None] = {}  # tracked on every rank, so all ranks gather the same tensors
    for name, tensor in model.state_dict(keep_vars=True).items():
        if names is not None and name not in names:  # e.g. a LoRA adapter's tensors only
            continue
        if id(tensor) not in seen:  # tied weights: one gather, every name
            if hasattr(tensor, "ds_id"):
                with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                    seen[id(tensor)] = tensor.data.detach().cpu().clone() if rank_zero else None
            else:
                seen[id(tensor)] = tensor.detach().cpu().clone() if rank_zero else None
        out[name] = seen[id(tensor)]
    return out if rank_zero else None


def shard_for_inference(model: torch.nn.Module, strategy) -> torch.nn.Module:
    """Partition a frozen model with ZeRO-3 for inference only (no optimizer): the AEPO reference.

    Returns the wrapped module; its forwards gather each layer's parameters on the fly, so no
    rank holds the whole model. Parameter offload follows the strategy's `offload_param`.
    """
    import deepspeed

    zero = dict(strategy.config.get("zero_optimization", {}))
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": zero.get("stage3_param_persistence_threshold", 1e5),
            **({"offload_param": zero["offload_param"]} if zero.get("offload_param") else {}),
        },
    }
    for precision in ("bf16", "fp16"):
        if strategy.config.get(precision, {}).get("enabled"):
            config[precision] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine.module


def gathered_parameters(model: torch.nn.Module, enabled: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, gathering ZeRO-3 shards ONE parameter at a time.

    For weight sync into the rollout engine. Every rank must drain it (each gather is a
    collective, in the same order everywhere). Each yielded tensor is a copy, valid after the
    gather is released: vLLM buffers a layer's tensors until the whole layer has arrived. Without
    ZeRO-3 (`enabled` False) it is `named_parameters()` unchanged, no copies.
    """
    if not enabled:
        yield from model.named_parameters()
        return
    import deepspeed

    for name, p in model.named_parameters():
        if hasattr(p, "ds_id"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                full = p.data.detach().clone()
            yield name, full
        else:
            yield name, p.detach()


def same_count_on_all_ranks(count: int, module: torch.nn.Module, device: torch.device) -> int:
    """The largest `count` over all ranks when `module` has ZeRO-3-sharded parameters, else `count`.

    Each call of a sharded module gathers its parameters, a collective: every rank must call it
    equally often, or the ranks hang (NCCL) or abort (gloo: "collective mismatch"). A loop over
    a per-rank number of chunks (e.g. LM-head chunks of a rank's response tokens) runs this many
    iterations instead, with empty chunks at the end on ranks that have fewer.
    """
    import torch.distributed as dist

    sharded = any(hasattr(p, "ds_id") for p in module.parameters())
    if not sharded or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return count
    t = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def adamw(strategy, param_groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW for both stages: DeepSpeed's CPU Adam when ZeRO offloads the optimizer, else torch's.

    ZeRO-Offload steps the optimizer on the CPU and refuses a client torch optimizer (it would be
    slow); `DeepSpeedCPUAdam(adamw_mode=True)` is the same update, vectorised (its op is compiled
    once into TORCH_EXTENSIONS_DIR).
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    # An empty group (a LoRA policy trains only matrices: no norm or bias group) is dropped here:
    # DeepSpeed drops it too, and a scheduler built with one lambda per group would then miscount.
    param_groups = [g for g in param_groups if len(g["params"])]
    offload = False
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict):
        device = strategy.config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        offload = device not in (None, "none")
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(param_groups, lr=lr, betas=betas, adamw_mode=True)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas)
