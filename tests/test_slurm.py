"""SLURM: the sbatch template, Lightning's SLURMEnvironment under a faked allocation, and the layout check.

No SLURM here: the tests set the variables srun would set, run real Trainers and the real CLI in
subprocesses, and run the sbatch script with a stand-in `srun` that records its command line.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest

from ares_lit.launch import check_slurm_layout
from tests.strategies import ROOT, run_cli

SBATCH = ROOT / "configs" / "slurm" / "ares.sbatch"
SLURM_VARS = ("SLURM_NTASKS", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
              "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST", "SLURM_JOB_NUM_NODES")


def slurm_env(ntasks=1, nnodes=1, per_node=None, procid=0, localid=0, nodeid=0, job_name="ares", job_id="4242"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "MASTER_", "GROUP_RANK"))}
    env.update(SLURM_NTASKS=str(ntasks), SLURM_NNODES=str(nnodes), SLURM_PROCID=str(procid), SLURM_LOCALID=str(localid),
               SLURM_NODEID=str(nodeid), SLURM_JOB_NAME=job_name, SLURM_JOB_ID=job_id, SLURM_NODELIST="localhost")
    if per_node is not None:
        env["SLURM_NTASKS_PER_NODE"] = str(per_node)
    return env


class SlurmProbe(pl.Callback):
    """Writes what the Trainer's cluster environment says at fit start (used through the CLI)."""

    def __init__(self, out_path: str) -> None:
        self.out_path = out_path

    def on_fit_start(self, trainer, pl_module) -> None:
        env = trainer.strategy.cluster_environment
        Path(self.out_path).write_text(json.dumps({
            "environment": type(env).__name__, "world_size": trainer.world_size, "global_rank": trainer.global_rank,
            "local_rank": trainer.local_rank, "node_rank": trainer.node_rank, "main_port": env.main_port,
            "main_address": env.main_address,
        }))


# ------------------------------------------------------------------ the sbatch template
def test_sbatch_template_is_valid_bash_with_the_launch_settings():
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    text = SBATCH.read_text()
    directives = dict(line[len("#SBATCH --"):].split("=", 1) if "=" in line else (line[len("#SBATCH --"):], "")
                      for line in text.splitlines() if line.startswith("#SBATCH --"))
    assert directives["signal"] == "SIGUSR1@600" and "requeue" in directives
    assert directives["gres"] == f"gpu:{directives['ntasks-per-node']}"  # one task per GPU
    assert {"nodes", "cpus-per-task"} <= set(directives)
    assert '--trainer.num_nodes="$SLURM_NNODES"' in text and '--trainer.devices="$SLURM_NTASKS_PER_NODE"' in text


def run_sbatch(tmp_path, *args, job_id="777"):
    """The template under bash, with an `srun` that records its arguments instead of launching."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    srun = fake_bin / "srun"
    srun.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    srun.chmod(0o755)
    env = {**slurm_env(ntasks=16, nnodes=2, per_node=8, job_id=job_id), "SLURM_SUBMIT_DIR": str(tmp_path),
           "PATH": f"{fake_bin}:{os.environ['PATH']}", "SRUN_ARGS": str(tmp_path / "srun_args")}
    res = subprocess.run(["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return (tmp_path / "srun_args").read_text().splitlines()


def test_sbatch_passes_the_allocation_and_resumes_from_the_newest_checkpoint(tmp_path):
    argv = run_sbatch(tmp_path, "configs/recipes/ares_7b_aepo.yaml", "--model.init_args.lr=5e-7")
    assert argv[:5] == ["--kill-on-bad-exit=1", "python", "-m", "ares_lit", "fit"]
    assert "--trainer.num_nodes=2" in argv and "--trainer.devices=8" in argv
    assert "--trainer.logger.init_args.version=slurm-777" in argv
    assert "--trainer.default_root_dir=runs/slurm/ares-777" in argv
    assert argv[-2:] == ["--ckpt_path=last", "--model.init_args.lr=5e-7"]  # first start: Lightning's "last"

    # Requeued after SIGUSR1: Lightning's newest hpc checkpoint (10 after 9, as numbers).
    run_dir = tmp_path / "runs" / "slurm" / "ares-777"
    last = tmp_path / "runs" / "ares_7b_aepo" / "slurm-777" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_text("x")
    time.sleep(0.05)
    for n in (9, 10):
        (run_dir / f"hpc_ckpt_{n}.ckpt").mkdir()  # DeepSpeed writes folders
        (run_dir / f"hpc_ckpt_{n}.ckpt" / "latest").write_text("checkpoint")
    assert "--ckpt_path=runs/slurm/ares-777/hpc_ckpt_10.ckpt" in run_sbatch(tmp_path, "c.yaml")

    # A node failure later: last.ckpt is newer than any hpc checkpoint, so Lightning's "last" wins.
    time.sleep(0.05)
    last.write_text("newer")
    assert "--ckpt_path=last" in run_sbatch(tmp_path, "c.yaml")


# ------------------------------------------------------------------ Lightning under a faked allocation
def test_trainer_takes_world_size_and_ranks_from_slurm(tmp_path):
    """Rank 1 of 2 (one task per node, two nodes): no process group is needed to read the layout."""
    script = (
        "import json, lightning.pytorch as pl\n"
        "from ares_lit.launch import check_slurm_layout, slurm_active\n"
        "t = pl.Trainer(accelerator='cpu', devices=1, num_nodes=2, strategy='ddp', logger=False)\n"
        "check_slurm_layout(t)\n"
        "env = t.strategy.cluster_environment\n"
        "print(json.dumps({'env': type(env).__name__, 'world': t.world_size, 'rank': t.global_rank,\n"
        "  'local': t.local_rank, 'node': t.node_rank, 'active': slurm_active(t), 'port': env.main_port}))\n"
    )
    env = {**slurm_env(ntasks=2, nnodes=2, per_node=1, procid=1, localid=0, nodeid=1, job_id="98765"),
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info == {"env": "SLURMEnvironment", "world": 2, "rank": 1, "local": 0, "node": 1, "active": True,
                    "port": 15000 + 8765}


def test_cli_fit_under_slurm(tmp_path):
    """A real two-step fit through `python -m ares_lit fit` as a one-task SLURM job."""
    probe = tmp_path / "probe.json"
    res = run_cli(tmp_path, "fit", "--model", "tests.cli_models.TinyRegression", "--data", "tests.cli_models.TinyData",
                  "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=ddp", "--trainer.max_steps=2",
                  "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                  "--trainer.callbacks+=tests.test_slurm.SlurmProbe", f"--trainer.callbacks.out_path={probe}",
                  env=slurm_env(ntasks=1, nnodes=1, per_node=1, job_id="31337"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=2` reached" in res.stderr
    assert json.loads(probe.read_text()) == {"environment": "SLURMEnvironment", "world_size": 1, "global_rank": 0,
                                             "local_rank": 0, "node_rank": 0, "main_port": 15000 + 1337,
                                             "main_address": "localhost"}


def test_cli_refuses_a_layout_mismatch_before_the_model_loads(tmp_path):
    started = time.perf_counter()
    res = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--trainer.accelerator=cpu",
                  "--trainer.devices=2", "--model.init_args.model_path=builtin:tiny-qwen2",
                  env=slurm_env(ntasks=1, nnodes=1, per_node=1), timeout=300)
    assert res.returncode != 0
    assert "error: the SLURM allocation does not match the Trainer" in res.stderr and "Traceback" not in res.stderr
    assert "trainer.devices=2 but SLURM starts 1 task(s) per node (--ntasks-per-node=1)" in res.stderr
    assert "1 x 2 = 2 processes, but SLURM launched SLURM_NTASKS=1 task(s)" in res.stderr
    assert "Loading weights" not in res.stderr + res.stdout and "curation" not in res.stdout
    assert time.perf_counter() - started < 120


# ------------------------------------------------------------------ the check itself
def fake_trainer(num_nodes: int, devices: int):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = SLURMEnvironment.__new__(SLURMEnvironment)  # without __init__'s own srun checks: ours are under test
    return SimpleNamespace(num_nodes=num_nodes, num_devices=devices, strategy=SimpleNamespace(cluster_environment=env))


@pytest.mark.parametrize(
    "nodes, devices, env, problems",
    [
        (2, 4, dict(ntasks=8, nnodes=2, per_node=4), []),
        (1, 4, dict(ntasks=8, nnodes=2, per_node=4), ["--trainer.num_nodes=2", "1 x 4 = 4 processes"]),
        (2, 8, dict(ntasks=8, nnodes=2, per_node=4), ["--trainer.devices=4", "2 x 8 = 16 processes"]),
        (2, 4, dict(ntasks=4, nnodes=2), ["2 x 4 = 8 processes, but SLURM launched SLURM_NTASKS=4"]),
        (1, 2, dict(ntasks=2, nnodes=1, per_node=2, job_name="interactive"), []),  # Lightning's opt-out
    ],
)
def test_layout_check(monkeypatch, nodes, devices, env, problems):
    for key in SLURM_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in slurm_env(**env).items():
        if key.startswith("SLURM_"):
            monkeypatch.setenv(key, value)
    trainer = fake_trainer(nodes, devices)
    if not problems:
        check_slurm_layout(trainer)
        return
    with pytest.raises(ValueError) as err:
        check_slurm_layout(trainer)
    for text in problems:
        assert text in str(err.value)


def test_layout_check_is_silent_without_slurm(monkeypatch):
    for key in SLURM_VARS:
        monkeypatch.delenv(key, raising=False)
    check_slurm_layout(SimpleNamespace(num_nodes=3, num_devices=5, strategy=SimpleNamespace()))
