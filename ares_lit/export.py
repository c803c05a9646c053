"""`python -m ares_lit.export`: a training checkpoint -> a Hugging Face folder that transformers and vLLM load.

    python -m ares_lit.export --checkpoint runs/aepo/version_0/checkpoints/last.ckpt --output_dir hf_step250
    python -m ares_lit.export --local_dir runs/aepo/version_0/checkpoints     # -> .../checkpoints/huggingface
    python -m ares_lit.export --checkpoint runs/aepo_lora/.../last.ckpt --output_dir adapter --adapter_only

A LoRA run's checkpoint holds the adapter only; the export rebuilds the run's model with it and
writes the merged model (default), or the PEFT adapter folder with `--adapter_only`.

The checkpoint is either a Lightning `.ckpt` file (single device, DDP) or the folder that
DeepSpeed writes in its place (`last.ckpt/` holding `latest` and `<tag>/*_states.pt`, ZeRO-2
or ZeRO-3 shards from every rank; `latest` names the complete save, ares_lit/atomic_io.py). ZeRO shards are merged with DeepSpeed's `zero_to_fp32` (the
fp32 master weights) and cast to the run's `model.dtype`. The model's architecture, tokenizer and
(for Qwen2.5-VL) image processor come from the run's `model_path`, which the checkpoint's
hyper-parameters name; `--model_path` overrides it (e.g. when the run used a folder that moved).

`--local_dir D` is the seed release's spelling (`python scripts/model_merger.py --local_dir D`,
which writes `D/huggingface`), instead of `--checkpoint`. D is one of
  - a Lightning `.ckpt` file: exported to `<D's folder>/huggingface`;
  - a DeepSpeed checkpoint folder (it has a `latest` file): exported to `D/huggingface`;
  - a folder that holds checkpoints, directly or in its `checkpoints/` subfolder (a run's
    `checkpoints/` folder, or its `version_N/` folder): `last.ckpt` if there is one, else the newest
    `*.ckpt` (file or DeepSpeed folder), is exported to `D/huggingface`; the pick is printed.
`--output_dir` overrides the `huggingface` default; with `--checkpoint` it is required.

An output folder that is not empty is refused (before anything loads) unless `--overwrite` is
given, which replaces it only when it holds a model (config.json or ares_export.json). The folder
is written beside the target and renamed into place, and records its checkpoint and step in
`ares_export.json`.

Only load checkpoints you trust: Lightning checkpoints are pickles.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from ares_lit.atomic_io import DISK_FULL, NO_ROOM_HINT, check_deepspeed_checkpoint

__all__ = ["check_output_dir", "export_checkpoint", "load_checkpoint", "main", "resolve_local_dir"]

_PREFIX = "policy."
_DTYPES = ("auto", "float32", "bfloat16", "float16")
HF_SUBDIR = "huggingface"  # where the seed's model_merger.py (EasyR1) writes the merged model


def _deepspeed_checkpoint(path: Path) -> dict[str, Any]:
    """Lightning's checkpoint dict from a DeepSpeed folder, with the merged fp32 weights as `state_dict`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_file, get_optim_files
    from lightning.pytorch.utilities.deepspeed import ds_checkpoint_dir

    if not (path / "latest").is_file() and not any(path.glob("*/*_states.pt")):
        raise ValueError(
            f"{path} is a folder but not a DeepSpeed checkpoint (it has no 'latest' file); pass a Lightning .ckpt file "
            "or the folder DeepSpeed writes in its place (e.g. .../checkpoints/last.ckpt/)"
        )
    check_deepspeed_checkpoint(path)  # an interrupted save names itself, not a stack trace
    tag_dir = ds_checkpoint_dir(str(path))
    optim = torch.load(get_optim_files(tag_dir)[0], map_location="cpu", weights_only=False)
    zero_stage = optim["optimizer_state_dict"]["zero_stage"]
    del optim
    # Lightning's state (hyper-parameters, loops, callbacks) travels as DeepSpeed "client state" in rank 0's file.
    client = torch.load(get_model_state_file(tag_dir, zero_stage), map_location="cpu", weights_only=False)
    deepspeed_keys = ("module", "optimizer", "lr_scheduler", "csr_tensor_module_names", "skipped_steps",
                      "global_steps", "dp_world_size", "mp_world_size")
    checkpoint = {k: v for k, v in client.items() if k not in deepspeed_keys}
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path))
    checkpoint["state_dict"] = {k.removeprefix("_forward_module."): v for k, v in state_dict.items()}
    checkpoint["zero_stage"] = int(zero_stage)
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict (`state_dict`, `hyper_parameters`, ...) of a .ckpt file or a DeepSpeed folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        return _deepspeed_checkpoint(path)
    try:
        # mmap: a 7B checkpoint is not read into memory twice; weights_only=False: Lightning pickles hparams.
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"cannot read {str(path)!r} as a PyTorch/Lightning checkpoint: {err}") from err


def _policy_state_dict(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path!r} is not a Lightning checkpoint (it has no 'state_dict')")
    policy = {k[len(_PREFIX):]: v for k, v in state_dict.items() if k.startswith(_PREFIX)}
    if not policy:
        sample = ", ".join(list(state_dict)[:3]) or "none"
        raise ValueError(
            f"{path!r} is not an ares_lit checkpoint: it has no '{_PREFIX}*' weights (keys start like: {sample}); "
            "it must come from AdaptiveColdstartModule or AEPOModule"
        )
    return policy


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output folder that is a file, or not empty (unless `overwrite` and it holds a model)."""
    from ares_lit.modules.export import EXPORT_INFO

    path = Path(output_dir).expanduser()
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise ValueError(f"the output folder {str(path)!r} is a file; choose another --output_dir")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:6]) + (" …" if len(entries) > 6 else "")
    is_model = "config.json" in entries or EXPORT_INFO in entries
    if not overwrite:
        what = "a model" if is_model else "files"
        raise ValueError(
            f"the output folder {str(path)!r} already holds {what} ({shown}); pass --overwrite to replace it, "
            "or choose another --output_dir"
        )
    if not is_model:
        raise ValueError(
            f"the output folder {str(path)!r} holds no model ({shown}); --overwrite replaces only a model folder "
            "(config.json or ares_export.json): choose another --output_dir"
        )


def _run_folder(checkpoint: Path) -> str | None:
    """The run's log folder for `<log_dir>/checkpoints/<name>.ckpt` (Lightning's layout), else None."""
    return str(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_path: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    adapter_only: bool = False,
) -> Path:
    """Write the checkpoint's policy as an HF folder (weights, config, tokenizer, image processor).

    Args:
        checkpoint: a Lightning .ckpt file or a DeepSpeed checkpoint folder.
        output_dir: the HF folder to write; a non-empty one is refused unless `overwrite` (check_output_dir).
        model_path: the run's model (folder, builtin or hub name); None = the checkpoint's hyper-parameters.
        dtype: weights dtype; "auto" = the run's `model.dtype` (float32 when unknown).
        overwrite: replace a model folder already at `output_dir`.
        adapter_only: a LoRA run's checkpoint: write the PEFT adapter folder instead of the merged model.
    """
    from ares_lit.models.resolve import check_model_path, resolve_model_path

    if dtype not in _DTYPES:
        raise ValueError(f"--dtype must be one of {_DTYPES}; got {dtype!r}")
    check_output_dir(output_dir, overwrite)  # before anything loads
    if model_path:
        check_model_path(str(model_path))
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    from ares_lit.modules.export import export_hf
    from ares_lit.vision import is_vision_language

    ckpt = load_checkpoint(checkpoint)
    weights = _policy_state_dict(ckpt, str(checkpoint))
    hparams = ckpt.get("hyper_parameters") or {}
    model_path = model_path or hparams.get("model_path")
    if not model_path:
        raise ValueError(f"{str(checkpoint)!r} does not record model.model_path; pass --model_path (the run's model)")
    lora = hparams.get("lora")
    if adapter_only and lora is None:
        raise ValueError(f"--adapter_only: {str(checkpoint)!r} is a full fine-tuning checkpoint (its run had no model.lora)")
    source = resolve_model_path(str(model_path))
    if dtype == "auto":
        dtype = hparams.get("dtype") or "float32"
    torch_dtype = getattr(torch, dtype)
    path = Path(checkpoint).expanduser()
    info = {"checkpoint": str(path), "log_dir": _run_folder(path), "global_step": ckpt.get("global_step"),
            "model_path": str(model_path), "source": str(source)}
    if lora is not None:
        return _export_lora(lora, weights, source, torch_dtype, Path(output_dir).expanduser(), adapter_only, info, overwrite)

    config = AutoConfig.from_pretrained(source)
    cls = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    with torch.device("meta"):  # the architecture only: every weight comes from the checkpoint
        model = cls.from_config(config, dtype=torch_dtype)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = sorted(k for k in expected if k not in weights and k not in tied)
    unexpected = sorted(k for k in weights if k not in expected)
    wrong = sorted(k for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise ValueError(
            f"the checkpoint's weights do not fit {model_path!r} ({cls.__name__}): missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, other shape {wrong[:5]}; pass the run's model with --model_path"
        )
    weights = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in weights.items()}
    try:
        model.generation_config = GenerationConfig.from_pretrained(source)
    except OSError:
        pass  # a model without generation_config.json: transformers' defaults
    tokenizer = AutoTokenizer.from_pretrained(source)
    return export_hf(model, tokenizer, Path(output_dir).expanduser(), "checkpoint's policy", state_dict=weights,
                     source=source, info=info, existing="replace" if overwrite else "refuse")


def _export_lora(lora, weights, source, torch_dtype, output_dir: Path, adapter_only: bool, info: dict, overwrite: bool) -> Path:
    """A LoRA run's checkpoint holds the adapter only: rebuild base + adapter from the run's model,
    load the adapter, then write the merged model (W + ΔW) or the PEFT adapter folder."""
    from transformers import AutoTokenizer

    from ares_lit.modules.export import export_adapter, export_hf
    from ares_lit.modules.lora import apply_lora, check_lora, merged_state_dict
    from ares_lit.modules.policy import load_pretrained

    settings = check_lora(lora)  # the checkpoint's LoraSettings (or a dict)
    policy = apply_lora(load_pretrained(str(source), torch_dtype), settings)
    wanted = {n for n, p in policy.named_parameters() if p.requires_grad}
    missing = sorted(wanted - set(weights))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} adapter tensor(s) of its run's model.lora (e.g. {missing[0]})")
    policy.load_state_dict({k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    existing = "replace" if overwrite else "refuse"
    if adapter_only:
        return export_adapter(policy, tokenizer, output_dir, "checkpoint's policy", info=info, existing=existing)
    return export_hf(policy.get_base_model(), tokenizer, output_dir, "checkpoint's policy",
                     state_dict=merged_state_dict(policy, False, True), source=source, info={**info, "lora": "merged"},
                     existing=existing)


def _is_deepspeed_dir(path: Path) -> bool:
    return path.is_dir() and (path / "latest").is_file()


def _pick_checkpoint(folder: Path) -> Path | None:
    """`last.ckpt` in `folder`, else its newest `*.ckpt` (a file or a DeepSpeed folder); None when it has none."""
    last = folder / "last.ckpt"
    if last.is_file() or _is_deepspeed_dir(last):
        return last
    candidates = [p for p in folder.glob("*.ckpt") if p.is_file() or _is_deepspeed_dir(p)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))


def resolve_local_dir(local_dir: str | os.PathLike) -> tuple[Path, Path, bool]:
    """`--local_dir D` -> (the checkpoint to export, the default output folder, whether it was picked from a folder).

    D is a `.ckpt` file (output: `<its folder>/huggingface`), a DeepSpeed checkpoint folder, or a folder
    holding checkpoints directly or in `checkpoints/` (output: `D/huggingface`). Raises FileNotFoundError
    for a missing D and ValueError for a folder without checkpoints; nothing is loaded.
    """
    path = Path(local_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--local_dir {str(path)!r} does not exist")
    if path.is_file():
        return path, path.parent / HF_SUBDIR, False
    if _is_deepspeed_dir(path):
        return path, path / HF_SUBDIR, False
    for folder in (path, path / "checkpoints"):
        picked = _pick_checkpoint(folder) if folder.is_dir() else None
        if picked is not None:
            return picked, path / HF_SUBDIR, True
    raise ValueError(
        f"--local_dir {str(path)!r} holds no checkpoint: it is not a DeepSpeed checkpoint folder (no 'latest' file) "
        "and neither it nor its 'checkpoints/' subfolder has a *.ckpt; pass a .ckpt file, a DeepSpeed checkpoint "
        "folder, or a run's checkpoints/ or version_N/ folder"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ares_lit.export", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", default=None, help="a Lightning .ckpt file or a DeepSpeed checkpoint folder")
    which.add_argument(
        "--local_dir", default=None,
        help="the seed's spelling: a .ckpt file, a DeepSpeed checkpoint folder, or a folder holding checkpoints "
             "(a run's checkpoints/ or version_N/ folder: last.ckpt, else the newest *.ckpt); the output defaults "
             f"to <local_dir>/{HF_SUBDIR} (<the .ckpt's folder>/{HF_SUBDIR} for a file)",
    )
    parser.add_argument(
        "--output_dir", default=None,
        help=f"the Hugging Face folder to write; required with --checkpoint; default with --local_dir: <local_dir>/{HF_SUBDIR}",
    )
    parser.add_argument("--model_path", default=None, help="the run's model; default: the checkpoint's model.model_path")
    parser.add_argument("--dtype", default="auto", choices=_DTYPES, help="weights dtype; auto = the run's model.dtype")
    parser.add_argument("--adapter_only", action="store_true",
                        help="a LoRA run's checkpoint: write the PEFT adapter folder (adapter_config.json + weights) "
                             "instead of the merged model; infer, evaluate and fit accept either")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model already in the output folder (a non-empty folder is refused without it)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.output_dir is None:
        parser.error("--output_dir is required with --checkpoint (or pass --local_dir, which defaults it to "
                     f"<local_dir>/{HF_SUBDIR})")
    try:
        checkpoint, output_dir = args.checkpoint, args.output_dir
        if args.local_dir is not None:
            checkpoint, default_output, picked = resolve_local_dir(args.local_dir)
            if picked:
                print(f"[ares_lit] --local_dir {args.local_dir}: exporting the checkpoint {checkpoint}", flush=True)
            output_dir = output_dir or default_output
        export_checkpoint(checkpoint, output_dir, args.model_path, args.dtype, args.overwrite, args.adapter_only)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        parser.exit(1, f"{parser.prog}: error: {err}\n       {NO_ROOM_HINT} export again\n")


if __name__ == "__main__":
    main()
