"""RolloutCallback + AEPOModule in a real Trainer on a tiny random Qwen2 (component level)."""

import json

import lightning.pytorch as pl
import pytest
import torch

from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.aepo import AEPOModule
from callbacks.dynamic_kl import DynamicKLCallback
from callbacks.rollout import RolloutCallback
from data_modules.prompts import PromptDataModule


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2"))


def write_prompts(path, n=16, extra_rows=()):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
        for row in extra_rows:
            f.write(row + "\n")
    return str(path)


def write_reward(path, body):
    path.write_text(body)
    return str(path)


def trainer(tmp_path, callbacks, max_steps):
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=pl.loggers.CSVLogger(tmp_path / "logs"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


class CheckEngineAfterStep(pl.Callback):
    """After the optimizer step, push the new weights and compare engine and trainer log-probs."""

    def __init__(self, rollout: RolloutCallback):
        self.rollout = rollout
        self.results = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # runs after the rollout callback (listed later): the engine holds the pre-step weights
        seq, plen = self.sequence(pl_module)
        self.results["before"] = torch.tensor(self.rollout.engine.score([seq], [plen])[0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        seq, plen = self.sequence(pl_module)
        self.rollout.engine.load_weights(pl_module.policy.named_parameters())
        self.results["engine_after"] = torch.tensor(self.rollout.engine.score([seq], [plen])[0])
        ids = torch.tensor([seq])
        lp, _ = pl_module.score(pl_module.policy, ids, torch.ones_like(ids), len(seq) - plen, 1.0)
        self.results["trainer_after"] = lp[0]

    @staticmethod
    def sequence(pl_module):
        tok = pl_module.tokenizer
        ids = tok("<think> 12 plus 7 is 19 </think> \\boxed{19}", add_special_tokens=False).input_ids
        prompt = tok("What is 12 + 7?", add_special_tokens=False).input_ids
        return prompt + ids, len(prompt)


def test_weight_sync_after_optimizer_step_vllm(tmp_path, tiny_path):
    """vLLM's log-probs follow the trainer's weights after a step (and differ from the old ones)."""
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    rollout = RolloutCallback(
        engine="vllm", engine_kwargs={"max_model_len": 256, "kv_cache_gb": 0.5}, n=4, max_new_tokens=8, reward_fn=f"{reward}:f", max_refill_tries=3
    )
    check = CheckEngineAfterStep(rollout)
    model = AEPOModule(model_path=tiny_path, lr=5e-2, mini_batch_size=8, micro_batch_size=8, grad_clip=0.0)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny_path, batch_size=2, max_prompt_length=96)
    trainer(tmp_path, [rollout, DynamicKLCallback(), check], max_steps=1).fit(model, data)
    r = check.results
    torch.testing.assert_close(r["engine_after"], r["trainer_after"], atol=2e-3, rtol=0)
    assert (r["engine_after"] - r["before"]).abs().max() > 0.05


def test_policy_learns_a_verifiable_toy_reward(tmp_path, tiny_path):
    """Reward = share of digits in the response: mean accuracy must rise clearly within 12 steps."""
    reward = write_reward(
        tmp_path / "digits.py",
        "def digits(responses, answers):\n"
        "    return [sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses]\n",
    )
    rollout = RolloutCallback(engine="hf", n=8, max_new_tokens=8, reward_fn=f"{reward}:digits", seed=1)
    model = AEPOModule(model_path=tiny_path, lr=2e-2, mini_batch_size=32, micro_batch_size=16, kl_coef=0.0)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny_path, batch_size=4, max_prompt_length=96)
    logs = RecordAccuracy()
    trainer(tmp_path, [rollout, logs], max_steps=12).fit(model, data)
    acc = logs.accuracy
    assert len(acc) == 12
    first, last = sum(acc[:3]) / 3, sum(acc[-3:]) / 3
    assert last > first + 0.25, acc


class RecordAccuracy(pl.Callback):
    def __init__(self):
        self.accuracy = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.accuracy.append(float(batch["rollout"].extras["accuracy"].mean()))
