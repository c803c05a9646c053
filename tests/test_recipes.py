"""The paper recipes (configs/recipes/) parse through the real CLI, and their numbers are the paper's.

`--print_config` validates every key against the class signatures (a misspelt or removed field
fails) without building a Trainer or loading a model; the printed, fully resolved config is then
checked against the paper recipe (docs/algorithm.md), including how the batches divide over ranks.
"""

import sys
from pathlib import Path

import pytest
import yaml

from ares_lit.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
SIZES = {"7b": (2, 8), "3b": (1, 8)}  # nodes, GPUs per node, as each recipe's header says


@pytest.fixture
def resolved(capsys, monkeypatch):
    """name -> the recipe's resolved config, as `python -m ares_lit fit --config R --print_config` prints it."""
    monkeypatch.setattr(sys, "argv", ["ares_lit"])  # pytest's own arguments are not the CLI's
    return lambda name: _print_config(name, capsys)


def _print_config(name: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(RECIPES / name), "--print_config"])
    assert exc.value.code in (0, None)
    # DeepSpeed logs "[<time>] [WARNING] ..." to stdout on first import; the YAML has no such line.
    out = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("[20"))
    return yaml.safe_load(out)


def callback(cfg: dict, name: str) -> dict:
    (found,) = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith(name)]
    return found


def test_the_recipe_set_is_complete():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == [
        "ares_3b_aepo.yaml", "ares_3b_coldstart.yaml", "ares_7b_aepo.yaml", "ares_7b_aepo_lora.yaml", "ares_7b_coldstart.yaml"]


def test_the_lora_recipe_is_the_7b_recipe_on_one_gpu(resolved):
    """configs/recipes/ares_7b_aepo_lora.yaml: the 7B AEPO rollout and controllers unchanged, one GPU,
    a LoRA adapter, lr 10x, 4 updates per rollout step and ~250 rollout steps as in the full recipe."""
    full, lora = resolved("ares_7b_aepo.yaml"), resolved("ares_7b_aepo_lora.yaml")
    trainer, model, data = lora["trainer"], lora["model"]["init_args"], lora["data"]["init_args"]
    assert (trainer["num_nodes"], trainer["devices"]) == (1, 1) and not isinstance(trainer.get("strategy"), dict)
    assert model["lora"] == {"r": 32, "alpha": 64.0, "dropout": 0.0, "target_modules": "all-linear",
                             "modules_to_save": None, "adapter_path": None}
    assert model["lr"] == pytest.approx(10 * full["model"]["init_args"]["lr"]) and model["dtype"] == "bfloat16"
    assert model["model_path"] == full["model"]["init_args"]["model_path"]  # a new adapter on the stage-1 export
    rollout = lora["rollout"]["init_args"]
    same = ("n", "temperature", "top_p", "max_new_tokens", "window", "hwe_quantile", "entropy_reward", "advantage")
    assert {k: rollout[k] for k in same} == {k: full["rollout"]["init_args"][k] for k in same}
    assert "distributed_executor_backend" not in rollout["engine_kwargs"]
    samples = data["batch_size"] * rollout["n"]
    assert samples // model["mini_batch_size"] == 4 and trainer["max_steps"] == 250 * 4
    assert lora["trainer"]["callbacks"] == full["trainer"]["callbacks"]


@pytest.mark.parametrize("size", sorted(SIZES))
def test_aepo_recipe(size, resolved):
    cfg = resolved(f"ares_{size}_aepo.yaml")
    nodes, gpus = SIZES[size]
    world = nodes * gpus
    trainer, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert (trainer["num_nodes"], trainer["devices"], trainer["accelerator"]) == (nodes, gpus, "gpu")
    assert trainer["precision"] == "bf16-mixed" and model["dtype"] == "bfloat16"
    assert trainer["strategy"]["class_path"].endswith("DeepSpeedStrategy") and trainer["strategy"]["init_args"]["stage"] == 3

    assert cfg["rollout"]["class_path"] == "callbacks.rollout.RolloutCallback"
    rollout = cfg["rollout"]["init_args"]
    assert (rollout["engine"], rollout["n"], rollout["temperature"], rollout["top_p"]) == ("vllm", 8, 1.0, 0.99)
    assert rollout["engine_kwargs"]["tensor_parallel_size"] >= 1
    assert (data["max_prompt_length"], rollout["max_new_tokens"]) == (4096, 16384)
    assert rollout["engine_kwargs"]["max_model_len"] == 4096 + 16384

    assert (model["lr"], model["weight_decay"], model["warmup_steps"]) == (1e-6, 1e-2, 0)
    assert data["batch_size"] * world == 512  # prompts per rollout step
    samples = 512 * rollout["n"]
    update = model["mini_batch_size"] * world
    assert update == 128 * rollout["n"]  # global batch 128 prompts per optimizer update
    assert model["mini_batch_size"] % model["micro_batch_size"] == 0
    assert trainer["max_steps"] == 250 * samples // update  # ~250 rollout steps, counted in optimizer updates
    assert (data["question_key"], data["answer_key"], data["image_key"]) == ("question", "answer", "images")
    assert data["min_pixels"] <= data["max_pixels"] and model["freeze_vision"] is False
    assert model["model_path"] == f"runs/ares_{size}_coldstart/hf_model"  # trains the stage-1 export


@pytest.mark.parametrize("size", sorted(SIZES))
def test_coldstart_recipe(size, resolved):
    cfg = resolved(f"ares_{size}_coldstart.yaml")
    nodes, gpus = SIZES[size]
    trainer, model, data = cfg["trainer"], cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert (trainer["num_nodes"], trainer["devices"]) == (nodes, gpus)
    assert trainer["precision"] == "bf16-mixed" and model["dtype"] == "bfloat16"
    assert trainer["strategy"]["init_args"]["stage"] == 3
    assert model["model_path"] == f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct"
    assert trainer["max_epochs"] == 2 and model["lr"] == 2e-5 and data["max_length"] == 32768
    assert data["batch_size"] * trainer["accumulate_grad_batches"] * nodes * gpus == 256
    assert data["image_key"] == "images" and data["bracket_n"] == 8 and model["kl_betas"] is None
    assert model["export_dir"] == f"runs/ares_{size}_coldstart/hf_model"
