"""Estimate pass rates k/n for a cold-start pool with the AEPO stage's rollout engine.

    python -m ares_lit.tools.pass_rate --model_path builtin:smollm2-135m-instruct \\
        --pool pool.jsonl --output pool_with_k.jsonl --n 8 --engine vllm

For every row, n answers are sampled from the ARES prompt (shared `prompting.build_prompt_text`,
the model's chat template), graded against the gold answer with `ares_lit.grading`, and the
count of correct ones is written to the row as `k` (with `n`). With `--temperature 0` (greedy) one
answer is sampled and counted n times, so k is 0 or n. Every other field is kept. Rows
without a usable question or answer are copied unchanged (no k/n; the cold-start DataModule
then skips them as `no_pass_rate`) and counted. `--pool builtin:coldstart` estimates real pass
rates for the bundled pool instead of its simulated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["estimate_pass_rates", "main"]


def estimate_pass_rates(
    rows: list,
    engine,
    tokenizer,
    grader,
    *,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 16,
    question_key: str = "question",
    answer_key: str = "answer",
    prompt_suffix: str | None = None,
    system_prompt: str | None = None,
    progress: bool = True,
) -> tuple[list, dict[str, int]]:
    """(rows with k and n set, counts {"estimated", "skipped"}). Rows are copied, not mutated."""
    from tqdm import tqdm

    from ares_lit.prompting import ARES_PROMPT_SUFFIX, build_prompt_text
    from ares_lit.rollout import SamplingConfig
    from data_modules.prompts import MALFORMED, as_text

    suffix = ARES_PROMPT_SUFFIX if prompt_suffix is None else prompt_suffix
    out = [dict(r) if isinstance(r, dict) else r for r in rows]
    todo = []  # (row index, prompt ids, gold)
    for i, row in enumerate(out):
        if not isinstance(row, dict):
            continue
        question = as_text(row.get(question_key), numbers_ok=False)
        answer = as_text(row.get(answer_key), numbers_ok=True)
        if question in (None, MALFORMED, "") or answer in (None, MALFORMED, ""):
            continue
        text = build_prompt_text(tokenizer, question, suffix, system_prompt)
        todo.append((i, tokenizer(text, add_special_tokens=False)["input_ids"], answer))
    # Greedy answers are all the same (and vLLM refuses n > 1 when greedy): sample one, count it n times.
    draws = 1 if temperature == 0 else n
    bar = tqdm(total=len(todo), desc="pass rate", unit="problem", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        sampling = SamplingConfig(
            n=draws, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed + start
        )
        groups = engine.generate([ids for _, ids, _ in chunk], sampling)
        for (i, _, gold), group in zip(chunk, groups):
            verdicts = grader.grade_batch([c.text for c in group], [gold] * len(group))
            out[i]["k"], out[i]["n"] = int(sum(verdicts)) * (n // draws), n
        bar.update(len(chunk))
    bar.close()
    return out, {"estimated": len(todo), "skipped": len(out) - len(todo)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ares_lit.tools.pass_rate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_path", required=True, help="HF folder, builtin:smollm2-135m-instruct, builtin:tiny-qwen2, or a hub name")
    p.add_argument("--pool", required=True, help="input pool: .jsonl/.json/.parquet file, or builtin:coldstart")
    p.add_argument("--output", required=True, help="output JSON-lines file (rows with k and n)")
    p.add_argument("--n", type=int, default=8, help="samples per problem (paper: 8)")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="rollout engine")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--max_tokens", type=int, default=512, help="maximum answer length in tokens")
    p.add_argument("--max_model_len", type=int, default=None, help="prompt + answer limit (default: prompt budget + max_tokens, vllm; model's, hf)")
    p.add_argument("--dtype", default="float32", help="model dtype for the engine")
    p.add_argument("--batch_size", type=int, default=16, help="problems per generate call (progress granularity)")
    p.add_argument("--kv_cache_gb", type=float, default=1.0, help="vLLM KV cache on the CPU backend")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--question_key", default="question", help="column holding the question")
    p.add_argument("--answer_key", default="answer", help="column holding the gold answer")
    p.add_argument("--system_prompt", default=None, help="optional system message")
    p.add_argument("--builtin_size", type=int, default=192, help="problems when --pool builtin:coldstart")
    p.add_argument("--grade_timeout", type=float, default=5.0, help="seconds per graded answer")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def _read_pool(pool: str, builtin_size: int) -> list:
    if pool == "builtin:coldstart":
        from data_modules.coldstart_pool import generate_pool

        return generate_pool(builtin_size)
    from data_modules.prompts import load_rows

    rows, _, unreadable, name = load_rows(pool, "train")
    if unreadable:
        print(f"[ares_lit] {name}: {unreadable} unreadable lines are not copied to the output", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = _parser().parse_args(argv)
    if args.n < 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise SystemExit("--n, --max_tokens and --batch_size must be >= 1")
    rows = _read_pool(args.pool, args.builtin_size)  # a bad pool fails before the model loads
    if not rows:
        raise SystemExit(f"{args.pool} has no rows")
    from transformers import AutoTokenizer

    from ares_lit.grading import Grader
    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.rollout import build_engine

    path = resolve_model_path(args.model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.engine == "vllm":
        kwargs = {"dtype": args.dtype, "seed": args.seed, "kv_cache_gb": args.kv_cache_gb}
        kwargs["max_model_len"] = args.max_model_len or min(
            512 + args.max_tokens, int(getattr(tokenizer, "model_max_length", 10**9))
        )
    else:
        kwargs = {"dtype": args.dtype, "max_model_len": args.max_model_len, "batch_size": max(1, args.batch_size * args.n)}
    started = time.perf_counter()
    engine = build_engine(args.engine, model_path=path, **kwargs)
    try:
        with Grader(timeout=args.grade_timeout) as grader:
            out, counts = estimate_pass_rates(
                rows,
                engine,
                tokenizer,
                grader,
                n=args.n,
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=args.max_tokens,
                seed=args.seed,
                batch_size=args.batch_size,
                question_key=args.question_key,
                answer_key=args.answer_key,
                system_prompt=args.system_prompt,
                progress=not args.no_progress,
            )
    finally:
        engine.close()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    ks = [r["k"] for r in out if isinstance(r, dict) and "k" in r]
    mean_p = sum(ks) / (args.n * len(ks)) if ks else float("nan")
    print(
        f"[ares_lit] pass rates: {counts['estimated']} problems x {args.n} samples in "
        f"{time.perf_counter() - started:.1f} s, mean p = {mean_p:.3f}; {counts['skipped']} rows skipped "
        f"(no usable question/answer); wrote {output}",
        flush=True,
    )
    return counts


if __name__ == "__main__":
    main()
