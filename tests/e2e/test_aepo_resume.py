"""Resume: `fit --ckpt_path last.ckpt` continues exactly where an uninterrupted run would be.

Compares an uninterrupted 3-step run with a 2-step run saved and resumed to 3 steps: the policy
weights, the difficulty tracker (buckets, history, targets, α), the KL controller κ, the HWE
threshold τ and the data position must all agree.

Preemption (callbacks/preemption.py): a real SIGTERM or SIGUSR1, sent by the run to itself in the
middle of step 2's generation, scoring or update (tests/e2e/faults.py), with no periodic
checkpoint: the run must save last.ckpt at the end of that step, exit 128 + signum, and resume to
the same state as the uninterrupted run. Under SLURM, SIGUSR1 requeues the job; `scontrol` is a
4-line fake on PATH here (no SLURM controller on these machines), which records its arguments.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import ROOT, fit


def _callback_state(ckpt, name):
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith(name))


def _same(a, b, path="state"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, equal_nan=True, msg=path)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-5 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 3-step run that every resumed run is compared with."""
    folder = tmp_path_factory.mktemp("straight")
    fit(folder, "--config", str(write_overlay(folder, "hf", steps=3)))
    return torch.load(folder / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A 2-step run whose last.ckpt the resume and full-disk tests start from."""
    folder = tmp_path_factory.mktemp("first")
    fit(folder, "--config", str(write_overlay(folder, "hf", steps=2)))
    return folder / "ckpt" / "last.ckpt"


def test_resume_matches_uninterrupted_run(tmp_path, straight, two_steps):
    _resume_and_compare(tmp_path, two_steps, straight)


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, two_steps):
    """A real file-size limit (`ulimit -f`, EFBIG) of half a checkpoint: the step-3 save fails."""
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    ckpt.parent.mkdir()
    # The user's own run, resumed in place: ModelCheckpoint's saved folder is this one, so step 3
    # overwrites last.ckpt (from another folder, Lightning would write last-v1.ckpt beside it).
    state = torch.load(two_steps, weights_only=False, map_location="cpu")
    mc = next(k for k in state["callbacks"] if k.startswith("ModelCheckpoint"))
    state["callbacks"][mc].update(dirpath=str(ckpt.parent), last_model_path=str(ckpt))
    torch.save(state, ckpt)
    limit_kb = ckpt.stat().st_size // 1024 // 2
    overlay = write_overlay(tmp_path, "hf", steps=3)
    fit_cmd = f"{sys.executable} -m ares_lit fit --config {ROOT / 'configs/aepo.yaml'} --config {overlay} --ckpt_path={ckpt}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    res = subprocess.run(
        ["bash", "-c", f"ulimit -f {limit_kb}; exec {fit_cmd}"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert res.returncode == 1, res.stderr[-4000:]
    last = res.stderr.strip().splitlines()[-2:]
    assert last[0].startswith(f"error: [Errno 27] could not write the checkpoint {ckpt}"), res.stderr[-3000:]
    assert "ulimit -f" in last[1]
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 2  # intact
    assert not ckpt.with_name("last.ckpt.tmp").exists()


def _resume_and_compare(resumed, ckpt, a):
    resumed.mkdir(exist_ok=True)
    fit(resumed, "--config", str(write_overlay(resumed, "hf", steps=3)), f"--ckpt_path={ckpt}")
    b = torch.load(resumed / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert a["global_step"] == b["global_step"] == 3
    _same(a["PromptDataModule"], b["PromptDataModule"], "datamodule")  # tracker, α, epoch/consumed
    assert b["PromptDataModule"]["consumed"] == 3
    _same(_callback_state(a, "RolloutCallback"), _callback_state(b, "RolloutCallback"), "hwe")
    _same(_callback_state(a, "DynamicKLCallback"), _callback_state(b, "DynamicKLCallback"), "kl")
    assert _callback_state(b, "DynamicKLCallback")["kappa"] != [0.01, 0.01, 0.01]  # it did update
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.parametrize(
    "sig,phase",
    [
        pytest.param("SIGTERM", "generation", marks=pytest.mark.slow),
        ("SIGUSR1", "update"),
        pytest.param("SIGTERM", "scoring", marks=pytest.mark.slow),
        pytest.param("SIGUSR1", "grading", marks=pytest.mark.slow),
    ],
)
def test_preemption_saves_at_the_end_of_the_step_and_resumes_exactly(tmp_path, straight, sig, phase):
    run, resumed, bin_dir = tmp_path / "run", tmp_path / "resumed", tmp_path / "bin"
    for d in (run, resumed, bin_dir):
        d.mkdir()
    record = tmp_path / "scontrol.args"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    injector = (
        "    - class_path: tests.e2e.faults.SignalAt\n"
        f"      init_args: {{signal: {sig}, phase: {phase}, step: 1}}\n"
    )
    # No periodic checkpoint (every 100 steps): a last.ckpt can only come from the preemption save.
    overlay = write_overlay(run, "hf", steps=3, extra_callbacks=injector, ckpt_every=100)
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
    }
    cmd = [sys.executable, "-m", "ares_lit", "fit", "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay)]
    res = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, timeout=900)
    signum = int(getattr(__import__("signal"), sig))
    assert res.returncode == 128 + signum, res.stderr[-4000:]
    assert f"preempted by {sig} during {phase} of step 2" in res.stderr, res.stderr[-4000:]
    saved = run / "ckpt" / "last.ckpt"
    assert torch.load(saved, weights_only=False, map_location="cpu")["global_step"] == 2
    assert not (run / "ckpt" / "last.ckpt.tmp").exists()
    assert not list(run.rglob("hf_model")), "a preempted run must not export as if it had finished"
    # SIGUSR1 under SLURM requeues the job; SIGTERM does not.
    assert (record.read_text().split() if record.exists() else []) == (["requeue", "4242"] if sig == "SIGUSR1" else [])
    _resume_and_compare(resumed, saved, straight)
