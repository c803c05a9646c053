"""Step-benchmark worker for the TRL arm: TRL's `GRPOTrainer` driven one optimizer step per "go".

    python benchmarks/step_arm_trl.py --max-tokens 128 --steps 3 [--threads N]

Speaks the protocol of `step_protocol.py` (BENCH lines on the real stdout, "go" / "stop" on stdin);
everything TRL, transformers or this script print goes to stderr.

TRL configuration (trl 1.16), matched to the ares_lit arm (see `step_protocol` for the workload):
  - fp32 on the CPU (`use_cpu=True`, `bf16=False`, `fp16=False`, the model loaded with dtype float32),
    no gradient checkpointing (TRL's default is on; the ares_lit arm's is off), no PEFT, no Liger,
    torch's AdamW (`optim="adamw_torch"`, as ares_lit's `torch.optim.AdamW`; transformers' default
    would be the fused kernel), lr 1e-6 constant, no warmup, weight decay 0.01, grad-norm clip 1.0.
  - 4 prompts x `num_generations=4` = one generation batch of 16 per optimizer step, scored in
    `per_device_train_batch_size=8` micro-batches with `gradient_accumulation_steps=2`
    (`steps_per_generation` defaults to 2 = one generation per optimizer step), `num_iterations=1`.
  - Sampling: temperature 1.0, top-p 1.0, `top_k=0` (off), `max_completion_length=M`, plain
    `transformers.generate` (`use_vllm=False`, no continuous batching).
  - Loss: `loss_type="dapo"`, TRL 1.16's global token-mean (the per-token losses of the whole
    accumulated batch summed, divided by the number of completion tokens in the generation batch).
    Clip range epsilon 0.2 / epsilon_high 0.3, `beta=0.01` KL to a frozen reference model (k3:
    exp(ref - logp) - (ref - logp) - 1). `use_bias_correction_kl=False` keeps the KL term plain k3
    (TRL's default multiplies it by the differentiable importance ratio, which changes the gradient).
  - Old-log-prob pass: with `gradient_accumulation_steps % (steps_per_generation * num_iterations) ==
    0` and no vLLM, TRL skips it (it uses `per_token_logps.detach()` instead), so `score_policy` is 0
    in this configuration; it is still measured, should TRL ever run one.

Measurement (wrapping the trainer *instance's* methods; TRL's files are untouched):
  - "go" is read in a callback's `on_step_begin`, which transformers calls before the first
    micro-step of the accumulation window, i.e. before `_prepare_inputs` generates; the step report is
    emitted in `on_step_end`, after the optimizer step, scheduler step and `zero_grad` (TRL's metric
    logging for the step runs after that, outside the measured window).
  - generation: `_generate_single_turn` (left-padding the prompts + `model.generate` + cutting
    after the first eos). gen_tokens: the completion ids it returns (eos included, no padding).
  - score_reference / score_policy / update (forward): `_get_per_token_logps_and_entropies`, told
    apart by its model argument (the reference model) and `torch.is_grad_enabled()`.
  - update: every `training_step` minus its `_prepare_inputs` (= loss forward + backward), plus the
    tail from the last `training_step` to `on_step_end` (grad clip, AdamW step, scheduler, zero_grad).
  - passes.*.response counts the positions TRL's fused LM head actually projects (counted at
    `trl.trainer.utils._ChunkedLogProbFunction.apply`). On the CPU (no Triton) TRL 1.16 projects
    *every* position but the last, rows x (seq_len - 1), not just the rows x logits_to_keep
    completion positions (it masks the rest afterwards); on CUDA it projects only the real
    completion tokens. The rows x logits_to_keep figure is logged to stderr for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_protocol
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ares_lit, data_modules

from step_protocol import (  # noqa: E402
    KL_COEF,
    LR,
    MICRO_BATCH,
    MODEL,
    N,
    PROMPTS,
    TEMPERATURE,
    StepReport,
    emit,
    emit_step,
    problems,
    wait_for_go,
)

PASS_KINDS = ("score_policy", "score_reference", "update")


class _Stop(Exception):
    """The parent said "stop" (or closed stdin) before a step."""


def log(msg: str) -> None:
    print(f"[step_arm_trl] {msg}", file=sys.stderr, flush=True)


class StepMeter:
    """Per-step timers and counters, filled by the wrappers installed in `instrument`."""

    def __init__(self) -> None:
        self.lm_head_positions = 0  # running count of positions through TRL's fused LM head
        self.reset()

    def reset(self) -> None:
        self.t_go = time.perf_counter()
        self.t_last_training_step = None
        self.prepare_time = 0.0  # inside the current training_step's _prepare_inputs
        self.gen_tokens = 0
        self.phases = dict.fromkeys(("generation", "score_policy", "score_reference", "update"), 0.0)
        self.passes = {k: {"real": 0.0, "computed": 0.0, "response": 0.0} for k in PASS_KINDS}
        self.kept = dict.fromkeys(PASS_KINDS, 0)  # rows x logits_to_keep, for the stderr log

    def report(self) -> StepReport:
        now = time.perf_counter()
        if self.t_last_training_step is not None:
            # clip_grad_norm + optimizer.step + lr_scheduler.step + zero_grad (+ their callbacks)
            self.phases["update"] += now - self.t_last_training_step
        wall = now - self.t_go
        phases = dict(self.phases)
        phases["other"] = wall - sum(phases.values())
        return StepReport(wall=wall, gen_tokens=int(self.gen_tokens), phases=phases, passes=self.passes)


def instrument(trainer, meter: StepMeter, expected_prompt_ids: list[list[int]]) -> None:
    """Wrap the trainer instance's methods (and TRL's fused LM-head function) with timers/counters."""
    import torch
    import trl.trainer.utils as trl_utils

    # Positions through the fused LM head: `_fused_forward` looks `_ChunkedLogProbFunction` up in
    # trl.trainer.utils at call time, so a counting proxy there sees every projected position.
    chunked = trl_utils._ChunkedLogProbFunction

    class _CountingChunkedLogProb:
        @staticmethod
        def apply(hidden_states, *args, **kwargs):
            meter.lm_head_positions += int(hidden_states.shape[0])
            return chunked.apply(hidden_states, *args, **kwargs)

    trl_utils._ChunkedLogProbFunction = _CountingChunkedLogProb

    orig_generate = trainer._generate_single_turn
    orig_logps = trainer._get_per_token_logps_and_entropies
    orig_prepare = trainer._prepare_inputs
    orig_training_step = trainer.training_step
    checked = {"done": False}

    def generate_single_turn(prompt_ids, *args, **kwargs):
        if not checked["done"]:
            # The prompt token ids TRL actually feeds generate: the 4 prompts x N, as ares_lit's.
            got = Counter(tuple(ids) for ids in prompt_ids)
            want = Counter(tuple(ids) for ids in expected_prompt_ids for _ in range(N))
            assert got == want, "TRL's generation prompt ids differ from ares_lit's build_prompt_text ids"
            checked["done"] = True
            log(f"first generation batch: {len(prompt_ids)} prompts, ids equal to ares_lit's")
        t0 = time.perf_counter()
        completion_ids, logprobs = orig_generate(prompt_ids, *args, **kwargs)
        meter.phases["generation"] += time.perf_counter() - t0
        meter.gen_tokens += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    def get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if model is trainer.ref_model:
            kind = "score_reference"
        elif torch.is_grad_enabled():
            kind = "update"
        else:
            kind = "score_policy"
        heads0 = meter.lm_head_positions
        t0 = time.perf_counter()
        out = orig_logps(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
        dt = time.perf_counter() - t0
        if kind != "update":  # the update forward's time is in `update` via training_step
            meter.phases[kind] += dt
        p = meter.passes[kind]
        p["real"] += float(attention_mask.sum().item())
        p["computed"] += float(input_ids.numel())
        p["response"] += float(meter.lm_head_positions - heads0)
        meter.kept[kind] += int(input_ids.size(0)) * int(logits_to_keep)
        return out

    def prepare_inputs(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig_prepare(*args, **kwargs)
        finally:
            meter.prepare_time += time.perf_counter() - t0

    def training_step(*args, **kwargs):
        meter.prepare_time = 0.0
        t0 = time.perf_counter()
        out = orig_training_step(*args, **kwargs)
        t1 = time.perf_counter()
        meter.phases["update"] += (t1 - t0) - meter.prepare_time
        meter.t_last_training_step = t1
        return out

    trainer._generate_single_turn = generate_single_turn
    trainer._get_per_token_logps_and_entropies = get_per_token_logps_and_entropies
    trainer._prepare_inputs = prepare_inputs
    trainer.training_step = training_step


def build(args, out_dir: str, meter: StepMeter):
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ares_lit.grading import Grader
    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.prompting import build_messages, build_prompt_text

    model_path = resolve_model_path(MODEL)
    rows = problems()
    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    # ares_lit's prompt ids, per problem
    expected = [tok(build_prompt_text(tok, r["question"]), add_special_tokens=False).input_ids for r in rows]

    # Conversational prompts (TRL applies the chat template itself), the 4 problems in order, S times;
    # with shuffle_dataset=False each generation batch is those 4 prompts x N.
    records = [{"prompt": build_messages(r["question"]), "answer": str(r["answer"])} for r in rows]
    dataset = Dataset.from_list(records * args.steps)

    grader = Grader(answer_fallback="last_number")

    def accuracy(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 if grader.grade(t, a) else 0.0 for t, a in zip(texts, answer, strict=True)]

    config = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": "float32"},
        gradient_checkpointing=False,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=(PROMPTS * N) // MICRO_BATCH,
        num_generations=N,
        max_completion_length=args.max_tokens,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=KL_COEF,
        use_bias_correction_kl=False,
        epsilon=0.2,
        epsilon_high=0.3,
        loss_type="dapo",
        learning_rate=LR,
        weight_decay=0.01,
        max_grad_norm=1.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        num_iterations=1,
        max_steps=args.steps,
        use_vllm=False,
        mask_truncated_completions=False,
        shuffle_dataset=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )

    class BenchCallback(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            emit("ready", arm="trl", trl_version=trl.__version__, max_tokens=args.max_tokens,
                 threads=torch.get_num_threads())

        def on_step_begin(self, args_, state, control, **kwargs):
            if not wait_for_go():
                raise _Stop
            meter.reset()

        def on_step_end(self, args_, state, control, **kwargs):
            report = meter.report()
            emit_step(report)
            log(f"step {state.global_step}: wall {report.wall:.2f}s, gen_tokens {report.gen_tokens}, "
                f"rows x logits_to_keep {meter.kept}, reward {trainer._metrics['train'].get('reward', [None])[-1]}")

    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=accuracy,
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[BenchCallback()],
    )
    assert trainer.args.steps_per_generation * trainer.args.per_device_train_batch_size == PROMPTS * N
    assert trainer.ref_model is not None and next(trainer.model.parameters()).dtype == torch.float32

    # Prompt-token equality, once, at start: TRL's own prompt tokenization of the 4 conversational
    # prompts must give ares_lit's ids (checked again on the ids the first generate is fed).
    trl_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in records])
    trl_ids = [list(ids) for ids in trl_ids]
    assert trl_ids == expected, "TRL's chat-templated prompt ids differ from ares_lit's build_prompt_text ids"
    log(f"prompt ids equal to ares_lit's (lengths {[len(x) for x in expected]})")

    instrument(trainer, meter, expected)
    return trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    args = parser.parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A terminated worker still removes its temp dir and stops its grader process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    meter = StepMeter()
    with tempfile.TemporaryDirectory(prefix="step_arm_trl_") as out_dir, contextlib.redirect_stdout(sys.stderr):
        trainer = build(args, out_dir, meter)
        try:
            trainer.train()
        except _Stop:
            log("stop before a step: exiting")
            return 0
    # All --steps done: wait for the parent's stop (or end of input).
    if wait_for_go():
        log(f"'go' after all {args.steps} steps (--steps): no step left to run")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
