"""Saving a trained policy as a Hugging Face folder (shared by both ARES stages and `python -m ares_lit.export`).

Every export is written into a hidden sibling folder (`.<name>.partial-*`) and renamed into place
once complete, so a reader never sees a half-written model, and it carries `ares_export.json`
(what was exported, from which run and step, when, by which ares_lit). A folder already at the
target is never overwritten silently: `export_hf` moves it aside to `<target>.<N>` (first free N)
and says so in one line, replaces it only when it is an earlier export of the same run, and the
export CLI refuses a non-empty target unless `--overwrite` is given (`existing=`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import lightning.pytorch as pl
import torch

from ares_lit.atomic_io import disk_full_errno, no_room

__all__ = ["EXPORT_INFO", "export_hf", "export_adapter", "export_at_fit_end", "read_export_info", "save_image_processor"]

EXPORT_INFO = "ares_export.json"
_EXISTING = ("move", "replace", "refuse")


def save_image_processor(source: str | Path, target: str | Path) -> bool:
    """Copy a vision-language model's image processor from `source` to `target`; False for a text model.

    Without it the folder does not load as a Qwen2.5-VL model in vLLM or `VisionProcessor`.
    """
    import warnings

    from transformers import AutoConfig, AutoImageProcessor

    from ares_lit.vision import is_vision_language

    if not is_vision_language(AutoConfig.from_pretrained(str(source))):
        return False
    with warnings.catch_warnings():  # "requires torchvision ... falling back to the PIL backend" on CPU
        warnings.simplefilter("ignore")
        AutoImageProcessor.from_pretrained(str(source)).save_pretrained(str(target))
    return True


def _ares_lit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ares_lit")
    except PackageNotFoundError:
        return "unknown"


def read_export_info(folder: str | Path) -> dict:
    """`folder`'s ares_export.json, or {} (an export made before it existed, or not an export)."""
    try:
        info = json.loads((Path(folder) / EXPORT_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _origin(folder: Path) -> str:
    """'from runs/coldstart/version_2, step 24' for a previous export (what its ares_export.json says)."""
    info = read_export_info(folder)
    run = info.get("log_dir") or info.get("checkpoint")
    if not (folder / "config.json").is_file():
        return "not a model: no config.json"
    if run is None:
        return "from an unknown run: no " + EXPORT_INFO
    step = info.get("global_step")
    return f"from {run}" + (f", step {step}" if step is not None else "")


def _free_sibling(target: Path) -> Path:
    n = 1
    while os.path.lexists(f"{target}.{n}"):
        n += 1
    return Path(f"{target}.{n}")


def _same_run(folder: Path, log_dir: str | None) -> bool:
    previous = read_export_info(folder).get("log_dir")
    return bool(log_dir and previous) and os.path.abspath(previous) == os.path.abspath(log_dir)


def _put_in_place(staged: Path, target: Path, existing: str, log_dir: str | None) -> None:
    """Rename the finished `staged` folder to `target`, dealing with what is there first (export_hf)."""
    old = None
    if os.path.lexists(target):
        if not target.is_dir():
            raise ValueError(f"export target {str(target)!r} is a file, not a folder")
        if not any(target.iterdir()):
            target.rmdir()
        elif existing == "refuse":
            raise FileExistsError(f"export target {str(target)!r} is not empty")
        elif existing == "replace" or _same_run(target, log_dir):
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        else:
            moved = _free_sibling(target)
            origin = _origin(target)
            os.replace(target, moved)
            print(f"[ares_lit] moved the previous export at {target} ({origin}) to {moved}", flush=True)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_staged(target: Path, existing: str, record: dict, write) -> None:
    """`write(staged)` into a hidden sibling folder, add ares_export.json (`record` + time and
    version), then rename it into place (`_put_in_place`); a failure removes the staged folder."""
    if existing not in _EXISTING:
        raise ValueError(f"existing must be one of {_EXISTING}; got {existing!r}")
    if existing == "refuse" and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(f"export target {str(target)!r} is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    staged.mkdir()
    record = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ares_lit_version": _ares_lit_version()}
    try:
        write(staged)
        (staged / EXPORT_INFO).write_text(json.dumps(record, indent=2, default=str) + "\n")
        _put_in_place(staged, target, existing, record.get("log_dir"))
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if disk_full_errno(exc):  # an OSError, or safetensors' own error for one
            raise no_room(exc, f"the export {target}", "the staged copy was removed; a previous export there is intact") from exc
        raise


def export_hf(
    model,
    tokenizer,
    target: str | Path,
    what: str = "policy",
    state_dict: dict[str, torch.Tensor] | None = None,
    source: str | Path | None = None,
    info: dict | None = None,
    existing: str = "move",
) -> Path:
    """Save `model` and `tokenizer` to `target`, a folder that transformers and vLLM load.

    Args:
        state_dict: the weights to write instead of `model`'s own (gathered ZeRO-3 weights, or a
            checkpoint's); `model` then supplies only the config and the tied-weight layout.
        source: the folder the model was loaded from; a VL model's image processor is copied from it.
        info: more for ares_export.json (`module`, `log_dir`, `global_step`, `checkpoint`, ...);
            `what`, `time` and `ares_lit_version` are always recorded.
        existing: a non-empty folder already at `target`: "move" moves it aside to `<target>.<N>`
            (one line says so; an earlier export of the same `log_dir` is replaced instead),
            "replace" deletes it once the new export is in place, "refuse" raises FileExistsError.
    """
    target, record = Path(target), {"what": what, **(info or {})}

    def write(staged: Path) -> None:
        # Inference default for whoever loads the folder (a VL model keeps use_cache in its text config).
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        use_cache = getattr(config, "use_cache", False)
        config.use_cache = True
        try:
            model.save_pretrained(str(staged), safe_serialization=True, state_dict=state_dict)
        finally:
            config.use_cache = use_cache
        tokenizer.save_pretrained(str(staged))
        if source is not None:
            save_image_processor(source, staged)

    _write_staged(target, existing, record, write)
    print(f"[ares_lit] exported the {what} to {target}", flush=True)
    return target


def export_at_fit_end(module: pl.LightningModule, export_dir: str | None, what: str) -> None:
    """The `on_fit_end` export: `export_dir`, else `<log_dir>/hf_model`; "" disables it.

    A previous run's export at `export_dir` is moved aside to `<export_dir>.<N>` (export_hf).
    Under DeepSpeed ZeRO-3 every rank takes part in gathering the weights (one parameter at a
    time), and rank 0 writes them.
    """
    from ares_lit.modules.zero import gathered_state_dict, zero3_enabled

    if export_dir == "":
        return
    trainer = module.trainer
    log_dir = trainer.log_dir
    if export_dir is None:
        export_dir = os.path.join(log_dir or trainer.default_root_dir, "hf_model")
    from ares_lit.modules.lora import is_lora, merged_state_dict

    state_dict, model, zero3 = None, module.policy, zero3_enabled(trainer.strategy)
    lora = is_lora(model)
    if lora:  # the merged model (W + ΔW, computed out of place); the adapter goes beside it
        state_dict, model = merged_state_dict(module.policy, zero3, trainer.is_global_zero), module.policy.get_base_model()
    elif zero3:
        state_dict = gathered_state_dict(module.policy, trainer.is_global_zero)
    adapter = None
    if lora and zero3:  # the adapter's tensors only: the merged state dict above already gathered the model once
        trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
        adapter = gathered_state_dict(module.policy, trainer.is_global_zero, names=trainable)
    if trainer.is_global_zero:
        source = getattr(module, "resolved_model_path", None)
        hp = getattr(module, "hparams", {})
        info = {"module": type(module).__name__, "log_dir": log_dir, "global_step": trainer.global_step,
                "model_path": hp.get("model_path"), "source": source, **({"lora": "merged"} if lora else {})}
        export_hf(model, module.tokenizer, export_dir, what, state_dict=state_dict, source=source, info=info)
        if lora:
            export_adapter(module.policy, module.tokenizer, Path(export_dir).with_name("adapter"), what,
                           state_dict=adapter, info=info)
    trainer.strategy.barrier("ares_export")


def export_adapter(policy, tokenizer, target: str | Path, what: str = "policy", state_dict=None, info: dict | None = None,
                   existing: str = "move") -> Path:
    """Save a LoRA policy's PEFT adapter folder (adapter_config.json + adapter_model.safetensors,
    with the tokenizer), staged and renamed into place like `export_hf`."""
    def write(staged: Path) -> None:
        adapter = state_dict
        if adapter is not None:  # a gathered ZeRO-3 state dict: keep the adapter's entries, as peft names them
            from peft import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(policy, state_dict=adapter)
        policy.save_pretrained(str(staged), state_dict=adapter, safe_serialization=True)
        tokenizer.save_pretrained(str(staged))

    target = Path(target)
    _write_staged(target, existing, {"what": f"{what} (LoRA adapter)", **(info or {}), "lora": "adapter"}, write)
    print(f"[ares_lit] exported the {what}'s LoRA adapter to {target}", flush=True)
    return target
