"""The cold-start stage on DeepSpeed ZeRO-2 and ZeRO-3, through the real CLI, on the CPU shim.

Each run: `python -m ares_lit fit --config configs/coldstart.yaml` with the tiny Qwen2, two
optimizer steps, Lightning's DeepSpeedStrategy (tests/strategies.py makes it run on the CPU; ZeRO-3
there partitions every parameter). Checked: the model loads into shards with its real weights,
weight decay reaches the matrices although ZeRO-3 shards are 1-D, the checkpoint is DeepSpeed's
sharded folder, and the exported HF folder holds exactly the trained weights.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.strategies import fit_coldstart


def fp32_weights(checkpoint_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir))


@pytest.mark.parametrize("stage", [2, 3])
def test_coldstart_fit_on_deepspeed(tmp_path, stage):
    res = fit_coldstart(tmp_path, stage)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in res.stderr

    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["stage"] == stage and probe["world_size"] == 1
    if stage == 3:  # every parameter is a shard (shape [0]) outside forward
        assert probe["partitioned"] == probe["params"] > 0
    else:
        assert probe["partitioned"] == 0

    # DeepSpeed's sharded checkpoint folder, with Lightning's state inside.
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    tag = (ckpt / "latest").read_text()  # the save's own folder (ares_lit/atomic_io.py), named by the step
    assert ckpt.is_dir() and tag.startswith("step0000002-") and [p.name for p in ckpt.iterdir() if p.is_dir()] == [tag]
    optim = torch.load(next((ckpt / tag).glob("*optim_states.pt")), map_location="cpu", weights_only=False)
    assert int(optim["optimizer_state_dict"]["zero_stage"]) == stage
    trained = {k.removeprefix("policy."): v for k, v in fp32_weights(ckpt).items()}

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model").state_dict()
    initial = AutoModelForCausalLM.from_pretrained(next((tmp_path.parent / "ares_cache" / "models").glob("tiny-qwen2-*"))).state_dict()
    assert set(trained) <= set(exported)
    for name, value in trained.items():
        assert torch.equal(exported[name], value), name  # the export is the trained model, bit for bit
    # Two Adam steps at lr 3e-3 move each weight by at most ~6e-3: the shards held the real
    # pretrained weights (a random re-init would differ by ~0.02 and more).
    moved = max(float((exported[k] - initial[k]).abs().max()) for k in initial)
    assert 1e-3 < moved < 7e-3, moved

    # Weight decay on the matrices, none on norms and biases, under ZeRO-3 too (shards are 1-D).
    matrices = sum(v.numel() for k, v in initial.items() if v.ndim >= 2 and "norm" not in k and k != "lm_head.weight")
    assert probe["decay_numel"] == matrices
    assert probe["no_decay_numel"] == sum(v.numel() for k, v in initial.items() if v.ndim < 2)


@pytest.mark.slow
def test_lora_coldstart_on_zero3_checkpoints_the_adapter_only(tmp_path):
    """LoRA under ZeRO-3: DeepSpeed's checkpoint folder holds the trainable (adapter) tensors only
    (exclude_frozen_parameters), and `python -m ares_lit.export` turns it into the same merged model
    as the run's own export at fit end."""
    from safetensors.torch import load_file

    from tests.strategies import ROOT, coldstart_overlay, run_cli

    lora = tmp_path / "lora.yaml"
    lora.write_text("model:\n  init_args:\n    lora: {r: 4, alpha: 8}\n")
    res = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config",
                  str(coldstart_overlay(tmp_path, 3, 2)), "--config", str(lora))
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    trained = fp32_weights(ckpt)
    assert trained and all(".lora_" in k for k in trained), sorted(trained)[:3]
    res = run_cli(tmp_path, "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "exported"), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-3000:]
    mine, theirs = (load_file(d / "model.safetensors") for d in (tmp_path / "exported", tmp_path / "hf_model"))
    assert mine.keys() == theirs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], atol=1e-6, rtol=0, msg=k)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
