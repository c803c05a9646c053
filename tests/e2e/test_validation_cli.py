"""Validation during `fit`, and `validate` / `test`, through `python -m ares_lit` on the AEPO default.

Real parts: the CLI, the Trainer's validation loop, HF generate on a tiny random Qwen2, the
math-verify grader, the bundled held-out split, TensorBoard event files read back.
"""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.e2e.aepo_overlay import write_overlay
from tests.strategies import ROOT, run_cli


def _scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_aepo_default_validates_before_training_and_at_the_end(tmp_path):
    overlay = write_overlay(tmp_path, "hf", steps=3)
    res = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay),
                  "--trainer.val_check_interval=3", "--data.init_args.val_size=6")
    assert res.returncode == 0, res.stderr[-4000:]
    acc = _scalars(next((tmp_path / "runs" / "aepo").glob("version_*")))
    tags = set(acc.Tags()["scalars"])
    for tag in ("val/overall/avg_at_n", "val/builtin_math/easy/avg_at_n", "val/builtin_math/hard/pass_at_2",
                "val/builtin_math/medium/length", "val/overall/truncation_rate"):
        assert [e.step for e in acc.Scalars(tag)] == [0, 3], tag
    lengths = [e.value for e in acc.Scalars("val/overall/length")]
    assert all(1 <= v <= 8 for v in lengths)  # validation.max_tokens of the overlay
    assert "val at step 0:" in res.stdout and "val at step 3:" in res.stdout
    assert "| builtin:math/hard | policy | 2 |" in res.stdout  # 6 problems: 2 per level

    # `validate` and `test` evaluate the exported model's hold-out the same way.
    export = next((tmp_path / "runs" / "aepo").glob("version_*")) / "hf_model"
    for command, prefix in (("validate", "val"), ("test", "test")):
        res = run_cli(tmp_path, command, "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay),
                      f"--model.init_args.model_path={export}", "--data.init_args.val_size=3",
                      f"--trainer.logger.init_args.name={command}")
        assert res.returncode == 0, res.stderr[-4000:]
        acc = _scalars(next((tmp_path / "runs" / command).glob("version_*")))
        assert f"{prefix}/overall/avg_at_n" in acc.Tags()["scalars"], sorted(acc.Tags()["scalars"])
        assert f"{prefix} at step 0:" in res.stdout
