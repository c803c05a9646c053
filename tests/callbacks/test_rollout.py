"""RolloutCallback + AEPOModule in a real Trainer on a tiny random Qwen2 (component level)."""

import json
from types import SimpleNamespace

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


def test_the_length_reward_parses_from_the_cli_and_yaml_and_is_checked(tmp_path):
    """`--rollout.length_reward.kind=...` and a YAML `length_reward:` block, as the CLI's `rollout:` group
    parses them (ares_lit/cli.py); null (the default) is off; a bad value fails at construction."""
    import yaml
    from lightning.pytorch.cli import LightningArgumentParser

    from ares_lit.experience import LengthRewardConfig

    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(RolloutCallback, "rollout", subclass_mode=True, required=False)
    parser.add_argument("--config", action="config")
    flags = ["--rollout.engine=hf", "--rollout.length_reward.kind=overlong", "--rollout.length_reward.buffer_len=32"]
    made = parser.instantiate(parser.parse_args(flags)).rollout.config.length_reward
    assert made == LengthRewardConfig("overlong", buffer_len=32)
    config = tmp_path / "overlay.yaml"
    config.write_text(yaml.safe_dump({"rollout": {"engine": "hf", "length_reward": {"kind": "kimi", "warmup_steps": 10}}}))
    made = parser.instantiate(parser.parse_args(["--config", str(config)])).rollout.config.length_reward
    assert made == LengthRewardConfig("kimi", warmup_steps=10)
    assert RolloutCallback(engine="hf").config.length_reward is None
    with pytest.raises(ValueError, match="length_reward kind must be one of"):
        RolloutCallback(engine="hf", length_reward=LengthRewardConfig("short"))


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
    assert logs.batches == 12 and len(acc) >= 10, acc
    first, last = sum(acc[:3]) / 3, sum(acc[-3:]) / 3
    assert last > first + 0.25, acc
    # The step reported its phases to the progress display, in order, with progress counts.
    # The hf engine on the live policy records the trainer's own log-probs and entropy: only the
    # reference pass runs (policy_scoring="auto").
    step = logs.phases[: logs.phases.index(("scoring", 0, 1)) + 1]
    assert step[:4] == [("weight_sync", None, None), ("generation", 0, 4), ("grading", 0, 32), ("grading", 32, 32)]
    assert step[-1:] == [("scoring", 0, 1)]
    assert {p for p, _, _ in step} == {"weight_sync", "generation", "grading", "scoring"}


class RecordAccuracy(pl.Callback):
    def __init__(self):
        self.accuracy = []
        self.phases = []
        self.batches = 0

    def on_rollout_phase(self, phase, done, total):
        self.phases.append((phase, done, total))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        if batch["rollout"] is not None:  # None: a skipped step, every group without signal
            self.accuracy.append(float(batch["rollout"].extras["accuracy"].mean()))


class BrokenWorker:
    """What a grading worker does when math-verify cannot be imported in it: it never gets ready."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("grading worker failed to start")


def test_fit_start_fails_fast_when_math_verify_cannot_grade(monkeypatch):
    import ares_lit.grading

    monkeypatch.setattr(ares_lit.grading, "_Worker", BrokenWorker)
    rollout = RolloutCallback(engine="hf")
    started = []
    monkeypatch.setattr(rollout, "_start_engine", lambda *a: started.append(True))
    with pytest.raises(RuntimeError, match=r"math-verify grader failed its start-up check.*reward_fn"):
        rollout.on_fit_start(None, None)
    assert not started  # before the engine (the expensive part) starts


def test_a_user_reward_fn_skips_the_grader_probe(monkeypatch, tmp_path):
    import ares_lit.grading

    monkeypatch.setattr(ares_lit.grading, "_Worker", BrokenWorker)
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [1.0 for _ in responses]\n")
    rollout = RolloutCallback(engine="hf", reward_fn=f"{reward}:f")
    monkeypatch.setattr(rollout, "_start_engine", lambda *a: None)
    monkeypatch.setattr(rollout, "_log_data_summary", lambda *a: None)
    rollout.on_fit_start(SimpleNamespace(datamodule=None), None)  # no probe, no error


def test_the_grader_probe_passes_and_leaves_the_counters_at_zero(monkeypatch):
    rollout = RolloutCallback(engine="hf")
    monkeypatch.setattr(rollout, "_start_engine", lambda *a: None)
    monkeypatch.setattr(rollout, "_log_data_summary", lambda *a: None)
    rollout.on_fit_start(SimpleNamespace(datamodule=None), None)
    try:
        assert rollout.grader is not None and set(rollout.grader.stats.values()) == {0}
    finally:
        rollout.teardown_engine()


def test_the_engine_context_comes_from_the_data_modules_max_prompt_length(tmp_path, tiny_path):
    """vLLM's max_model_len is data max_prompt_length + max_new_tokens; the DataModule may keep the
    setting in `hparams` only (a silent 0 there would cut every response short)."""
    from callbacks.rollout import _data_setting

    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny_path, max_prompt_length=96)
    assert _data_setting(data, "max_prompt_length") == 96
    assert _data_setting(object(), "max_prompt_length") is None


# ---------------------------------------------------------------- sleep mode (issue 12 item 4)
class RecordingEngine:
    """A real engine (HFEngine in these tests) that records the life-cycle calls made on it, in order.

    Its `sleep` takes a level like vLLM's; HFEngine's own sleep/wake are no-ops, called all the same.
    """

    def __init__(self, inner, log: list[str]):
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def wake_up(self):
        self.log.append("wake_up")
        self.inner.wake_up()

    def sleep(self, level: int = 1):
        self.log.append(f"sleep({level})")
        self.inner.sleep()

    def load_weights(self, named_tensors):
        self.log.append("load_weights")
        self.inner.load_weights(named_tensors)

    def generate(self, *args, **kwargs):
        self.log.append("generate")
        return self.inner.generate(*args, **kwargs)


class LogUpdates(pl.Callback):
    def __init__(self, events):
        self.events = events

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.events.append("update_done")


def test_the_engine_wakes_before_the_push_and_sleeps_after_the_last_generation(tmp_path, tiny_path, monkeypatch):
    """Per step: wake_up -> load_weights -> generate (batch and refill rounds) -> sleep(level) -> scoring -> update."""
    import ares_lit.rollout

    log: list[str] = []
    real_build = ares_lit.rollout.build_engine
    monkeypatch.setattr(ares_lit.rollout, "build_engine", lambda *a, **k: RecordingEngine(real_build(*a, **k), log))
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    rollout = RolloutCallback(engine="hf", n=4, max_new_tokens=6, reward_fn=f"{reward}:f", max_refill_tries=2, sleep_level=2)
    model = AEPOModule(model_path=tiny_path, mini_batch_size=8, micro_batch_size=8)
    real_score = model.score

    def score(*args, **kwargs):
        log.append("score")
        return real_score(*args, **kwargs)

    model.score = score
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny_path, batch_size=2, max_prompt_length=96)
    trainer(tmp_path, [rollout, LogUpdates(log)], max_steps=2).fit(model, data)
    steps = " ".join(log).split("update_done")
    assert steps[-1] == "" and len(steps) == 3, log
    for step in steps[:-1]:
        calls = step.split()
        gens = calls.count("generate")
        assert 1 <= gens <= 3, calls  # the batch, then up to max_refill_tries refill rounds
        # one scoring pass: the reference (the hf engine on the live policy gives the policy's own)
        assert calls == ["wake_up", "load_weights"] + ["generate"] * gens + ["sleep(2)", "score"], calls


class _NoLevelEngine:
    """vLLM's engine as it is today on the CPU: sleep() takes no level, sleep mode off (no CUDA)."""

    enable_sleep_mode = False

    def __init__(self):
        self.calls = []

    def sleep(self):
        self.calls.append("sleep()")

    def wake_up(self):
        self.calls.append("wake_up")


def test_sleep_without_cuda_is_said_once_and_an_engine_without_levels_still_sleeps(capsys):
    rollout = RolloutCallback(engine="vllm")
    rollout.engine = engine = _NoLevelEngine()
    rollout._describe_sleep(SimpleNamespace(is_global_zero=True))
    for _ in range(3):  # three steps
        rollout._wake()
        rollout._sleep()
    lines = [line for line in capsys.readouterr().out.splitlines() if "sleep" in line]
    assert lines == ["[ares_lit] vLLM sleep between rollouts: off (needs CUDA and engine_kwargs.enable_sleep_mode)"]
    assert engine.calls == ["wake_up", "sleep()"] * 3  # today's signature: called without a level
    off = RolloutCallback(engine="vllm", sleep_level=0)
    off.engine = quiet = _NoLevelEngine()
    off._describe_sleep(SimpleNamespace(is_global_zero=True))
    off._wake()
    off._sleep()
    assert quiet.calls == [] and "off (sleep_level 0)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="sleep_level must be 0"):
        RolloutCallback(engine="vllm", sleep_level=3)


class EngineState(pl.Callback):
    def __init__(self, rollout):
        self.rollout, self.asleep, self.gaps = rollout, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.asleep.append(set(self.rollout.engine._asleep))
        self.gaps.append(batch["rollout"].metrics["rollout/engine_logprob_gap"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM sleep mode needs CUDA")
def test_vllm_sleeps_through_every_update_and_wakes_with_the_new_weights_on_cuda(tmp_path, tiny_path):
    """On CUDA: asleep (weights and KV cache dropped) during every update, and after each wake and
    push the engine's log-probs match the trainer's (the level-2 wake reloads every weight)."""
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    rollout = RolloutCallback(
        engine="vllm", engine_kwargs={"max_model_len": 256, "gpu_memory_utilization": 0.3}, n=4, max_new_tokens=8,
        reward_fn=f"{reward}:f", max_refill_tries=3, sleep_level=2,
    )  # fmt: skip
    state = EngineState(rollout)
    model = AEPOModule(model_path=tiny_path, lr=5e-2, mini_batch_size=8, micro_batch_size=8)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny_path, batch_size=2, max_prompt_length=96)
    pl.Trainer(
        accelerator="gpu", devices=1, max_steps=3, logger=False, callbacks=[rollout, state], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    ).fit(model, data)  # fmt: skip
    assert state.asleep == [{"weights", "kv_cache"}] * 3
    assert max(state.gaps) < 1e-2, state.gaps
