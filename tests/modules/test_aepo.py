"""AEPOModule's loss on a tiny random Qwen2: micro-batching, policy losses, KL coefficients,
validation, and a fit without a RolloutCallback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ares_lit.batch import RolloutBatch
from ares_lit.core import POLICY_LOSSES, DynamicKL, PolicyLossOptions, get_policy_loss
from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.modules.aepo import AEPOModule
from callbacks.dynamic_kl import DynamicKLCallback
from tests.e2e.aepo_overlay import write_overlay

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    path = build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "qwen2")
    m = AEPOModule(model_path=str(path), mini_batch_size=8, micro_batch_size=2)
    m.configure_model()
    return m


def rollout(module, n=8, p=5, r=7):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, module.policy.config.vocab_size, (n, p + r), generator=g)
    attention = torch.ones(n, p + r, dtype=torch.long)
    attention[:, :2] = torch.arange(n)[:, None] % 2 == 0  # some prompts are left-padded
    lengths = torch.randint(1, r + 1, (n,), generator=g)
    lengths[0] = r  # row 0 spans the full width: select() of all rows keeps every column
    response_mask = torch.arange(r)[None] < lengths[:, None]
    attention[:, p:] = response_mask
    old, _ = module.score(module.policy, ids, attention, r, 1.0)
    ref = old + 0.3 * torch.randn(n, r, generator=g)
    return RolloutBatch(
        input_ids=ids,
        attention_mask=attention,
        response_mask=response_mask,
        old_log_probs=old + 0.1 * torch.randn(n, r, generator=g),
        ref_log_probs=ref,
        advantages=torch.randn(n, generator=g),
        bucket=torch.arange(n) % 3,
        window_mask=torch.rand(n, r, generator=g) > 0.7,
    )


def grads_of(module, rb, micro):
    module.policy.zero_grad()
    idx = torch.arange(rb.size)
    normalizer = module._normalizers(rb, [torch.arange(rb.size)])[0]
    total = 0.0
    for start in range(0, rb.size, micro):
        loss, _, _ = module._micro_loss(rb.select(idx[start : start + micro]), 1.0, normalizer)
        loss.backward()
        total += float(loss)
    grads = {n: p.grad.clone() for n, p in module.policy.named_parameters()}
    module.policy.zero_grad()
    return total, grads


@pytest.mark.parametrize("loss", ["vanilla", "gspo", "cispo"])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batches_add_up_to_the_mini_batch(module, agg, loss):
    module.hparams.loss_agg, module.hparams.policy_loss = agg, loss
    try:
        rb = rollout(module)
        whole, g_whole = grads_of(module, rb, micro=8)
        parts, g_parts = grads_of(module, rb, micro=2)
    finally:
        module.hparams.loss_agg, module.hparams.policy_loss = "token-mean", "vanilla"
    assert parts == pytest.approx(whole, rel=1e-5, abs=1e-6)
    for name in g_whole:
        torch.testing.assert_close(g_parts[name], g_whole[name], atol=1e-6, rtol=1e-4, msg=name)


def test_policy_loss_option_selects_the_registered_loss(module):
    rb = rollout(module)
    micro = rb.select(torch.arange(rb.size))
    norm = module._normalizers(rb, [torch.arange(rb.size)])[0]
    log_probs, _ = module.score(module.policy, rb.input_ids, rb.attention_mask, rb.response_len, 1.0)
    seen = {}
    for name in ("vanilla", "gspo", "cispo"):
        module.hparams.policy_loss = name
        try:
            _, metrics, _ = module._micro_loss(micro, 1.0, norm)
        finally:
            module.hparams.policy_loss = "vanilla"
        expect, expect_metrics = get_policy_loss(name)(
            log_probs, rb.old_log_probs, rb.advantages, rb.response_mask, 0.2, 0.3, 3.0, normalizer=norm
        )
        assert float(metrics["pg_loss"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-6)
        assert float(metrics["clipfrac"]) == pytest.approx(float(expect_metrics["clipfrac"]), abs=1e-6)
        seen[name] = float(metrics["pg_loss"])
    assert len(set(seen.values())) == 3, seen  # three different losses


def test_policy_loss_kwargs_and_a_step_seeded_generator_reach_the_loss(module):
    rb = rollout(module)
    micro = rb.select(torch.arange(rb.size))
    norm = module._normalizers(rb, [torch.arange(rb.size)])[0]
    log_probs, _ = module.score(module.policy, rb.input_ids, rb.attention_mask, rb.response_len, 1.0)
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    for name, kwargs in (("clip_cov", {"clip_cov_ratio": 0.2, "clip_cov_lb": -5.0}), ("kl_cov", {"kl_cov_ratio": 0.3})):
        module.hparams.policy_loss, module.policy_loss_options = name, PolicyLossOptions(name, kwargs)
        try:
            _, metrics, _ = module._micro_loss(micro, 1.0, norm)
        finally:
            module.hparams.policy_loss, module.policy_loss_options = "vanilla", PolicyLossOptions("vanilla")
        # a fresh generator of (run seed, step 0, rank 0): what a resumed run at this step draws
        expect, expect_metrics = get_policy_loss(name)(
            log_probs, rb.old_log_probs, rb.advantages, rb.response_mask, 0.2, 0.3, 3.0, normalizer=norm,
            **PolicyLossOptions(name, kwargs)(seed, 0, 0),
        )
        assert float(metrics["pg_loss"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-6)
        key = "clipfrac" if name == "clip_cov" else "kl_cov/selected_frac"
        assert float(metrics[key]) == float(expect_metrics[key]) > 0.05  # the options took effect


def test_kl_term_uses_dynamic_coefficients_with_rho_in_windows(module):
    rb = rollout(module)
    micro = rb.select(torch.arange(rb.size))
    norm = module._normalizers(rb, [torch.arange(rb.size)])[0]
    module.kl_controller = None
    _, base, _ = module._micro_loss(micro, 1.0, norm)
    ctl = DynamicKL(kl_coef=0.01, rho=0.5)
    ctl.kappa = torch.tensor([0.02, 0.04, 0.08], dtype=torch.float64)
    module.kl_controller = ctl
    _, dyn, k3 = module._micro_loss(micro, 1.0, norm)
    module.kl_controller = None
    beta = ctl.coefficients(rb.bucket, rb.window_mask)
    expect = (beta * k3)[rb.response_mask].sum() / rb.response_mask.sum()
    assert float(dyn["kl_loss"]) == pytest.approx(float(expect), rel=1e-5)
    assert float(base["kl_loss"]) == pytest.approx(0.01 * float(k3[rb.response_mask].mean()), rel=1e-5)
    assert float(dyn["pg_loss"]) == pytest.approx(float(base["pg_loss"]), rel=1e-6)  # KL does not touch the PG term


# ------------------------------------------------------------------ rollout correction (TIS)
def test_rollout_correction_weighs_the_policy_loss_by_the_engine_ratio(module):
    rb = rollout(module)
    norm = module._normalizers(rb, [torch.arange(rb.size)])[0]
    _, off, _ = module._micro_loss(rb.select(torch.arange(rb.size)), 1.0, norm)
    g = torch.Generator().manual_seed(3)
    rb.engine_log_probs = rb.old_log_probs - 0.8 * torch.rand(rb.old_log_probs.shape, generator=g)  # ρ up to e^0.8
    micro = rb.select(torch.arange(rb.size))
    assert torch.equal(micro["engine_log_probs"], rb.engine_log_probs)  # select slices it
    module.hparams.rollout_correction = "token_tis"
    try:
        _, on, _ = module._micro_loss(micro, 1.0, norm)
        rb.engine_log_probs = rb.old_log_probs.clone()  # an engine equal to the trainer
        _, same, _ = module._micro_loss(rb.select(torch.arange(rb.size)), 1.0, norm)
    finally:
        module.hparams.rollout_correction = None
    assert abs(float(same["pg_loss"]) - float(off["pg_loss"])) <= 1e-7
    assert float(same["tis_weight_mean"]) == 1.0 and float(same["tis_truncated_frac"]) == 0.0
    # with the perturbation: the hand weights min(exp(old - engine), 2) in the registered loss
    mask = rb.response_mask
    ratio = torch.exp(rb.old_log_probs - micro["engine_log_probs"])
    weights = ratio.clamp(max=2.0)
    log_probs, _ = module.score(module.policy, rb.input_ids, rb.attention_mask, rb.response_len, 1.0)
    expect, _ = get_policy_loss("vanilla")(log_probs, rb.old_log_probs, rb.advantages, mask, normalizer=norm, weights=weights)
    assert float(on["pg_loss"]) == pytest.approx(float(expect), rel=1e-5, abs=1e-7)
    assert float(on["pg_loss"]) != pytest.approx(float(off["pg_loss"]), rel=1e-3)
    assert float(on["tis_weight_mean"]) == pytest.approx(float(weights[mask].mean()), rel=1e-5)
    assert float(on["tis_truncated_frac"]) == pytest.approx(float((ratio[mask] > 2).float().mean()), abs=1e-6)
    assert float(on["tis_truncated_frac"]) > 0  # some tokens were cut to C
    assert float(on["kl_loss"]) == pytest.approx(float(off["kl_loss"]), rel=1e-6)  # the KL term is not weighted


def test_rollout_correction_without_engine_log_probs_fails_with_a_clear_message(module):
    rb = rollout(module)
    module.hparams.rollout_correction = "seq_mask"
    try:
        with pytest.raises(ValueError, match=r"rollout_correction=seq_mask needs the engine's log-probs"):
            module.training_step({"rollout": rb}, 0)
    finally:
        module.hparams.rollout_correction = None


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="micro_batch_size"):
        AEPOModule(mini_batch_size=2, micro_batch_size=4)
    with pytest.raises(ValueError, match="loss_agg"):
        AEPOModule(loss_agg="token-sum")
    with pytest.raises(ValueError, match="kl_estimator"):
        AEPOModule(kl_estimator="k9")
    with pytest.raises(ValueError, match=r"model.policy_loss must be one of \['cispo', 'clip_cov', 'gspo', 'kl_cov', 'vanilla'.*got 'ppo'"):
        AEPOModule(policy_loss="ppo")
    with pytest.raises(ValueError, match=r"^model.policy_loss_kwargs: policy loss 'kl_cov' takes no option 'kl_cov_coef'; accepted: "):
        AEPOModule(policy_loss="kl_cov", policy_loss_kwargs={"kl_cov_coef": 1.0})
    with pytest.raises(ValueError, match=r"model.rollout_correction must be null or one of \('token_tis', 'seq_mask'\)"):
        AEPOModule(rollout_correction="tis")
    with pytest.raises(ValueError, match="rollout_correction_cap"):
        AEPOModule(rollout_correction="token_tis", rollout_correction_cap=0.5)
    with pytest.raises(ValueError, match="loss_horizon"):
        AEPOModule(loss_horizon=0)
    assert {"vanilla", "gspo", "cispo"} <= set(POLICY_LOSSES)


# ------------------------------------------------------------------ kl_coef: one source of truth
def test_dynamic_kl_starts_from_the_models_kl_coef(module):
    cb = DynamicKLCallback()
    module.hparams.kl_coef = 0.05
    try:
        cb.setup(None, module, "fit")
        assert cb.controller.kappa.tolist() == [0.05, 0.05, 0.05]
        DynamicKLCallback(kl_coef=0.05).setup(None, module, "fit")  # an equal explicit value is accepted
        with pytest.raises(ValueError, match=r"DynamicKLCallback.kl_coef=0.02 conflicts with model.kl_coef=0.05"):
            DynamicKLCallback(kl_coef=0.02).setup(None, module, "fit")
        module.hparams.kl_coef = 0.0
        with pytest.raises(ValueError, match=r"model.kl_coef=0.0 is DynamicKLCallback's initial"):
            DynamicKLCallback().setup(None, module, "fit")
    finally:
        module.hparams.kl_coef = 0.01
    # a checkpoint's κ (restored after setup) replaces the start value
    cb.load_state_dict({"kappa": [0.03, 0.04, 0.06]})
    assert cb.controller.kappa.tolist() == [0.03, 0.04, 0.06]


# ------------------------------------------------------------------ fail fast without rollouts
def test_fit_without_rollouts_fails_in_one_line_before_any_model_loads(tmp_path):
    """A config without a `rollout:` block (here `--rollout=null`) exits 2 with one line naming the
    block, before any model loads or any run folder is made."""
    overlay = write_overlay(tmp_path, "hf", steps=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay),
           "--rollout=null"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "no `rollout:` block" in res.stderr and "configs/aepo.yaml" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and len((res.stdout + res.stderr).strip().splitlines()) <= 5, res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ckpt").exists()


def test_engine_log_probs_are_padded_like_the_old_log_probs():
    from ares_lit.batch import pad_engine_log_probs

    like = torch.zeros(3, 3)
    out = pad_engine_log_probs([[-1.0, -2.0], [], [-0.5, -0.25, -0.125, -9.0]], like)
    assert out.tolist() == [[-1.0, -2.0, 0.0], [0.0, 0.0, 0.0], [-0.5, -0.25, -0.125]]
    assert pad_engine_log_probs([[-1.0], None, [-2.0]], like) is None  # an engine without log-probs
