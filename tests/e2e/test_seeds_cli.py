"""Issue 12 item 3, end to end: two runs with the same config produce identical rollouts.

Real parts: the CLI, the Lightning Trainer, HF generate on the tiny random Qwen2 (its batch is
seeded with the round's seed, `ares_lit/experience/seeds.py`), and the TensorBoard event files,
read back: the decoded samples of the text panel and the reward scalars of every step. A third run
with another rollout seed samples differently, so the comparison can fail.
"""

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import fit, scalars

STEPS = 2


def rollouts(tmp_path, seed: int) -> tuple[list, dict]:
    tmp_path.mkdir()
    overlay = write_overlay(tmp_path, "hf", steps=STEPS)
    fit(tmp_path, "--config", str(overlay), f"--rollout.seed={seed}", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0")
    acc = scalars(next((tmp_path / "runs" / "aepo").glob("version_*")))
    samples = [(e.step, list(e.tensor_proto.string_val)) for e in acc.Tensors("samples/text_summary")]
    rewards = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in ("reward/mean", "reward/accuracy", "rollout/num_samples")}
    assert len(samples) == STEPS and all(len(v) == STEPS for v in rewards.values()), (samples, rewards)
    return samples, rewards


def test_same_config_same_rollouts_and_another_seed_other_rollouts(tmp_path):
    first = rollouts(tmp_path / "a", seed=3)
    again = rollouts(tmp_path / "b", seed=3)
    assert first == again
    other = rollouts(tmp_path / "c", seed=4)
    assert other[0] != first[0]  # the decoded samples differ
