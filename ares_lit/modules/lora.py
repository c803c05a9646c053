"""LoRA for both ARES stages, through `peft`: settings, checks, the adapter-disabled reference, merged weights.

`model.init_args.lora` (a `LoraSettings`, off by default) wraps the loaded policy in a peft
`PeftModel`: only the adapter (and `modules_to_save`) trains. Three things change with it:

- **The reference costs nothing.** π_ref is the same modules with the adapter disabled
  (`AdapterOff`, used inside `reference_scope`); no frozen second copy is built.
- **Rollout engines get merged weights, out of place.** `merged_weights` yields, under their
  Hugging Face names, `W + ΔW` for every adapted linear layer (ΔW = B·A·α/r, computed from the
  live adapter at the moment of the sync) and the trained copy of every `modules_to_save` module,
  plus the unchanged siblings of those tensors inside the same attention or MLP block: vLLM fuses
  q/k/v and gate/up into one module and reprocesses a module only once all of its shards arrive.
  The trainer's own weights are never merged in place, so there is no half-merged state that a
  sampler or an interrupted step could see (verl #3159), and no unmerge to forget.
- **Checkpoints hold the adapter.** The base weights come from `model_path` again at resume;
  `last.ckpt` (or a DeepSpeed folder, `exclude_frozen_parameters`) holds the trainable
  tensors and their optimizer state only (`trainable_state`).

Everything imports peft lazily, so a run without LoRA never needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "LoraSettings",
    "AdapterOff",
    "check_lora",
    "check_targets",
    "apply_lora",
    "is_lora",
    "reference_scope",
    "merged_weights",
    "merged_state_dict",
    "push_weights",
    "trainable_state",
    "adapter_config_path",
]

ALL_LINEAR = "all-linear"
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSettings:
    """Low-rank adaptation of the policy (peft). Off unless `model.init_args.lora` is given.

    Args:
        r: rank of the update B·A (>= 1).
        alpha: scale numerator: ΔW = B·A·alpha/r.
        dropout: dropout on the adapter's input during the update (0 keeps every scoring pass
            deterministic; the scoring passes run in eval mode anyway).
        target_modules: leaf names of the linear layers to adapt (e.g. [q_proj, v_proj]), or
            `all-linear` (every linear layer but the output head).
        modules_to_save: modules trained in full beside the adapter (e.g. [embed_tokens]);
            their copies are synced, checkpointed and exported too.
        adapter_path: continue this PEFT adapter folder (what `python -m ares_lit.export
            --adapter_only` writes) instead of starting a new one on model_path. The default,
            a new adapter on a merged model, keeps π_ref = the model this stage starts from.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = ALL_LINEAR
    modules_to_save: list[str] | None = None
    adapter_path: str | None = None


def check_lora(lora: LoraSettings | dict | None, prefix: str = "model.lora") -> LoraSettings | None:
    """The settings as a LoraSettings, after checking their ranges; a ValueError names the field."""
    if lora is None:
        return None
    if isinstance(lora, dict):
        unknown = set(lora) - set(LoraSettings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{prefix}: unknown key(s) {sorted(unknown)}; the keys are r, alpha, dropout, "
                             "target_modules, modules_to_save, adapter_path")
        lora = LoraSettings(**lora)
    if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 1:
        raise ValueError(f"{prefix}.r must be an integer >= 1 (the adapter's rank, e.g. 16); got {lora.r!r}")
    if not lora.alpha > 0:
        raise ValueError(f"{prefix}.alpha must be > 0 (ΔW = B·A·alpha/r; 2·r is usual); got {lora.alpha!r}")
    if not 0 <= lora.dropout < 1:
        raise ValueError(f"{prefix}.dropout must be in [0, 1); got {lora.dropout!r}")
    targets = lora.target_modules
    if isinstance(targets, str):
        if targets != ALL_LINEAR:
            raise ValueError(f"{prefix}.target_modules must be a list of module names or '{ALL_LINEAR}'; got {targets!r}")
    elif not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{prefix}.target_modules must be a non-empty list of module names or '{ALL_LINEAR}'; got {targets!r}")
    if lora.adapter_path is not None and adapter_config_path(lora.adapter_path) is None:
        raise ValueError(
            f"{prefix}.adapter_path {lora.adapter_path!r} is not a PEFT adapter folder (no adapter_config.json); "
            "give what `python -m ares_lit.export --adapter_only` writes, or remove it to start a new adapter"
        )
    return lora


def adapter_config_path(folder: str | Path) -> Path | None:
    """`folder/adapter_config.json` when folder is a PEFT adapter folder, else None."""
    path = Path(str(folder)).expanduser() / "adapter_config.json"
    return path if path.is_file() else None


def _module_names(model_dir: str) -> tuple[set[str], set[str]] | None:
    """(leaf names of linear layers, leaf names of all modules) of the model in model_dir, built on
    the meta device from its config.json: no weights are read. None when there is no config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from ares_lit.vision import is_vision_language

    if not (Path(model_dir) / "config.json").is_file():
        return None
    config = AutoConfig.from_pretrained(model_dir)
    cls = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    linear, every = set(), set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        every.add(leaf)
        if isinstance(module, torch.nn.Linear):
            linear.add(leaf)
    return linear, every


def check_targets(lora: LoraSettings, model_dir: str, prefix: str = "model.lora") -> None:
    """Every target (and module to save) names a module of the model in model_dir (read from its
    config.json on the meta device, before any weights load); a ValueError names the field."""
    names = _module_names(model_dir)
    if names is None:
        return  # a hub name: peft checks the targets when the adapter is applied
    linear, every = names
    if isinstance(lora.target_modules, list):
        missing = [t for t in lora.target_modules if t.rsplit(".", 1)[-1] not in linear]
        if missing:
            raise ValueError(
                f"{prefix}.target_modules {missing} match no linear layer of {model_dir}; its linear layers are "
                f"{sorted(linear)} (or give '{ALL_LINEAR}')"
            )
    missing = [m for m in lora.modules_to_save or [] if m.rsplit(".", 1)[-1] not in every]
    if missing:
        raise ValueError(f"{prefix}.modules_to_save {missing} match no module of {model_dir} (e.g. embed_tokens, lm_head)")


def apply_lora(policy: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """Wrap the loaded policy in a trainable PeftModel (a new adapter, or lora.adapter_path's)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if lora.adapter_path is not None:
        model = PeftModel.from_pretrained(policy, str(Path(lora.adapter_path).expanduser()), is_trainable=True)
    else:
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=lora.modules_to_save,
            bias="none",
            task_type="CAUSAL_LM",
        )
        # The adapter's initial A depends on the run's seed alone, not on how much of the global RNG
        # stream ran before configure_model (it differs with max_steps, callbacks, ...): same seed, same
        # start, on every rank and in every run (a resumed run's reference run included).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0) or 0))
            model = get_peft_model(policy, config)
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731 - a ZeRO-3 shard's numel() is 0
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0:
        print(f"[ares_lit] LoRA r={lora.r}: {trainable:,} trainable parameters of {total:,} ({100 * trainable / total:.2f}%)",
              flush=True)
    return model


def is_lora(model) -> bool:
    """True for a peft PeftModel (or the AdapterOff view of one)."""
    model = model.policy if isinstance(model, AdapterOff) else model
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class AdapterOff:
    """π_ref of a LoRA policy: the policy's own modules, used with the adapter disabled.

    Every attribute is the policy's; forwards must run inside `reference_scope(self)`, which
    turns the adapter off for their duration (ScoringMixin.score and the cold start's KL do).
    Kept in a list by the modules, so it is never registered as a submodule.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        self.policy = policy

    def __getattr__(self, name: str):
        return getattr(self.__dict__["policy"], name)


def reference_scope(model) -> contextlib.AbstractContextManager:
    """The context a forward of `model` runs in: the adapter disabled for AdapterOff, else nothing."""
    return model.policy.disable_adapter() if isinstance(model, AdapterOff) else contextlib.nullcontext()


# ---------------------------------------------------------------------- merged weights
def _hf_name(peft_name: str) -> str | None:
    """The plain model's name of a PeftModel tensor; None for adapter tensors and replaced originals."""
    name = peft_name[len(_PEFT_PREFIX):] if peft_name.startswith(_PEFT_PREFIX) else peft_name
    if ".lora_" in name or ".original_module." in name:
        return None
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


def _block(name: str) -> str:
    """The module two levels above a tensor (`model.layers.0.self_attn` for its q_proj.weight):
    the unit that vLLM's fused linear layers are reprocessed in."""
    return name.rsplit(".", 3)[0] if name.count(".") >= 3 else ""


@contextlib.contextmanager
def _gathered(params: list[torch.Tensor], enabled: bool):
    if not enabled or not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def _merged(module, weight: torch.Tensor, adapter: str) -> torch.Tensor:
    """W + ΔW of one LoRA layer, in W's dtype (ΔW summed in fp32), as a new tensor."""
    delta = module.get_delta_weight(adapter)
    return (weight.detach().float() + delta.detach().float()).to(weight.dtype)


def _named_tensors(policy: torch.nn.Module, use_state_dict: bool) -> Iterator[tuple[str, torch.Tensor, object]]:
    """(peft name, tensor, owning LoRA layer or None) over the policy's parameters (or state dict)."""
    from peft.tuners.lora import LoraLayer

    owners = {}
    for mod_name, module in policy.named_modules():
        if isinstance(module, LoraLayer):
            owners[f"{mod_name}.base_layer.weight"] = module
    items = policy.state_dict(keep_vars=True).items() if use_state_dict else policy.named_parameters()
    for name, tensor in items:
        yield name, tensor, owners.get(name)


def merged_weights(policy: torch.nn.Module, zero3: bool = False, only_changed: bool = True,
                   use_state_dict: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of the policy with its adapter merged, computed out of place.

    `only_changed`: just the tensors of blocks that hold an adapted layer or a module to save
    (what a rollout engine that already holds the base model needs after an update); else
    every tensor (an export). Under ZeRO-3 each layer's W, A and B are gathered together, one
    layer at a time; every rank must drain the iterator (each gather is a collective).
    """
    adapter = policy.active_adapter if isinstance(policy.active_adapter, str) else policy.active_adapter[0]
    entries = list(_named_tensors(policy, use_state_dict))
    changed_blocks = set()
    if only_changed:
        for name, _, owner in entries:
            hf = _hf_name(name)
            if hf is not None and (owner is not None or ".modules_to_save." in name):
                changed_blocks.add(_block(hf))
    seen: dict[int, torch.Tensor] = {}  # tied tensors (a state dict's lm_head.weight): the same object under each name
    for name, tensor, owner in entries:
        hf = _hf_name(name)
        if hf is None or (only_changed and _block(hf) not in changed_blocks):
            continue
        if id(tensor) in seen:
            yield hf, seen[id(tensor)]
            continue
        if owner is not None and adapter in owner.lora_A and not getattr(owner, "merged", False):
            params = [tensor, owner.lora_A[adapter].weight, owner.lora_B[adapter].weight]
            with _gathered(params, zero3):
                value = _merged(owner, tensor, adapter)
        else:
            with _gathered([tensor], zero3):
                value = tensor.detach().clone() if zero3 and hasattr(tensor, "ds_id") else tensor.detach()
        seen[id(tensor)] = value
        yield hf, value


def push_weights(engine, policy: torch.nn.Module, zero3: bool, engine_dropped_weights: bool = False) -> None:
    """A weight sync into the rollout engine. LoRA: the changed blocks, merged (every tensor, merged,
    when the engine dropped its weights, as vLLM's sleep level 2 does); otherwise every parameter,
    gathered one at a time under ZeRO-3."""
    if is_lora(policy):
        partial = not engine_dropped_weights
        engine.load_weights(merged_weights(policy, zero3, only_changed=partial), partial=partial)
        return
    from ares_lit.modules.zero import gathered_parameters

    engine.load_weights(gathered_parameters(policy, zero3))


def merged_state_dict(policy: torch.nn.Module, zero3: bool, rank_zero: bool) -> dict[str, torch.Tensor] | None:
    """The full merged state dict (HF names, on the CPU) for an export; None on ranks other than 0."""
    out, copies = {}, {}
    for name, tensor in merged_weights(policy, zero3, only_changed=False, use_state_dict=True):
        if rank_zero:  # tied names share one copy, so save_pretrained writes it once, as for a plain model
            out[name] = copies.setdefault(id(tensor), tensor.detach().cpu().clone())
    return out if rank_zero else None


def trainable_state(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a LightningModule's state_dict that train (the adapter and modules to save)."""
    keep = {name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state_dict.items() if k in keep}


class LoraMixin:
    """Checkpoint and strategy handling shared by both LightningModules when `lora` is set.

    `last.ckpt` keeps the trainable tensors only (the base weights load from model_path again);
    resume checks that every adapter tensor is in it, and a checkpoint written with LoRA refuses
    to load into a run without it. Under DeepSpeed the engine's `exclude_frozen_parameters` does
    the same for the checkpoint folder.
    """

    lora: LoraSettings | None = None

    def _init_lora(self, lora, model_path: str) -> None:
        """Check the settings (ranges, then the target names against the model's config.json) before any model loads."""
        self.lora = check_lora(lora)
        if self.lora is None:
            return
        self.strict_loading = False  # the base weights are not in the checkpoint; on_load_checkpoint checks the adapter's
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ValueError("model.lora needs the `peft` package: pip install peft (it is in ares_lit's dependencies)")
        from ares_lit.models.resolve import resolve_model_path

        path = str(model_path)
        if Path(path).expanduser().is_dir():  # a folder's config.json; an adapter folder has none (peft checks)
            check_targets(self.lora, str(Path(path).expanduser()))
        elif path.startswith("builtin:"):
            check_targets(self.lora, resolve_model_path(path))

    def _lora_strategy(self, strategy) -> None:
        """In `setup`: DeepSpeed writes the trainable parameters only into its checkpoint folders."""
        if self.lora is not None and hasattr(strategy, "exclude_frozen_parameters"):
            strategy.exclude_frozen_parameters = True

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora is None:
            return
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = trainable_state(self, checkpoint["state_dict"])
        checkpoint["ares_lora"] = {"keys": sorted(n for n, p in self.named_parameters() if p.requires_grad)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("ares_lora")
        if self.lora is None:
            if saved is not None:
                raise ValueError(
                    "this checkpoint holds a LoRA adapter only (no base weights): resume it with the same "
                    "model.lora settings and model_path as the run that wrote it"
                )
            return
        state = checkpoint.get("state_dict")
        if state is None:
            return  # DeepSpeed: the engine loads its own folder
        wanted = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} adapter tensor(s) of this run's model.lora (e.g. {missing[0]}): "
                "resume with the model.lora settings of the run that wrote it"
            )
