"""Data parallel AEPO: `python -m ares_lit fit` with 2 DDP processes (gloo, CPU), tiny Qwen2, HF engine.

Each rank rolls out its own slice of prompts, yet after every step both ranks must hold the same
controller state (difficulty tracker, HWE threshold τ, bucket targets T_d and α_d, κ_d), and that
state must come from both ranks' rollouts. A test-only callback dumps every rank's state.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.aepo_overlay import write_overlay

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def overlay_with_state_dump(tmp_path: Path, branching: bool = False) -> Path:
    dump = (
        "    - class_path: tests.e2e.ddp_state_dump.ControllerStateDump\n"
        f"      init_args: {{out_dir: {tmp_path / 'state'}}}"
    )
    return write_overlay(tmp_path, "hf", steps=STEPS, extra_callbacks=dump, branching=branching)


def fit_two_ranks(tmp_path: Path, overlay: Path, *extra: str) -> None:
    """`python -m ares_lit fit` with 2 DDP processes on the CPU (gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = [
        sys.executable, "-m", "ares_lit", "fit",
        "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", *extra,
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]


def test_two_ranks_share_one_controller_state(tmp_path):
    overlay = overlay_with_state_dump(tmp_path)
    fit_two_ranks(tmp_path, overlay)

    rank0 = read_lines(tmp_path / "state" / "state_rank0.jsonl")
    rank1 = read_lines(tmp_path / "state" / "state_rank1.jsonl")
    assert [s["step"] for s in rank0] == [s["step"] for s in rank1] == list(range(1, STEPS + 1))

    prev_targets = [None, None, None]
    seen: set[str] = set()
    for s0, s1 in zip(rank0, rank1):
        # Identical controller state on both ranks after every step.
        assert s0["shared"] == s1["shared"], f"step {s0['step']}: ranks disagree"
        shared = s0["shared"]

        # ...built from both ranks' data: the ranks rolled out different prompts, and the shared
        # tracker knows every one of them.
        ids0, ids1 = set(s0["local"]["batch_ids"]), set(s1["local"]["batch_ids"])
        assert ids0 and ids1 and not ids0 & ids1
        seen |= ids0 | ids1
        tracked = shared["tracker"]["bucket"]
        assert seen <= set(tracked), sorted(seen - set(tracked))
        assert all(len(shared["tracker"]["history"][i]) >= 1 for i in seen)

        # T_d is the mean N_HE of bucket d over BOTH ranks' responses (no momentum); a bucket with
        # fewer than 4 responses (the log_ratio controller's alpha_min_responses) keeps its last target.
        n_hwe = s0["local"]["n_hwe"] + s1["local"]["n_hwe"]
        bucket = s0["local"]["bucket"] + s1["local"]["bucket"]
        assert s0["local"]["n_hwe"] and s1["local"]["n_hwe"]
        for d in range(3):
            values = [n for n, b in zip(n_hwe, bucket) if b == d]
            expected = sum(values) / len(values) if len(values) >= 4 else prev_targets[d]
            got = shared["tracker"]["targets"][d]
            if expected is None:
                assert got is None
            else:
                assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-6), (d, got, expected)
        prev_targets = shared["tracker"]["targets"]
        # the set-point calibration saw every step in which a bucket had 4+ responses, on both ranks' data
        assert shared["tracker"]["setpoint_batches"] == [
            sum(sum(1 for b in (r0["local"]["bucket"] + r1["local"]["bucket"]) if b == d) >= 4 for r0, r1 in zip(rank0, rank1) if r0["step"] <= s0["step"])
            for d in range(3)
        ]

        # τ was updated once per step, and κ moved from kl_coef = 0.01 after the first step.
        assert shared["hwe"]["num_updates"] == s0["step"]
        assert shared["hwe"]["value"] is not None
    assert any(k != 0.01 for k in rank0[-1]["shared"]["kappa"])


RANK_REWARD = '''
import os

def parity_on_rank0(responses, answers):
    # Rank 1 gets no signal at all: every one of its groups is dropped, every step.
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return [0.0 for _ in responses]
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
'''


@pytest.mark.parametrize("branching", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["flat", "branching"])
def test_a_rank_without_rollouts_takes_part_and_the_run_completes(tmp_path, branching):
    """One rank keeps groups, the other drops them all: no hang, and the state still agrees.
    With branching every refill round scores and gathers, so rank 0 (whose groups are kept)
    runs the refill rounds rank 1 needs, on zero prompts."""
    overlay = overlay_with_state_dump(tmp_path, branching)
    reward = tmp_path / "rank_reward.py"
    reward.write_text(RANK_REWARD)
    overlay.write_text(overlay.read_text().replace(f"{tmp_path / 'reward.py'}:parity", f"{reward}:parity_on_rank0"))
    fit_two_ranks(tmp_path, overlay)
    rank0 = read_lines(tmp_path / "state" / "state_rank0.jsonl")
    rank1 = read_lines(tmp_path / "state" / "state_rank1.jsonl")
    assert len(rank0) == len(rank1) == STEPS
    for s0, s1 in zip(rank0, rank1):
        assert s0["shared"] == s1["shared"]
        assert s0["local"]["n_hwe"] and not s1["local"]["n_hwe"]  # rank 1 had no rollouts
        assert s0["shared"]["hwe"]["num_updates"] == s0["step"]
