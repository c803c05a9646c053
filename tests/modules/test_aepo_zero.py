"""AEPO under DeepSpeed ZeRO-2 and ZeRO-3 on the CPU (tests/strategies.py shim), with real vLLM.

The weight-sync check of tests/callbacks/test_rollout.py, under ZeRO: after one optimizer step,
the engine's log-probs equal the trainer's (pushed parameter by parameter, gathered one at a
time under ZeRO-3), and differ from the pre-step ones. Under ZeRO-3 the policy's parameters are
really partitioned (the shim sets the persistence threshold to 0), and so is the reference.

Each fit runs in its own Python process: DeepSpeed caches the process group of a finished fit in
module globals, so a second DeepSpeed fit in one process fails ("Group ... is not registered").
"""

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ares_lit.modules.aepo import AEPOModule
from ares_lit.modules.lora import LoraSettings, push_weights
from ares_lit.modules.zero import gathered_parameters
from callbacks.dynamic_kl import DynamicKLCallback
from callbacks.rollout import RolloutCallback
from data_modules.prompts import PromptDataModule
from tests.callbacks.test_rollout import CheckEngineAfterStep, write_prompts, write_reward
from tests.strategies import CPUDeepSpeedStrategy


class CheckEngineAfterZeroStep(CheckEngineAfterStep):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stage3 = trainer.strategy.zero_stage_3
        params = dict(pl_module.policy.named_parameters())
        self.results["partitioned"] = all(p.numel() == 0 or hasattr(p, "ds_id") for p in params.values()) and stage3
        self.results["ref_partitioned"] = any(hasattr(p, "ds_id") for p in pl_module.reference.parameters())
        seq, plen = self.sequence(pl_module)
        push_weights(self.rollout.engine, pl_module.policy, stage3)  # LoRA: the changed blocks, merged
        self.results["base_after"] = [float(p.detach().double().sum()) for n, p in sorted(gathered_parameters(
            pl_module.policy, stage3)) if ".base_layer." in n]
        self.results["engine_after"] = torch.tensor(self.rollout.engine.score([seq], [plen])[0])
        ids = torch.tensor([seq])
        lp, _ = pl_module.score(pl_module.policy, ids, torch.ones_like(ids), len(seq) - plen, 1.0)
        self.results["trainer_after"] = lp[0].cpu()
        self.results["rollout_size"] = batch["rollout"].size if batch["rollout"] is not None else 0
        if batch["rollout"] is not None:
            self.results["branch_points"] = sum(v for k, v in batch["rollout"].metrics.items() if k.endswith("/points"))


ROOT = Path(__file__).resolve().parents[2]


def _in_subprocess(fn: str, *args) -> dict:
    code = f"import json, sys; from tests.modules.test_aepo_zero import {fn}; print('RESULT', json.dumps({fn}(*sys.argv[1:])))"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])


# ZeRO-3 with CPU offload takes ~75 s on 2 cores: in CI after the default suite (`make test-slow`).
@pytest.mark.parametrize(
    "stage", [2, 3, pytest.param("3-offload", marks=pytest.mark.slow), pytest.param("3-branching", marks=pytest.mark.slow), pytest.param("2-lora", marks=pytest.mark.slow), pytest.param("3-lora", marks=pytest.mark.slow)]
)
def test_weight_sync_after_step_under_zero(tmp_path, stage):
    """"3-branching": with branching rollouts on (phase-1 scoring under ZeRO-3, then the batch).
    "*-lora": a LoRA adapter (r 4): the sync pushes the changed blocks merged (gathered layer by
    layer under ZeRO-3), the reference is the adapter-disabled policy (partitioned with it), and
    the base weights do not move."""
    r = _in_subprocess("run_zero_step", stage, tmp_path)
    if stage == "3-branching":
        assert r["branch_points"] > 0
    if stage.endswith("-lora") if isinstance(stage, str) else False:
        assert r["base_before"] == r["base_after"] and r["base_before"], "the base weights moved"
    stage = int(str(stage)[0])
    assert r["rollout_size"] > 0
    assert r["sync_gap"] < 2e-3, r
    assert r["step_change"] > 0.05, r
    assert r["partitioned"] == (stage == 3)
    assert r["ref_partitioned"] == (stage == 3)


def test_hf_engine_is_refused_under_zero3(tmp_path):
    assert "ZeRO-3" in _in_subprocess("run_hf_under_zero3", tmp_path)["error"]


def run_zero_step(stage: str, tmp: str) -> dict:
    from ares_lit.models.tiny import build_tiny_qwen2

    from ares_lit.experience.config import BranchingConfig

    offload, branching, lora = stage.endswith("-offload"), stage.endswith("-branching"), stage.endswith("-lora")
    stage, tmp_path = int(stage.split("-")[0]), Path(tmp)

    tiny = str(build_tiny_qwen2(tmp_path / "tiny"))
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    rollout = RolloutCallback(
        engine="vllm", engine_kwargs={"max_model_len": 256, "kv_cache_gb": 0.25}, n=4, max_new_tokens=8,
        reward_fn=f"{reward}:f", max_refill_tries=3,
        hwe_min_windows=0,  # 8-token responses have 5 windows: under the default 8 none would vote on τ, and none branch
        branching=BranchingConfig(initial_n=2, budget=(1, 1, 2), children_per_point=1, min_prefix=1, min_suffix=1, min_gap=2) if branching else None,
    )
    check = CheckEngineAfterZeroStep(rollout)
    model = AEPOModule(model_path=tiny, lr=5e-2, mini_batch_size=8, micro_batch_size=4, grad_clip=0.0, export_dir="",
                       lora=LoraSettings(r=4, alpha=8) if lora else None)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny, batch_size=2, max_prompt_length=96)
    pl.Trainer(
        accelerator="cpu",
        strategy=CPUDeepSpeedStrategy(stage=stage, offload_optimizer=offload, offload_parameters=offload),
        max_steps=1,
        logger=False,
        callbacks=[rollout, DynamicKLCallback(), check],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, data)
    r = check.results
    return {
        "rollout_size": r["rollout_size"],
        "sync_gap": float((r["engine_after"] - r["trainer_after"]).abs().max()),
        "step_change": float((r["engine_after"] - r["before"]).abs().max()),
        "partitioned": bool(r["partitioned"]),
        "ref_partitioned": bool(r["ref_partitioned"]),
        "branch_points": r.get("branch_points", 0.0),
        "base_before": _base_sums(tiny) if lora else [],
        "base_after": r["base_after"],
    }


def _base_sums(tiny: str) -> list[float]:
    """The sums of the adapted layers' weights as loaded, in the order of the policy's base_layer names."""
    from transformers import AutoModelForCausalLM

    named = dict(AutoModelForCausalLM.from_pretrained(tiny).named_parameters())
    names = sorted(f"base_model.model.{n.rsplit('.', 1)[0]}.base_layer.{n.rsplit('.', 1)[1]}" for n in named
                   if n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    by_peft = {f"base_model.model.{n.rsplit('.', 1)[0]}.base_layer.{n.rsplit('.', 1)[1]}": p for n, p in named.items()}
    return [float(by_peft[n].detach().double().sum()) for n in names]


def run_hf_under_zero3(tmp: str) -> dict:
    from ares_lit.models.tiny import build_tiny_qwen2

    tmp_path = Path(tmp)
    tiny = str(build_tiny_qwen2(tmp_path / "tiny"))
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny, batch_size=2, max_prompt_length=96)
    trainer = pl.Trainer(
        accelerator="cpu", strategy=CPUDeepSpeedStrategy(stage=3), max_steps=1, logger=False,
        callbacks=[RolloutCallback(engine="hf", n=2, max_new_tokens=4)], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    try:
        trainer.fit(AEPOModule(model_path=tiny, mini_batch_size=4, micro_batch_size=4, export_dir=""), data)
    except ValueError as err:
        return {"error": str(err)}
    return {"error": ""}


def test_zero2_micro_batches_add_up_to_the_mini_batch(tmp_path):
    """One update from 2 micro-batches of 4 equals one from a single micro-batch of 8 under ZeRO-2
    (without an accumulation boundary per mini-batch, ZeRO-2 keeps only the last micro-batch)."""
    whole = _in_subprocess("run_zero2_update", 8, tmp_path / "whole")
    split = _in_subprocess("run_zero2_update", 4, tmp_path / "split")
    assert whole["rollout_size"] == split["rollout_size"] == 8
    assert whole["delta"] > 1e-3  # the step moved the weights
    assert max(abs(a - b) for a, b in zip(whole["weights"], split["weights"])) < 1e-3  # sums of whole tensors


def run_zero2_update(micro: str, tmp: str) -> dict:
    from ares_lit.models.tiny import build_tiny_qwen2

    tmp_path = Path(tmp)
    tmp_path.mkdir(parents=True, exist_ok=True)
    tiny = str(build_tiny_qwen2(tmp_path / "tiny"))
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    rollout = RolloutCallback(engine="hf", n=4, max_new_tokens=8, reward_fn=f"{reward}:f", filter_groups=False)
    model = AEPOModule(
        model_path=tiny, lr=1e-2, mini_batch_size=8, micro_batch_size=int(micro), grad_clip=0.0, export_dir="", use_kl_loss=False
    )
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny, batch_size=2, max_prompt_length=96)
    sizes = []

    class Size(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sizes.append(batch["rollout"].size)

    pl.Trainer(
        accelerator="cpu", strategy=CPUDeepSpeedStrategy(stage=2), max_steps=1, logger=False,
        callbacks=[rollout, Size()], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    ).fit(model, data)
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    after = {n: p.detach().float().cpu() for n, p in model.policy.named_parameters()}
    names = sorted(after)
    return {
        "rollout_size": sizes[0],
        "delta": max(float((after[n] - start[n]).abs().max()) for n in names),
        "weights": [float(after[n].double().sum()) for n in names],
    }
