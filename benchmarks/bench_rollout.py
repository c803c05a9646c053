"""Generation throughput of the rollout engines on the same model and prompts.

    python benchmarks/bench_rollout.py                          # embedded SmolLM2-135M, 64 prompts
    python benchmarks/bench_rollout.py --engines hf --max-tokens 32
    python benchmarks/bench_rollout.py --model builtin:tiny-qwen2

Prints tokens/s per engine; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", help="vLLM dtype (the HF engine runs fp32 on the CPU)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.prompting import build_prompt_text
    from ares_lit.rollout import SamplingConfig, build_engine
    from data_modules.builtin_math import generate_problems

    path = resolve_model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    problems = generate_problems(args.prompts, seed=0)
    prompts = [tok(build_prompt_text(tok, p["question"]), add_special_tokens=False).input_ids for p in problems]
    sampling = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    print(f"model={path} prompts={len(prompts)} max_tokens={args.max_tokens} torch_threads={torch.get_num_threads()}")
    for name in args.engines.split(","):
        start = time.perf_counter()
        if name == "vllm":
            engine = build_engine("vllm", model_path=str(path), dtype=args.dtype, max_model_len=1024, seed=0)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            engine = build_engine("hf", model=model, tokenizer=tok)
        ready = time.perf_counter() - start
        engine.generate(prompts[:2], SamplingConfig(n=1, max_tokens=4, seed=0))  # warm-up
        start = time.perf_counter()
        out = engine.generate(prompts, sampling)
        sec = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for group in out for c in group)
        print(f"{name:>5}: start {ready:6.1f} s | {tokens} tokens in {sec:6.1f} s = {tokens / sec:8.1f} tok/s")
        engine.close()


if __name__ == "__main__":
    main()
