#!/usr/bin/env bash
# GPU smoke test: two AEPO steps on Lightning's real DeepSpeedStrategy (ZeRO-2, no CPU shim), bf16,
# one GPU, the hf rollout engine, the tiny builtin model (nothing downloads); then the DeepSpeed
# checkpoint goes through `python -m ares_lit.export`, and the export reloads and generates on the GPU.
# Prints timings and the final metrics. Under 5 minutes on one H100 (most of it imports).
#
#   bash scripts/gpu_smoke.sh                 # PYTHON=/path/to/python bash scripts/gpu_smoke.sh
#
# Needs: torch with CUDA, lightning, transformers, tokenizers, safetensors, deepspeed (+ hjson,
# pydantic), numpy, pyyaml. Optional (the smoke works around each): jsonargparse (the ares_lit CLI:
# this script builds the Trainer in Python instead), math-verify (grading: a mechanics-only reward
# file is used instead), vllm (the hf engine is used), tensorboard (a CSV logger is used instead).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
WORK=${SMOKE_DIR:-$(mktemp -d /tmp/ares_gpu_smoke.XXXXXX)}
mkdir -p "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export ARES_LIT_CACHE=${ARES_LIT_CACHE:-$WORK/cache}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/ares_lit/torch_extensions}
echo "[gpu_smoke] work dir: $WORK"

echo "== 1/4 import check"
"$PYTHON" - <<'EOF'
import importlib
import sys

REQUIRED = ["torch", "lightning", "transformers", "tokenizers", "safetensors", "deepspeed", "hjson", "pydantic",
            "numpy", "yaml"]
OPTIONAL = {"jsonargparse": "the ares_lit CLI (this smoke builds the Trainer in Python)",
            "math_verify": "math grading (this smoke uses its own reward file)",
            "vllm": "the vllm engine (this smoke uses the hf engine)",
            "tensorboard": "TensorBoard logs (this smoke falls back to a CSV logger)",
            "datasets": "parquet / hub data (not needed here)"}
missing = []
for name in REQUIRED:
    try:
        module = importlib.import_module(name)
        print(f"  ok       {name} {getattr(module, '__version__', '')}")
    except Exception as err:  # noqa: BLE001 - report every failure the same way
        missing.append(name)
        print(f"  MISSING  {name}: {type(err).__name__}: {err}")
for name, why in OPTIONAL.items():
    try:
        importlib.import_module(name)
        print(f"  ok       {name} (optional)")
    except Exception:  # noqa: BLE001
        print(f"  missing  {name} (optional: {why})")
if missing:
    sys.exit(f"[gpu_smoke] required packages missing: {', '.join(missing)}")
import torch

if not torch.cuda.is_available():
    sys.exit("[gpu_smoke] torch sees no CUDA GPU")
print(f"  GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

echo "== 2/4 two AEPO steps on DeepSpeed ZeRO-2, bf16"
cat > "$WORK/reward.py" <<'EOF'
def parity(responses, answers):
    """Mechanics-only reward: the tiny random model never answers, so score the response length's
    parity; every group of n then has a mix of 0 and 1, and every step has a gradient."""
    return [float(len(r) % 2) for r in responses]
EOF
SMOKE_WORK="$WORK" "$PYTHON" - <<'EOF'
import json
import os
import time

t_start = time.perf_counter()
import lightning.pytorch as pl
import torch

from ares_lit.launch import prepare_launch
from ares_lit.modules.aepo import AEPOModule
from callbacks.dynamic_kl import DynamicKLCallback
from callbacks.rollout import RolloutCallback
from data_modules.prompts import PromptDataModule

work = os.environ["SMOKE_WORK"]
t_import = time.perf_counter() - t_start


class StepTimer(pl.Callback):
    """Wall time of each training step (rollout + update) and of the whole fit."""

    def __init__(self):
        self.steps, self.fit_start = [], None

    def on_fit_start(self, trainer, pl_module):
        torch.cuda.synchronize()
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        torch.cuda.synchronize()
        self.steps.append(time.perf_counter() - self._t)


try:
    from lightning.pytorch.loggers import TensorBoardLogger

    import tensorboard  # noqa: F401

    logger = TensorBoardLogger(f"{work}/runs", name="aepo_smoke")
except ImportError:
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(f"{work}/runs", name="aepo_smoke")

timer = StepTimer()
model = AEPOModule(model_path="builtin:tiny-qwen2", dtype="bfloat16", lr=1e-5, mini_batch_size=16,
                   micro_batch_size=4, export_dir=f"{work}/hf_model")
data = PromptDataModule(path="builtin:math", builtin_size=64, batch_size=4, max_prompt_length=256)
callbacks = [
    # Before RolloutCallback, so that a step's time includes its rollout.
    timer,
    RolloutCallback(engine="hf", n=4, temperature=1.0, top_p=0.99, max_new_tokens=64, reward_fn=f"{work}/reward.py:parity"),
    DynamicKLCallback(),
    pl.callbacks.ModelCheckpoint(dirpath=f"{work}/ckpt", save_last=True, save_top_k=0),
]
trainer = pl.Trainer(accelerator="gpu", devices=1, strategy="deepspeed_stage_2", precision="bf16-mixed", max_steps=2,
                     logger=logger, callbacks=callbacks, log_every_n_steps=1, enable_progress_bar=False)
prepare_launch(trainer, data)  # what `python -m ares_lit fit` does before fit
t0 = time.perf_counter()
trainer.fit(model, data)
t_fit = time.perf_counter() - t0
assert trainer.global_step == 2, trainer.global_step
metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
print(f"[gpu_smoke] strategy {type(trainer.strategy).__name__} stage "
      f"{trainer.strategy.config['zero_optimization']['stage']}, precision {trainer.precision}, "
      f"policy dtype {next(model.policy.parameters()).dtype}")
print(f"[gpu_smoke] imports {t_import:.1f} s | fit {t_fit:.1f} s (model load, DeepSpeed init, 2 steps, "
      f"checkpoint, export) | steps " + ", ".join(f"{s:.2f} s" for s in timer.steps))
print(f"[gpu_smoke] peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
print("[gpu_smoke] final metrics:")
for k, v in metrics.items():
    print(f"    {k:40s} {v:.6g}")
json.dump(metrics, open(f"{work}/metrics.json", "w"), indent=1)
EOF

echo "== 3/4 export the DeepSpeed checkpoint, reload it, generate on the GPU"
SECONDS=0
"$PYTHON" -m ares_lit.export --checkpoint "$WORK/ckpt/last.ckpt" --output_dir "$WORK/exported"
SMOKE_WORK="$WORK" "$PYTHON" - <<'EOF'
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

work = os.environ["SMOKE_WORK"]
exported = AutoModelForCausalLM.from_pretrained(f"{work}/exported", dtype="auto").cuda()
at_fit_end = AutoModelForCausalLM.from_pretrained(f"{work}/hf_model", dtype="auto").state_dict()
diff = max(float((exported.state_dict()[k].cpu().float() - v.float()).abs().max()) for k, v in at_fit_end.items())
tok = AutoTokenizer.from_pretrained(f"{work}/exported")
ids = tok("What is 2 + 3?", return_tensors="pt").input_ids.cuda()
out = exported.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
print(f"[gpu_smoke] export: dtype {exported.dtype}, max |export - fit-end export| = {diff:.3g}, "
      f"generated {out.shape[1] - ids.shape[1]} tokens")
assert diff < 1e-2, diff  # the checkpoint's fp32 master weights, cast to bf16, vs the bf16 module weights
EOF
echo "[gpu_smoke] export + reload + generate: ${SECONDS} s"

echo "== 4/4 images: two AEPO steps of the tiny Qwen2.5-VL on builtin:visual, ZeRO-2, bf16 (SMOKE_VL=0 skips)"
if [ "${SMOKE_VL:-1}" = "1" ]; then
SMOKE_WORK="$WORK" "$PYTHON" - <<'EOF'
import os
import time

import lightning.pytorch as pl
import torch

from ares_lit.launch import prepare_launch
from ares_lit.modules.aepo import AEPOModule
from callbacks.dynamic_kl import DynamicKLCallback
from callbacks.rollout import RolloutCallback
from data_modules.prompts import PromptDataModule

work = os.environ["SMOKE_WORK"]
steps = []


class Record(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        r = batch["rollout"]
        gap = r.metrics.get("rollout/engine_logprob_gap", float("nan"))
        steps.append((r.size, sum(m is not None for m in r.multimodal or []), round(gap, 4)))


model = AEPOModule(model_path="builtin:tiny-qwen2.5-vl", dtype="bfloat16", lr=1e-5, mini_batch_size=16,
                   micro_batch_size=4, export_dir="")
data = PromptDataModule(path="builtin:visual", builtin_size=32, batch_size=4, max_prompt_length=512, max_pixels=224 * 224)
callbacks = [RolloutCallback(engine="hf", n=4, max_new_tokens=32, filter_groups=False, reward_fn=f"{work}/reward.py:parity"),
             DynamicKLCallback(), Record()]
trainer = pl.Trainer(accelerator="gpu", devices=1, strategy="deepspeed_stage_2", precision="bf16-mixed", max_steps=2,
                     logger=False, callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False)
prepare_launch(trainer, data)
t0 = time.perf_counter()
trainer.fit(model, data)
assert trainer.global_step == 2 and all(n_img == n for n, n_img, _ in steps), steps
print(f"[gpu_smoke] VL: 2 steps in {time.perf_counter() - t0:.1f} s; per step (rollouts, rows with images, "
      f"engine-trainer log-prob gap): {steps}; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
EOF
fi
echo "[gpu_smoke] OK"
