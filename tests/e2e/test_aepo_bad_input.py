"""Bad data is skipped and counted during a real run; bad config fails before the model loads."""

import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import ROOT, fit


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    overlay = write_overlay(tmp_path, "hf", steps=1)
    data = tmp_path / "prompts.jsonl"  # 16 good rows from the overlay, plus bad ones
    with data.open("ab") as f:
        f.write(json.dumps({"question": "What is 1 + 1?"}).encode() + b"\n")  # no answer
        f.write(json.dumps({"question": "What is 1 + 2?", "answer": ""}).encode() + b"\n")  # empty answer
        f.write(json.dumps({"question": "   ", "answer": "3"}).encode() + b"\n")  # empty prompt
        f.write(b'{"question": "caf\xe9 \xff?", "answer": "4"}\n')  # not UTF-8
        f.write(b'{"question": "unterminated\n')  # not JSON
        f.write(json.dumps({"question": "long " * 400, "answer": "5"}).encode() + b"\n")  # over-long prompt
    res = fit(tmp_path, "--config", str(overlay))
    assert "16 usable" in res.stdout
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    value = lambda tag: acc.Scalars(tag)[0].value  # noqa: E731
    assert value("data/usable_rows") == 16
    assert value("data/dropped_no_answer") == 2
    assert value("data/dropped_empty_prompt") == 1
    assert value("data/dropped_malformed") == 2
    assert value("data/dropped_too_long") == 1
    assert len(acc.Scalars("train/pg_loss")) == 1  # and it trained


def test_a_step_without_an_update_logs_no_stale_panels(tmp_path):
    """Steps 2 and 3 have no informative group (tests/e2e/faults.py): their panels show the skip, not step 1's numbers."""
    overlay = write_overlay(tmp_path, "hf", steps=3)
    fit(tmp_path, "--config", str(overlay), f"--rollout.reward_fn={ROOT / 'tests/e2e/faults.py'}:reward_first_call_only")
    acc = EventAccumulator(str(next((tmp_path / "runs" / "aepo").glob("version_*"))), size_guidance={"scalars": 0})
    acc.Reload()
    steps = lambda tag: [e.step for e in acc.Scalars(tag)]  # noqa: E731
    assert steps("train/loss") == steps("train/kl") == steps("reward/accuracy") == [0]  # not re-logged at 1, 2
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped_steps")] == [(1, 1.0), (2, 1.0)]
    assert [(e.step, e.value) for e in acc.Scalars("rollout/empty_steps")] == [(1, 1.0), (2, 2.0)]


def _fails(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"), *args]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "Loading weights" not in res.stderr + res.stdout  # failed before any model was loaded
    return res.stderr


def test_group_size_below_two_fails_before_model_loads(tmp_path):
    overlay = write_overlay(tmp_path, "hf", steps=1)
    err = _fails(tmp_path, "--config", str(overlay), "--rollout.n=1")
    assert "n must be >= 2" in err and "Traceback" not in err


def test_unknown_column_fails_before_model_loads(tmp_path):
    overlay = write_overlay(tmp_path, "hf", steps=1)
    err = _fails(tmp_path, "--config", str(overlay), "--data.init_args.question_key=prompt")
    assert "question_key='prompt' is not a column" in err and "--data.init_args.question_key" in err
