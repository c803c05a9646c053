"""`model.entropy_control` on a tiny random Qwen2: the forking-token mask in the policy loss, the
entropy bonus's gradient against a naive full-softmax entropy, no extra forward, the adaptive
coefficient once per optimizer step and in the checkpoint, the panels, and the defaults (off)."""

import pytest
import torch

from ares_lit.batch import RolloutBatch
from ares_lit.core import POLICY_LOSSES, aggregate, get_policy_loss, register_policy_loss
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.aepo import AEPOModule
from ares_lit.modules.entropy_terms import EntropyControl
from ares_lit.modules.logprobs import position_ids_from_mask, response_logprobs

T = 0.7  # a sampling temperature != 1: the entropy is that of softmax(z / T), like the log-probs


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2")
    m = AEPOModule(model_path=str(path), mini_batch_size=4, micro_batch_size=2)
    m.configure_model()
    yield m
    m.configure_entropy_control(None)


@pytest.fixture(autouse=True)
def _entropy_off_after(module):
    yield
    module.configure_entropy_control(None)


def rollout(module, n=8, p=5, r=7, seed=0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, module.policy.config.vocab_size, (n, p + r), generator=g)
    attention = torch.ones(n, p + r, dtype=torch.long)
    attention[:, :2] = torch.arange(n)[:, None] % 2 == 0
    lengths = torch.randint(1, r + 1, (n,), generator=g)
    lengths[0] = r
    response_mask = torch.arange(r)[None] < lengths[:, None]
    attention[:, p:] = response_mask
    old, _ = module.score(module.policy, ids, attention, r, T)
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attention,
        response_mask=response_mask,
        old_log_probs=old + 0.1 * torch.randn(n, r, generator=g),
        ref_log_probs=old + 0.3 * torch.randn(n, r, generator=g),
        advantages=torch.randn(n, generator=g),
        bucket=torch.arange(n) % 3,
        window_mask=torch.rand(n, r, generator=g) > 0.7,
        temperature=T,
    )


def whole(rb: RolloutBatch):
    micro = rb.select(torch.arange(rb.size))
    return micro, micro["response_mask"].sum().item()


def naive_entropy(model, micro) -> torch.Tensor:
    """H_t of softmax(z / T) from the full [B, L, V] logits of a plain HF forward, with autograd."""
    ids, mask, r = micro["input_ids"], micro["attention_mask"], micro["response_len"]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
    p = torch.softmax(logits[:, -r - 1 : -1] / T, dim=-1)
    return -(p * torch.log(p)).sum(-1)


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def test_defaults_are_off_and_change_no_number(module):
    rb = rollout(module)
    micro, norm = whole(rb)
    module.policy.zero_grad(set_to_none=True)
    loss_none, m_none, _ = module._micro_loss(micro, T, norm)
    loss_none.backward()
    g_none = grads(module.policy)
    module.configure_entropy_control(EntropyControl())  # every field at its default
    assert module.entropy_request() == {}  # no entropy is even computed
    loss_def, m_def, _ = module._micro_loss(micro, T, norm)
    loss_def.backward()
    g_def = grads(module.policy)
    assert torch.equal(loss_def, loss_none) and m_def.keys() == m_none.keys()
    assert not {"entropy_coef", "entropy_bonus", "forking_frac", "forking_threshold"} & m_def.keys()
    for name in g_none:
        assert torch.equal(g_def[name], g_none[name]), name


@pytest.mark.parametrize("loss_name", ["vanilla", "gspo", "cispo"])
def test_forking_mask_weighs_the_policy_loss_and_the_kl_keeps_every_token(module, loss_name):
    rb = rollout(module)
    micro, norm = whole(rb)
    module.hparams.policy_loss = loss_name
    try:
        _, off, _ = module._micro_loss(micro, T, norm)
        module.configure_entropy_control(EntropyControl(top_entropy_quantile=0.2))
        assert module.entropy_request() == {"with_entropy": True, "entropy_grad": False}
        _, on, _ = module._micro_loss(micro, T, norm)
    finally:
        module.hparams.policy_loss = "vanilla"
    mask = micro["response_mask"]
    with torch.no_grad():  # the current policy's entropy, from the same chunked pass
        log_probs, ent = response_logprobs(module.policy, micro["input_ids"], micro["attention_mask"], micro["response_len"], T, True)
    threshold = torch.quantile(ent[mask], 0.8)
    keep = (ent >= threshold) & mask
    expect, _ = get_policy_loss(loss_name)(
        log_probs, micro["old_log_probs"], micro["advantages"], mask, normalizer=norm, weights=keep.float()
    )
    assert float(on["pg_loss"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-7)
    assert float(on["pg_loss"]) != pytest.approx(float(off["pg_loss"]), rel=1e-3)
    assert float(on["kl_loss"]) == pytest.approx(float(off["kl_loss"]), rel=1e-6)  # KL: all tokens (as TRL)
    assert float(on["forking_threshold"]) == float(threshold)
    assert float(on["forking_frac"]) == pytest.approx(float(keep.sum() / mask.sum()))
    assert 0.15 <= float(on["forking_frac"]) <= 0.3  # about the top 20 % of the tokens


def test_forking_mask_multiplies_the_rollout_correction_weights(module):
    rb = rollout(module)
    g = torch.Generator().manual_seed(3)
    rb.engine_log_probs = rb.old_log_probs - 0.8 * torch.rand(rb.old_log_probs.shape, generator=g)
    micro, norm = whole(rb)
    module.hparams.rollout_correction = "token_tis"
    module.configure_entropy_control(EntropyControl(top_entropy_quantile=0.5))
    try:
        _, on, _ = module._micro_loss(micro, T, norm)
    finally:
        module.hparams.rollout_correction = None
    mask = micro["response_mask"]
    with torch.no_grad():
        log_probs, ent = response_logprobs(module.policy, micro["input_ids"], micro["attention_mask"], micro["response_len"], T, True)
    keep = (ent >= torch.quantile(ent[mask], 0.5)) & mask
    tis = torch.exp(micro["old_log_probs"] - micro["engine_log_probs"]).clamp(max=2.0)
    expect, _ = get_policy_loss("vanilla")(
        log_probs, micro["old_log_probs"], micro["advantages"], mask, normalizer=norm, weights=tis * keep
    )
    assert float(on["pg_loss"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("budget_mb", [0, 256], ids=["one-token-checkpointed-chunks", "one-chunk"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_bonus_gradient_equals_autograd_of_a_naive_full_softmax_entropy(module, budget_mb, agg):
    """With A = 0 and no reference, L = −c·H̄: its gradient is −c·∇H̄ of the naive entropy."""
    c = 0.5
    rb = rollout(module)
    rb.advantages = torch.zeros_like(rb.advantages)
    micro, _ = whole(rb)
    micro["ref_log_probs"] = None
    norm = 5.0  # any mini-batch normalizer: the bonus uses the policy loss's
    module.configure_entropy_control(EntropyControl(entropy_coef=c))
    module.hparams.logit_budget_mb, module.hparams.loss_agg = budget_mb, agg
    try:
        module.policy.zero_grad(set_to_none=True)
        loss, metrics, _ = module._micro_loss(micro, T, norm, 7.0)
        loss.backward()
        got = grads(module.policy)
    finally:
        module.hparams.logit_budget_mb, module.hparams.loss_agg = 256, "token-mean"
    h_bar = aggregate(naive_entropy(module.policy, micro), micro["response_mask"], agg, normalizer=norm)
    assert float(metrics["entropy_bonus"]) == pytest.approx(float(h_bar.detach()), rel=1e-5)
    assert metrics["entropy_coef"] == c
    (-c * h_bar).backward()
    want = grads(module.policy)
    assert any(float(w.abs().max()) > 1e-4 for w in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-6, rtol=1e-4, msg=name)


def test_entropy_with_gradient_matches_naive_autograd_per_token(module):
    """response_logprobs(entropy_grad=True), one token per chunk: values and ∂(Σ w_t H_t) of a naive softmax."""
    rb = rollout(module)
    micro, _ = whole(rb)
    w = torch.rand(micro["response_mask"].shape, generator=torch.Generator().manual_seed(5)) * micro["response_mask"]
    model = module.policy
    model.zero_grad(set_to_none=True)
    _, ent = response_logprobs(model, micro["input_ids"], micro["attention_mask"], micro["response_len"], T, budget_bytes=1, entropy_grad=True)
    assert ent.requires_grad
    (ent * w).sum().backward()
    got = grads(model)
    naive = naive_entropy(model, micro)
    torch.testing.assert_close(ent[w > 0], naive[w > 0].detach(), atol=1e-5, rtol=1e-5)
    (naive * w).sum().backward()
    want = grads(model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=2e-6, rtol=1e-4, msg=name)


def test_no_extra_forward(module):
    """The bonus and the mask reuse the update's own forward: as many decoder and LM-head calls."""
    rb = rollout(module)
    micro, norm = whole(rb)
    calls = {"decoder": 0, "head": 0}
    hooks = [
        module.policy.get_decoder().register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1)),
        module.policy.get_output_embeddings().register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1)),
    ]
    counts = {}
    try:
        for name, settings in (
            ("off", None),
            ("on", EntropyControl(top_entropy_quantile=0.2, entropy_coef=0.1)),
            ("adaptive", EntropyControl(adaptive=True, entropy_coef=0.0, entropy_target=9.0)),
        ):
            for budget in (256, 0):  # one chunk; one token per chunk (checkpointed: the head reruns in backward)
                module.configure_entropy_control(settings)
                module.hparams.logit_budget_mb = budget
                calls.update(decoder=0, head=0)
                loss, _, _ = module._micro_loss(micro, T, norm)
                loss.backward()
                counts[name, budget] = dict(calls)
        module.policy.zero_grad(set_to_none=True)
    finally:
        module.hparams.logit_budget_mb = 256
        for h in hooks:
            h.remove()
    for budget in (256, 0):
        assert counts["off", budget]["decoder"] == 1
        assert counts["on", budget] == counts["adaptive", budget] == counts["off", budget], counts


class FakeOptimizer:
    def __init__(self, model):
        self.model, self.steps = model, 0

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.steps += 1


class FakeScheduler:
    def step(self):
        pass

    def get_last_lr(self):
        return [0.0]


def run_training_step(module, rb) -> tuple[dict, int]:
    """training_step without a Trainer: optimizer, scheduler, backward and logging stubbed (the
    parameters never move, so every step sees the same entropies)."""
    opt, logs = FakeOptimizer(module.policy), {}
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: FakeScheduler()
    module.manual_backward = lambda loss: loss.backward()
    module.clip_gradients = lambda *a, **k: None
    module.log_dict = lambda d, **k: logs.update(d)
    module.log = lambda name, value, **k: logs.update({name: value})
    try:
        module.training_step({"rollout": rb}, 0)
    finally:
        for name in ("optimizers", "lr_schedulers", "manual_backward", "clip_gradients", "log_dict", "log"):
            delattr(module, name)
    return logs, opt.steps


def test_adaptive_coefficient_moves_once_per_optimizer_step_and_resumes_exactly(module):
    rb = rollout(module)  # 8 rows, mini-batches of 4: two optimizer steps per training step
    settings = EntropyControl(
        top_entropy_quantile=0.5, adaptive=True, entropy_coef=0.01, entropy_target=100.0, entropy_coef_delta=0.005
    )
    module.configure_entropy_control(settings)
    logs, steps = run_training_step(module, rb)
    ctl = module.entropy_coef_ctl
    assert steps == 2 and ctl.coef == pytest.approx(0.01 + 2 * 0.005)  # H <= target: +δ per optimizer step
    # the step's H: mean entropy of the tokens the mask kept, over the whole mini-batch (its micro-batches)
    mini = rb.select(torch.arange(4, 8))
    with torch.no_grad():
        parts = []
        for rows in rb.micro_batches(torch.arange(4, 8), module.hparams.micro_batch_size, None):
            m = rb.select(rows)
            _, ent = response_logprobs(module.policy, m["input_ids"], m["attention_mask"], m["response_len"], T, True)
            valid = m["response_mask"]
            parts.append(ent[(ent >= torch.quantile(ent[valid], 0.5)) & valid].double())
    assert mini["response_mask"].any() and ctl.last_entropy == pytest.approx(float(torch.cat(parts).mean()), rel=1e-9)
    # panels: the first step applied 0 (no measurement yet), the second 0.015; the log is their mean
    assert logs["train/entropy_coef"] == pytest.approx(0.0075)
    assert logs["train/entropy_bonus"] > 0 and 0 < logs["train/forking_frac"] <= 0.75
    assert logs["train/forking_threshold"] > 0
    # checkpoint, one more step; restore into a fresh controller, the same step: the same state
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["entropy_control"] == {"coef": ctl.coef, "last_entropy": ctl.last_entropy}
    run_training_step(module, rb)
    after = module.entropy_coef_ctl.state_dict()
    module.configure_entropy_control(settings)
    assert module.entropy_coef_ctl.coef == 0.01
    module.on_load_checkpoint(checkpoint)
    run_training_step(module, rb)
    assert module.entropy_coef_ctl.state_dict() == after and after["coef"] == pytest.approx(0.03)


def test_constant_bonus_logs_its_coefficient_and_never_moves(module):
    module.configure_entropy_control(EntropyControl(entropy_coef=0.02))
    logs, _ = run_training_step(module, rollout(module))
    assert module.entropy_coef_ctl.coef == 0.02 and logs["train/entropy_coef"] == pytest.approx(0.02)
    assert "train/forking_frac" not in logs and logs["train/entropy_bonus"] > 0


def test_bad_settings_fail_at_construction_in_one_line():
    cases = [
        (dict(top_entropy_quantile=1.5), r"^model.entropy_control.top_entropy_quantile must be in \[0, 1\] \(1 = off\); got 1.5$"),
        (dict(adaptive=True), r"^model.entropy_control.entropy_target must be .* when adaptive is true; got None$"),
        (dict(adaptive=True, entropy_target=0.2, entropy_coef_delta=0.0), r"entropy_coef_delta must be > 0; got 0.0"),
        (dict(adaptive=True, entropy_target=0.2, entropy_coef_min=0.5, entropy_coef_max=0.1), r"entropy_coef_max must be >= entropy_coef_min=0.5 >= 0; got 0.1"),
        (dict(adaptive=True, entropy_target=0.2, entropy_coef=2.0), r"entropy_coef must be in \[entropy_coef_min, entropy_coef_max\]"),
        (dict(entropy_coef=float("nan")), r"entropy_coef must be finite; got nan"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            EntropyControl(**kwargs)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        AEPOModule(entropy_control={"top_entropy_quantile": -0.1})  # a dict (e.g. from a checkpoint's hparams)

    @register_policy_loss("_no_weights")
    def _no_weights(log_probs, old_log_probs, advantages, mask, clip_low=0.2, clip_high=0.3, clip_dual=3.0, agg="token-mean", *, normalizer=None, horizon=None):  # fmt: skip
        return aggregate(-advantages[:, None] * log_probs, mask, agg, normalizer=normalizer, horizon=horizon), {}

    try:
        with pytest.raises(ValueError, match=r"does not take$"):
            AEPOModule(policy_loss="_no_weights", entropy_control=EntropyControl(top_entropy_quantile=0.2))
        AEPOModule(policy_loss="_no_weights", entropy_control=EntropyControl(entropy_coef=0.1))  # a bonus needs no weights
    finally:
        POLICY_LOSSES.pop("_no_weights")


def test_cli_builds_the_settings_from_flags():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AEPOModule, "model")
    cfg = parser.parse_args(["--model.entropy_control.top_entropy_quantile=0.2", "--model.entropy_control.entropy_coef=0.001"])
    module = parser.instantiate_classes(cfg).model
    assert module.entropy_settings == EntropyControl(top_entropy_quantile=0.2, entropy_coef=0.001)
    assert parser.instantiate_classes(parser.parse_args([])).model.entropy_settings == EntropyControl()


def test_a_real_fit_logs_the_panels_and_checkpoints_the_coefficient(tmp_path):
    """Lightning end to end (hf engine, 2 rollout steps x 2 optimizer steps): the four panels in
    metrics.csv, and the controller's state in the saved checkpoint."""
    import csv

    import lightning.pytorch as pl

    from callbacks.rollout import RolloutCallback
    from data_modules.prompts import PromptDataModule
    from tests.callbacks.test_rollout import trainer, write_prompts, write_reward

    tiny = str(build_tiny_qwen2(tmp_path / "qwen2"))
    reward = write_reward(tmp_path / "r.py", "def f(responses, answers):\n    return [float(len(r) % 2 == 0) for r in responses]\n")
    pl.seed_everything(0)
    rollout_cb = RolloutCallback(engine="hf", n=4, max_new_tokens=10, reward_fn=f"{reward}:f", seed=3, filter_groups=False)
    settings = EntropyControl(top_entropy_quantile=0.2, adaptive=True, entropy_coef=0.0, entropy_target=100.0, entropy_coef_delta=0.001)
    model = AEPOModule(model_path=tiny, mini_batch_size=4, micro_batch_size=2, use_kl_loss=False, entropy_control=settings)
    data = PromptDataModule(path=write_prompts(tmp_path / "p.jsonl"), tokenizer_path=tiny, batch_size=2, max_prompt_length=96)
    fit = trainer(tmp_path, [rollout_cb], max_steps=4)
    fit.fit(model, data)
    rows = [r for r in csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))) if r.get("train/loss")]
    assert len(rows) == 2
    panels = ("train/entropy_coef", "train/entropy_bonus", "train/forking_frac", "train/forking_threshold")
    for row in rows:
        values = {k: float(row[k]) for k in panels}
        assert 0 < values["train/forking_frac"] <= 0.5 and values["train/forking_threshold"] > 0, values
        assert values["train/entropy_bonus"] > 0, values
    # c: 0 applied at the first optimizer step, then +δ per step: mean over each rollout step's two steps
    assert [float(r["train/entropy_coef"]) for r in rows] == pytest.approx([0.0005, 0.0025])
    assert model.entropy_coef_ctl.coef == pytest.approx(0.004)
    fit.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["entropy_control"]
    assert saved == model.entropy_coef_ctl.state_dict()
    assert saved["last_entropy"] < 100.0
