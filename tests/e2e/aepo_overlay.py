"""Build the YAML overlay and data the AEPO end-to-end tests put on top of configs/aepo.yaml."""

import json
from pathlib import Path

# A verifiable toy reward the random tiny model can hit by chance: a response is "correct" when it
# has an even number of characters. Groups then mix right and wrong answers, so GRPO has signal.
REWARD_FILE = '''
def parity(responses, answers):
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
'''


BRANCHING = """
  branching: {initial_n: 2, budget: [0, 1, 2], children_per_point: 1, min_prefix: 2, min_suffix: 2, min_gap: 4}"""


def write_overlay(
    tmp: Path, engine: str, steps: int = 2, extra_callbacks: str = "", branching: bool = False, ckpt_every: int = 1
) -> Path:
    """`branching`: the rollout samples 2 responses per prompt, then branches (n = 4 leaves).
    `ckpt_every`: ModelCheckpoint's every_n_train_steps."""
    reward = tmp / "reward.py"
    reward.write_text(REWARD_FILE)
    data = tmp / "prompts.jsonl"
    with data.open("w") as f:
        for i in range(16):
            f.write(json.dumps({"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    engine_kwargs = "{max_model_len: 256, kv_cache_gb: 0.5}" if engine == "vllm" else "{}"
    overlay = tmp / "overlay.yaml"
    overlay.write_text(
        f"""
trainer:
  max_steps: {steps}
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp / "runs"}, name: aepo}}
  callbacks:
    - class_path: callbacks.dynamic_kl.DynamicKLCallback
    - class_path: callbacks.entropy_logging.EntropyLoggingCallback
      init_args: {{media_every_n_steps: 1}}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp / "ckpt"}, save_last: true, every_n_train_steps: {ckpt_every}, save_top_k: 0}}
{extra_callbacks}
rollout:
  engine: {engine}
  engine_kwargs: {engine_kwargs}
  n: 4
  max_new_tokens: 12
  reward_fn: {reward}:parity
  max_refill_tries: 2{BRANCHING if branching else ""}
model:
  init_args:
    model_path: builtin:tiny-qwen2
    lr: 1.0e-3
    mini_batch_size: 8
    micro_batch_size: 4
    validation: {{n: 2, max_tokens: 8}}
data:
  init_args:
    path: {data}
    batch_size: 2
    max_prompt_length: 96
    val_size: 2
"""
    )
    return overlay
