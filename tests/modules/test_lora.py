"""LoRA (peft) in both modules, on the tiny random Qwen2: settings checks, merged weights, the
adapter-disabled reference, adapter-only checkpoints. Real peft, real HF models, no mocks.
(The CLI runs with the vLLM engine and the exports: tests/e2e/test_lora_cli.py; the vLLM push:
tests/rollout/test_engines.py::test_lora_push_of_changed_blocks_matches_the_trainer.)
"""

import copy

import pytest
import torch

from ares_lit.modules.aepo import AEPOModule
from ares_lit.modules.coldstart import AdaptiveColdstartModule
from ares_lit.modules.logprobs import response_logprobs
from ares_lit.modules.lora import AdapterOff, LoraSettings, is_lora, merged_state_dict, merged_weights, reference_scope, trainable_state


@pytest.fixture(scope="module")
def module():
    m = AEPOModule(model_path="builtin:tiny-qwen2", lora=LoraSettings(r=4, alpha=8))
    m.configure_model()
    with torch.no_grad():  # peft starts B at 0 (ΔW = 0): give the adapter something to say
        for name, p in m.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.2)
    return m


def _logprobs(model, ids):
    with torch.no_grad(), reference_scope(model):
        return response_logprobs(model, ids, torch.ones_like(ids), 10, 1.0)[0]


@pytest.mark.parametrize(
    "lora, field, fix",
    [
        ({"r": 0}, "model.lora.r", "integer >= 1"),
        ({"r": 2.5}, "model.lora.r", "integer >= 1"),
        ({"alpha": 0}, "model.lora.alpha", "> 0"),
        ({"dropout": 1.0}, "model.lora.dropout", "[0, 1)"),
        ({"target_modules": "all"}, "model.lora.target_modules", "all-linear"),
        ({"target_modules": []}, "model.lora.target_modules", "non-empty list"),
        ({"target_modules": ["q_proj", "qkv"]}, "model.lora.target_modules", "its linear layers are"),
        ({"modules_to_save": ["embeddings"]}, "model.lora.modules_to_save", "match no module"),
        ({"adapter_path": "no/such/adapter"}, "model.lora.adapter_path", "adapter_config.json"),
        ({"rank": 8}, "model.lora", "the keys are r, alpha"),
    ],
)
@pytest.mark.parametrize("cls", [AEPOModule, AdaptiveColdstartModule])
def test_a_bad_lora_setting_fails_at_construction_naming_the_field(cls, lora, field, fix):
    with pytest.raises(ValueError) as err:
        cls(model_path="builtin:tiny-qwen2", lora=lora)
    assert field in str(err.value) and fix in str(err.value), str(err.value)


def test_merged_weights_equal_peft_merge_and_leave_the_policy_unmerged(module):
    policy = module.policy
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    merged = dict(merged_weights(policy, only_changed=False))
    reference = copy.deepcopy(policy).merge_and_unload()  # peft's own, in place, on a copy
    expected = dict(reference.named_parameters())
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, atol=1e-6, rtol=0, msg=name)
    changed = [n for n in expected if not torch.equal(merged[n], before.get(f"base_model.model.{n}", merged[n]))]
    assert changed == [], "a plain tensor changed"
    # The policy itself is untouched: no in-place merge, nothing to unmerge.
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]), name
    # only_changed: the blocks that hold an adapted layer (q/k/v/o and the MLP: every linear here), no norms/embeddings.
    pushed = dict(merged_weights(policy))
    assert pushed and all(".self_attn." in n or ".mlp." in n for n in pushed)
    assert "model.embed_tokens.weight" not in pushed and "model.norm.weight" not in pushed
    ids = torch.randint(5, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logprobs(policy, ids), _logprobs(reference, ids), atol=1e-5, rtol=0)
    # The export's state dict keeps tied weights tied (one tensor, so save_pretrained writes it once): a
    # separate lm_head.weight in a tied model's folder breaks vLLM's weight sync (measured: 0.58 nats).
    state = merged_state_dict(policy, zero3=False, rank_zero=True)
    assert state.keys() == reference.state_dict().keys()
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]


def test_the_reference_is_the_policy_with_its_adapter_off_and_costs_no_copy(module):
    from transformers import AutoModelForCausalLM

    ref = module.reference
    assert isinstance(ref, AdapterOff) and is_lora(ref) and ref.policy is module.policy
    # No second copy: the reference holds no tensor the policy does not hold.
    assert {id(p) for p in ref.parameters()} == {id(p) for p in module.policy.parameters()}
    base = AutoModelForCausalLM.from_pretrained(module.resolved_model_path, dtype=torch.float32).eval()
    ids = torch.randint(5, 400, (3, 30), generator=torch.Generator().manual_seed(1))
    ref_lp, pol_lp, base_lp = _logprobs(ref, ids), _logprobs(module.policy, ids), _logprobs(base, ids)
    torch.testing.assert_close(ref_lp, base_lp, atol=1e-6, rtol=0)
    assert (pol_lp - base_lp).abs().max() > 1e-2  # the adapter is on outside the scope
    # The module's scoring pass (what the rollout callback calls) scores the reference with the adapter off.
    module.to("cpu")
    scored, _ = module.score(ref, ids, torch.ones_like(ids), 10, 1.0)
    torch.testing.assert_close(scored, base_lp, atol=1e-6, rtol=0)
    scored, _ = module.score(module.policy, ids, torch.ones_like(ids), 10, 1.0)
    torch.testing.assert_close(scored, pol_lp, atol=1e-6, rtol=0)


def test_the_checkpoint_keeps_the_adapter_only_and_a_resume_checks_it(module):
    checkpoint = {"state_dict": module.state_dict()}
    full = len(checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    kept = checkpoint["state_dict"]
    assert kept and len(kept) < full and all("lora_" in k for k in kept)
    assert set(kept) == set(checkpoint["ares_lora"]["keys"])
    assert trainable_state(module, module.state_dict()).keys() == kept.keys()
    assert module.strict_loading is False
    module.on_load_checkpoint(checkpoint)  # complete: accepted
    broken = {**checkpoint, "state_dict": dict(list(kept.items())[1:])}
    with pytest.raises(ValueError, match="lacks 1 adapter tensor"):
        module.on_load_checkpoint(broken)
    plain = AEPOModule(model_path="builtin:tiny-qwen2")
    with pytest.raises(ValueError, match="holds a LoRA adapter only"):
        plain.on_load_checkpoint(checkpoint)
