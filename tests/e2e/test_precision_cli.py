"""Issue 12 item 1: scoring runs under the trainer's precision, through the real CLI.

`RolloutCallback.on_train_batch_start` scores the old and reference log-probs outside the hook
that Lightning wraps in the precision plugin's context, while `training_step` runs inside it
(autocast for "bf16-mixed"). When the two passes disagree numerically, the PPO ratio is not 1 at
the first update and k3 is not 0 although policy == old == reference. Real parts: the CLI, the
Trainer with `--trainer.precision=bf16-mixed` (CPU autocast supports bf16), HF generate on the
tiny random Qwen2, and the TensorBoard event files, read back.
"""

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import fit, scalars


def test_bf16_mixed_first_update_sees_ratio_one_and_zero_kl(tmp_path):
    overlay = write_overlay(tmp_path, "hf", steps=1)
    # Rollout of 2 prompts x 4 = 8 rows, mini_batch_size 8, one PPO epoch: step 0 is exactly one
    # update, taken before any optimizer step, with policy == old policy == reference.
    fit(tmp_path, "--config", str(overlay), "--trainer.precision=bf16-mixed",
        "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0")  # fmt: skip
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    acc = scalars(run_dir)
    first = {tag: acc.Scalars(tag)[0] for tag in ("train/ppo_kl", "train/clipfrac", "train/kl", "train/optimizer_steps")}
    assert all(e.step == 0 for e in first.values()), {k: e.step for k, e in first.items()}
    assert first["train/optimizer_steps"].value == 1.0  # the logged means are the first update's
    assert abs(first["train/ppo_kl"].value) <= 1e-7, first["train/ppo_kl"].value
    assert first["train/clipfrac"].value == 0.0
    assert first["train/kl"].value <= 1e-9, first["train/kl"].value
