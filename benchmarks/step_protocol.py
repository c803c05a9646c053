"""What `bench_step.py` and its arm workers share: the workload, the step protocol, FLOP counts.

Each arm (ares_lit with the hf or the vllm engine, TRL's GRPOTrainer) runs in its own worker
process, `python benchmarks/step_arm_<name>.py --max-tokens M --steps S`, so that the arms can be
stepped in turn (interleaved: machine-load drift hits every arm alike) without sharing a process.

Protocol (stdin/stdout, one line each):
  worker -> "BENCH {"event": "ready", ...}"   once the trainer is built, before its first step
  parent -> "go"                               start one optimizer step
  worker -> "BENCH {"event": "step", ...}"    after that step, a `StepReport` as JSON
  parent -> "stop"                             exit (also on end of input)
Anything else a worker prints is logged by the parent but not parsed.

Workload (the same for every arm): the first `PROMPTS` problems of the bundled arithmetic set
(`generate_problems(PROMPTS, seed=0)`) every step, `N` samples each, temperature 1.0, top-p 1,
no top-k, up to M new tokens, a KL term (coefficient 0.01, k3) to a frozen reference, one
optimizer update per step (16 samples in micro-batches), fp32 on the CPU, reward = the
math-verify grade of the last number.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

PROMPTS = 4
N = 4
TEMPERATURE = 1.0
KL_COEF = 0.01
LR = 1e-6
MICRO_BATCH = 8
MODEL = "builtin:smollm2-135m-instruct"


def problems() -> list[dict]:
    """The benchmark's prompts: id, question, answer, level."""
    from data_modules.builtin_math import generate_problems

    return generate_problems(PROMPTS, seed=0)


@dataclass
class StepReport:
    """One optimizer step of one arm."""

    wall: float
    """Seconds from "go" to the end of the optimizer step."""
    gen_tokens: int
    """Response tokens generated in the step (eos included)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: generation, score_policy, score_reference, update, other (the rest)."""
    passes: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per forward pass kind (score_policy, score_reference, update): {"real": real tokens (prompt +
    response), "computed": positions run through the decoder, "response": response positions
    run through the LM head}. pad share = 1 - real / computed."""


def emit(event: str, **payload) -> None:
    """Write one protocol line to the real stdout."""
    sys.__stdout__.write("BENCH " + json.dumps({"event": event, **payload}) + "\n")
    sys.__stdout__.flush()


def emit_step(report: StepReport) -> None:
    emit("step", **asdict(report))


def wait_for_go() -> bool:
    """Block until the parent says "go" (True) or "stop" / end of input (False)."""
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            return False
        if line.strip() == "go":
            return True


def model_dims(config) -> dict[str, int]:
    """Parameter counts of a decoder-only HF config: body (without embeddings and head), head (V x D)."""
    d, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    hd = getattr(config, "head_dim", None) or d // heads
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    mlp = 3 * d * config.intermediate_size
    return {"body": layers * (attn + mlp), "head": v * d, "layers": layers, "hidden": d}


def pass_flops(dims: dict[str, int], computed: float, response: float, backward: bool) -> float:
    """Matmul FLOPs of one pass: 2·body per decoder position, 2·V·D per LM-head position, x3 with
    backward (its two matmuls per forward one). Attention scores are left out (small at these
    lengths: under 5% for 135M at 400 tokens), so achieved FLOP/s is a slight underestimate."""
    fwd = 2.0 * dims["body"] * computed + 2.0 * dims["head"] * response
    return fwd * (3.0 if backward else 1.0)
