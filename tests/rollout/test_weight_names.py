"""Weight-sync names for Qwen2.5-VL: trainer names of any transformers version -> Hub checkpoint names."""

import torch
from safetensors.torch import save_file

from ares_lit.models.resolve import resolve_model_path
from ares_lit.rollout.weight_names import checkpoint_name, to_checkpoint_names

ARCH = "Qwen2_5_VLForConditionalGeneration"


def test_new_and_old_transformers_names_map_to_the_same_checkpoint_names():
    new = ["model.language_model.layers.0.self_attn.q_proj.weight", "model.visual.blocks.0.attn.qkv.weight",
           "model.language_model.embed_tokens.weight", "lm_head.weight"]
    old = ["model.layers.0.self_attn.q_proj.weight", "visual.blocks.0.attn.qkv.weight",
           "model.embed_tokens.weight", "lm_head.weight"]
    assert [checkpoint_name(n, ARCH) for n in new] == old
    assert [checkpoint_name(n, ARCH) for n in old] == old  # already checkpoint names: unchanged
    assert checkpoint_name("language_model.model.norm.weight", ARCH) == "model.norm.weight"
    # Text models are never renamed, even with a VL-looking prefix.
    assert checkpoint_name("model.language_model.x", "Qwen2ForCausalLM") == "model.language_model.x"


def test_mapped_state_dict_is_a_checkpoint_transformers_loads(tmp_path):
    """The renamed tensors, saved as a checkpoint, load back into the model with identical weights:
    they are the Hub layout that transformers (and vLLM) read."""
    import shutil

    from transformers import AutoModelForImageTextToText

    src = resolve_model_path("builtin:tiny-qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # different from the saved folder
    renamed = dict(to_checkpoint_names(((n, t.detach().clone()) for n, t in model.state_dict().items()), ARCH))
    assert any(n.startswith("visual.") for n in renamed) and any(n.startswith("model.layers.") for n in renamed)
    assert not any(n.startswith("model.language_model.") or n.startswith("model.visual.") for n in renamed)
    out = tmp_path / "hub_layout"
    shutil.copytree(src, out)
    (out / "model.safetensors").unlink()
    renamed.pop("lm_head.weight", None)  # tied
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    loaded = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
