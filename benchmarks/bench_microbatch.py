"""What a micro-batch layout costs: scoring (no grad) and update (forward + backward) passes over
one real rollout batch, for several token budgets, against the old full-width layout and against
padding-free packing.

    python benchmarks/bench_microbatch.py                    # the embedded default's shape
    python benchmarks/bench_microbatch.py --prompts 4 --n 4 --max-tokens 256 --temperature 1.0

The batch is sampled once with vLLM from SmolLM2-135M-Instruct (real prompts, real response
lengths), then every layout runs the same rows through `response_logprobs` in fp32:

  full      fixed 8-row micro-batches at the batch's full width P + R (the layout before #13)
  rows8     8-row micro-batches, rows sorted by length, each cut to its own width
  budget B  `max_tokens_per_*` = B: rows sorted, taken while rows x width <= B, each cut
  packed B  the same rows concatenated into one sequence per micro-batch, positions restarting
            per row, no attention mask (transformers builds a block-diagonal causal mask); SDPA
            on the CPU computes the whole T x T score matrix, so attention grows with T^2

Prints, per layout: micro-batches, the padding share of computed positions, and seconds per pass
(best of --repeats). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--budgets", default="512,768,1024,2048")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ares_lit.batch import plan_micro_batches, row_lengths, trim_columns
    from ares_lit.experience.groups import PromptGroup
    from ares_lit.experience.scoring import pack_groups
    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.modules.logprobs import response_logprobs
    from ares_lit.prompting import build_prompt_text
    from ares_lit.rollout import SamplingConfig, build_engine
    from data_modules.builtin_math import generate_problems

    path = str(resolve_model_path("builtin:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    problems = generate_problems(args.prompts, seed=1)
    prompts = [tok(build_prompt_text(tok, p["question"]), add_special_tokens=False).input_ids for p in problems]
    engine = build_engine("vllm", model_path=path, dtype="float32", max_model_len=1024, seed=0, kv_cache_gb=1.0)
    groups = engine.generate(prompts, SamplingConfig(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=0))
    engine.close()
    rows = pack_groups(
        [PromptGroup({"prompt_ids": p, "answer": ""}, g) for p, g in zip(prompts, groups)],
        tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    ids, mask, R = rows.input_ids, rows.attention_mask, rows.response_len
    p_lens, r_lens = row_lengths(mask, R)
    n = ids.shape[0]
    print(f"{n} rows; prompt lengths {p_lens.min()}..{p_lens.max()}, response lengths {r_lens.min()}..{r_lens.max()} "
          f"(mean {r_lens.float().mean():.0f}); full width {ids.shape[1]}; torch threads {torch.get_num_threads()}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()

    def padded(plan, trim=True):
        out = []
        for m in plan:
            if trim:
                cols, r = trim_columns(mask[m], R)
                out.append(("pad", ids[m][:, cols], mask[m][:, cols], r))
            else:
                out.append(("pad", ids[m], mask[m], R))
        return out

    def packed(plan):
        out = []
        for m in plan:
            seqs = [ids[i][mask[i].bool()] for i in m.tolist()]
            heads, offset = [], 0
            for i, s in zip(m.tolist(), seqs):  # positions whose next token is a response token
                p = int(p_lens[i])
                heads.append(torch.arange(offset + p - 1, offset + len(s) - 1))
                offset += len(s)
            out.append(("pack", seqs, None, torch.cat(heads)))
        return out

    def run_pass(micros, grad: bool) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.set_grad_enabled(grad):
                for kind, a, b, c in micros:
                    if kind == "pad":
                        lp, _ = response_logprobs(model, a, b, c, 1.0)
                    else:  # one packed row: positions restart per sequence, the mask is block-diagonal
                        seqs, heads = a, c
                        flat = torch.cat(seqs)[None]
                        pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
                        hidden = model.get_decoder()(input_ids=flat, position_ids=pos).last_hidden_state[0]
                        # the LM head on response positions only, as response_logprobs does
                        logits = model.get_output_embeddings()(hidden[heads]).float()
                        lp = logits.log_softmax(-1).gather(-1, flat[0, heads + 1, None])
                    if grad:
                        lp.sum().backward()
            best = min(best, time.perf_counter() - t)
        return best

    def pad_share(micros) -> float:
        real = int(mask.sum())
        computed = sum(b.numel() if k == "pad" else sum(len(s) for s in a) for k, a, b, _ in micros)
        return 1 - real / computed

    every = torch.arange(n)
    layouts = [("full (8 rows)", padded([every[i : i + 8] for i in range(0, n, 8)], trim=False)),
               ("rows8 sorted", padded(plan_micro_batches(p_lens, r_lens, every, 8, None)))]
    for b in [int(x) for x in args.budgets.split(",")]:
        plan = plan_micro_batches(p_lens, r_lens, every, n, b)
        layouts.append((f"budget {b}", padded(plan)))
        layouts.append((f"packed {b}", packed(plan)))
    print(f"{'layout':<16} {'micro':>5} {'pad %':>6} {'score s':>8} {'update s':>9}")
    for name, micros in layouts:
        score = run_pass(micros, grad=False)
        update = run_pass(micros, grad=True)
        print(f"{name:<16} {len(micros):5d} {100 * pad_share(micros):6.1f} {score:8.2f} {update:9.2f}", flush=True)


if __name__ == "__main__":
    main()
