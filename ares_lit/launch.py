"""Launch checks run by the CLI before fit: a SLURM layout that matches the Trainer, and DeepSpeed settings.

Under SLURM, `srun` starts one process per task and Lightning's `SLURMEnvironment` reads world
size and ranks from SLURM's variables, so the Trainer's `num_nodes × devices` must equal the
number of tasks. A mismatch does not fail cleanly: extra tasks train alone on the same files,
or the first collective waits forever for ranks that were never started. Lightning checks part
of this, and only later, once fit has started; `check_slurm_layout` checks all of it, before
any model is loaded, and says which flag to change (`configs/slurm/ares.sbatch` sets both from
SLURM's variables).
"""

from __future__ import annotations

import os
import re

import lightning.pytorch as pl

__all__ = ["check_slurm_layout", "fill_deepspeed_batch_size", "prepare_launch", "slurm_active"]


def _slurm_int(name: str) -> int | None:
    """An integer SLURM variable; "4(x2)" forms (as in SLURM_TASKS_PER_NODE) give their first count."""
    value = os.environ.get(name)
    if value is None:
        return None
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else None


def slurm_active(trainer: pl.Trainer) -> bool:
    """True when Lightning takes world size and ranks from SLURM for this Trainer.

    Mirrors Lightning's own detection: SLURM_NTASKS is set, the job is not named "bash" or
    "interactive" (Lightning's opt-out), torchrun's variables do not take precedence, and a
    cluster environment passed explicitly to the strategy is a `SLURMEnvironment`.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return False
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is not None:
        return isinstance(env, SLURMEnvironment) and "SLURM_NTASKS" in os.environ
    return SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()


def check_slurm_layout(trainer: pl.Trainer) -> None:
    """Raise ValueError when the Trainer's processes do not match the SLURM allocation.

    Checked (each only when SLURM sets the variable): `trainer.num_nodes` == SLURM_NNODES,
    `trainer.devices` == SLURM_NTASKS_PER_NODE, and `num_nodes × devices` == SLURM_NTASKS.
    """
    if not slurm_active(trainer):
        return
    ntasks = _slurm_int("SLURM_NTASKS")
    nnodes = _slurm_int("SLURM_NNODES") or _slurm_int("SLURM_JOB_NUM_NODES")
    per_node = _slurm_int("SLURM_NTASKS_PER_NODE")
    num_nodes, devices = trainer.num_nodes, trainer.num_devices
    problems = []
    if nnodes is not None and num_nodes != nnodes:
        problems.append(
            f"trainer.num_nodes={num_nodes} but SLURM allocated {nnodes} node(s): pass --trainer.num_nodes={nnodes} "
            "(the sbatch template passes $SLURM_NNODES)"
        )
    if per_node is not None and devices != per_node:
        problems.append(
            f"trainer.devices={devices} but SLURM starts {per_node} task(s) per node (--ntasks-per-node={per_node}); "
            f"Lightning needs one task per device: pass --trainer.devices={per_node}, or set "
            f"#SBATCH --ntasks-per-node={devices} and --gres=gpu:{devices}"
        )
    if ntasks is not None and num_nodes * devices != ntasks:
        problems.append(
            f"trainer.num_nodes x trainer.devices = {num_nodes} x {devices} = {num_nodes * devices} processes, but "
            f"SLURM launched SLURM_NTASKS={ntasks} task(s): set #SBATCH --nodes and --ntasks-per-node so that their "
            f"product is {num_nodes * devices}, or pass --trainer.num_nodes=$SLURM_NNODES "
            "--trainer.devices=$SLURM_NTASKS_PER_NODE"
        )
    if problems:
        raise ValueError(
            "the SLURM allocation does not match the Trainer:\n  - "
            + "\n  - ".join(problems)
            + "\n(to run without SLURM's layout inside an allocation, name the job 'interactive': srun --job-name=interactive)"
        )


def fill_deepspeed_batch_size(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None = None) -> None:
    """Give DeepSpeed a `train_micro_batch_size_per_gpu` when the config has none.

    Lightning otherwise reads it from `train_dataloader().batch_sampler.batch_size`, which our
    DataModules do not have (their samplers yield whole batches, so `batch_size=None`): that read
    fails with an AttributeError. DeepSpeed uses the value for its throughput log only; we give
    it the DataModule's `batch_size` (1 when there is none). `trainer.strategy.init_args.
    logging_batch_size_per_gpu` still sets it explicitly.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, DeepSpeedStrategy) or not isinstance(strategy.config, dict):
        return
    if "train_micro_batch_size_per_gpu" not in strategy.config:
        batch_size = getattr(getattr(datamodule, "hparams", None), "batch_size", None)
        strategy.config["train_micro_batch_size_per_gpu"] = int(batch_size) if batch_size else 1


def prepare_launch(trainer: pl.Trainer, datamodule: pl.LightningDataModule | None = None) -> None:
    """Everything the CLI checks or sets before fit/validate/test/predict starts (nothing expensive)."""
    check_slurm_layout(trainer)
    fill_deepspeed_batch_size(trainer, datamodule)
