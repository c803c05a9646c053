"""The ares_lit arm of `bench_step.py`: a real Lightning fit of AEPOModule + RolloutCallback,
stepped one optimizer update at a time by the parent (protocol: `step_protocol.py`).

    python benchmarks/step_arm_ares.py --engine hf --max-tokens 128 --steps 3

The model's micro-batching is the embedded default's (`configs/aepo.yaml`): token budgets
`--micro-tokens` / `--score-tokens`; pass `--micro-tokens 0 --score-tokens 0` for fixed
8-row micro-batches, and `--policy-scoring always` to force the policy scoring pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import step_protocol as sp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro-tokens", type=int, default=512, help="model.max_tokens_per_micro_batch (0 = rows)")
    ap.add_argument("--score-tokens", type=int, default=1024, help="model.max_tokens_per_score_batch (0 = rows)")
    ap.add_argument("--policy-scoring", default="auto", choices=("auto", "always"))
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        run(args)


def run(args) -> None:
    import lightning.pytorch as pl
    import torch

    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.modules.aepo import AEPOModule
    from callbacks.rollout import RolloutCallback
    from data_modules.prompts import PromptDataModule

    if args.threads:
        torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    path = str(resolve_model_path(sp.MODEL))
    tmp = Path(tempfile.mkdtemp(prefix="bench_step_"))
    data_file = tmp / "prompts.jsonl"
    data_file.write_text("".join(json.dumps({k: p[k] for k in ("question", "answer", "level")}) + "\n" for p in sp.problems()))

    rollout = RolloutCallback(
        engine=args.engine,
        engine_kwargs={"kv_cache_gb": 1.0} if args.engine == "vllm" else {},
        n=sp.N,
        temperature=sp.TEMPERATURE,
        top_p=1.0,
        max_new_tokens=args.max_tokens,
        filter_groups=False,  # TRL has no group filter: every step trains on the same 16 samples
        answer_fallback="last_number",
        policy_scoring=args.policy_scoring,
        seed=0,
    )
    model = AEPOModule(
        model_path=path,
        lr=sp.LR,
        mini_batch_size=sp.PROMPTS * sp.N,  # one optimizer update per step
        micro_batch_size=sp.MICRO_BATCH,
        max_tokens_per_micro_batch=args.micro_tokens or None,
        max_tokens_per_score_batch=args.score_tokens or None,
        use_kl_loss=True,
        kl_coef=sp.KL_COEF,  # a fixed β, as TRL's beta (no DynamicKLCallback)
        export_dir="",
    )
    data = PromptDataModule(path=str(data_file), tokenizer_path=path, batch_size=sp.PROMPTS, max_prompt_length=256)
    stepper = Stepper(args)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[stepper, rollout],  # the stepper's on_train_batch_start runs first: it waits for "go"
        default_root_dir=str(tmp),
    )
    trainer.fit(model, data)
    sp.wait_for_go()  # the parent may still say "stop"


class Stepper:
    """Waits for "go" before each step, reports the step after it (a Lightning callback)."""

    def __new__(cls, args):
        import lightning.pytorch as pl

        class _Stepper(pl.Callback):
            def __init__(self) -> None:
                self.started = 0.0
                self.ready = False

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if not self.ready:
                    sp.emit("ready", arm=f"ares_{args.engine}", engine=args.engine, max_tokens=args.max_tokens)
                    self.ready = True
                if not sp.wait_for_go():
                    sys.stderr.flush()
                    os._exit(0)
                self.started = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                wall = time.perf_counter() - self.started
                rollout = batch.get("rollout")
                m = rollout.metrics if rollout is not None else {}
                update = float(trainer.callback_metrics.get("time/update", 0.0))
                phases = {
                    "generation": m.get("time/generation", 0.0) + m.get("time/weight_sync", 0.0),
                    "score_policy": m.get("time/score_policy", 0.0),
                    "score_reference": m.get("time/score_reference", 0.0),
                    "update": update,
                }
                phases["other"] = max(0.0, wall - sum(phases.values()))
                stats = pl_module.last_pad_stats
                passes = {k: {"real": v[0], "computed": v[1], "response": v[2]} for k, v in stats.items() if v[1]}
                tokens = int(rollout.extras["response_length"].sum()) if rollout is not None else 0
                sp.emit_step(sp.StepReport(wall=wall, gen_tokens=tokens, phases=phases, passes=passes))

        return _Stepper()


if __name__ == "__main__":
    main()
