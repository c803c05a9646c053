"""Resume under DDP restores every rank's own data position (issue 12, item 6).

Lightning writes only rank 0's `LightningDataModule.state_dict()` into the checkpoint, but each rank
has its own refill stream (seeded by rank) and its own sampler position. A 2-process run of 3 steps
must equal a 2-step run + `fit --ckpt_path last.ckpt` + 1 step on BOTH ranks: policy weights,
tracker, τ, κ, data position and refill position. The reward gives rank 1 no signal at all, so
rank 1 refills (max_refill_tries) every step and its refill stream moves while rank 0's does not:
restoring rank 0's position on rank 1 would show.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.e2e.ddp_state_dump import _plain
from tests.e2e.test_ddp_cli import ROOT, read_lines
from data_modules.base import PolicyDataModule
from tests.e2e.aepo_overlay import write_overlay

RANK_REWARD = '''
import os

def parity_on_rank0(responses, answers):
    # Rank 1 gets no signal: all its groups are dropped and refilled, every step.
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return [0.0 for _ in responses]
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
'''


class RankStateDump(pl.Callback):
    """Appends, per step, this rank's full resumable state to `<out_dir>/rank{r}.jsonl`."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        from callbacks.dynamic_kl import DynamicKLCallback
        from callbacks.rollout import RolloutCallback

        dm = trainer.datamodule
        rollout_cb = next(c for c in trainer.callbacks if isinstance(c, RolloutCallback))
        kl_cb = next(c for c in trainer.callbacks if isinstance(c, DynamicKLCallback))
        weights = {k: v.detach().float().cpu() for k, v in pl_module.state_dict().items()}
        line = {
            "step": trainer.global_step,
            "batch_ids": [p["id"] for p in batch["prompts"]],
            "position": dm._position_state(),
            "refill": dict(dm._refill),
            "tracker": _plain(dm.tracker.state_dict()),
            "hwe": _plain(rollout_cb.hwe.state_dict()),
            "kappa": _plain(kl_cb.controller.kappa),
            "weights": {k: [float(v.sum()), float(v.abs().sum())] for k, v in weights.items()},
            "weights_sha": hashlib.sha256(b"".join(v.numpy().tobytes() for v in weights.values())).hexdigest(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with (self.out_dir / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def fit_two_ranks(tmp: Path, overlay: Path, *extra: str) -> None:
    """`python -m ares_lit fit` with 2 DDP processes on the CPU (gloo), as tests/e2e/test_ddp_cli.py."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp.parent.parent / "ares_cache")}
    cmd = [
        sys.executable, "-m", "ares_lit", "fit",
        "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(overlay),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", *extra,
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]


def _overlay(tmp: Path, steps: int) -> Path:
    dump = (
        "    - class_path: tests.e2e.test_ddp_resume.RankStateDump\n"
        f"      init_args: {{out_dir: {tmp / 'state'}}}"
    )
    overlay = write_overlay(tmp, "hf", steps=steps, extra_callbacks=dump)
    reward = tmp / "rank_reward.py"
    reward.write_text(RANK_REWARD)
    overlay.write_text(overlay.read_text().replace(f"{tmp / 'reward.py'}:parity", f"{reward}:parity_on_rank0"))
    return overlay


def _close(a, b, path):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (path, a, b)
    else:
        assert a == b, (path, a, b)


class _DM(PolicyDataModule):
    """The state layout of PromptDataModule without its data: a global tracker and rank-local positions."""

    def __init__(self, world=(1, 0)) -> None:
        super().__init__()
        self._refill = {"cycle": 0, "pos": 0}
        self._fake_world = world

    def _world(self):
        return self._fake_world

    def state_dict(self):
        return {"tracker": {"t": 1}, **self._position_state(), "refill": dict(self._refill)}

    def load_state_dict(self, state_dict):
        self.loaded = state_dict
        self._load_position(state_dict)
        self._refill = dict(state_dict["refill"])


def test_state_holds_per_rank_positions_and_loads_own_rank(caplog):
    dm = _DM()
    dm._refill, dm._position = {"cycle": 2, "pos": 3}, {"epoch": 1, "consumed": 4}
    state = dm.state_dict()
    assert state["per_rank"] == [{"epoch": 1, "consumed": 4, "refill": {"cycle": 2, "pos": 3}}]
    assert state["refill"] == {"cycle": 2, "pos": 3} and state["tracker"] == {"t": 1}  # old keys kept

    two = {**state, "per_rank": [state["per_rank"][0], {"epoch": 1, "consumed": 4, "refill": {"cycle": 5, "pos": 1}}]}
    rank1 = _DM(world=(2, 1))
    rank1.load_state_dict(two)
    assert rank1._refill == {"cycle": 5, "pos": 1} and "per_rank" not in rank1.loaded
    rank0 = _DM(world=(2, 0))
    rank0.load_state_dict(two)
    assert rank0._refill == {"cycle": 2, "pos": 3}

    caplog.clear()
    other_world = _DM(world=(4, 3))  # another world size: rank 0's values, with a warning
    other_world.load_state_dict(two)
    assert other_world._refill == {"cycle": 2, "pos": 3} and "ranks" in caplog.text
    caplog.clear()
    old = _DM(world=(2, 1))  # a checkpoint from before per-rank positions
    old.load_state_dict({k: v for k, v in state.items() if k != "per_rank"})
    assert old._refill == {"cycle": 2, "pos": 3} and "rank 0" in caplog.text


@pytest.mark.slow
def test_ddp_resume_restores_every_ranks_position(tmp_path, monkeypatch):
    # Build the tiny model once here: two ranks building it at once into a fresh cache can race.
    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path.parent / "ares_cache"))
    from ares_lit.models.resolve import resolve_model_path

    resolve_model_path("builtin:tiny-qwen2")
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    for d in (straight, first, resumed):
        d.mkdir()
    fit_two_ranks(straight, _overlay(straight, 3))
    fit_two_ranks(first, _overlay(first, 2))
    fit_two_ranks(resumed, _overlay(resumed, 3), "--ckpt_path", str(first / "ckpt" / "last.ckpt"))

    for rank in (0, 1):
        a = read_lines(straight / "state" / f"rank{rank}.jsonl")
        b = read_lines(resumed / "state" / f"rank{rank}.jsonl")
        assert [s["step"] for s in a] == [1, 2, 3] and [s["step"] for s in b] == [3]
        a3, b3 = a[-1], b[-1]
        for key in ("batch_ids", "position", "refill", "tracker", "hwe", "kappa", "weights"):
            _close(a3[key], b3[key], f"rank{rank}.{key}")
    # rank 1 refilled: its stream advanced beyond rank 0's
    assert read_lines(straight / "state" / "rank1.jsonl")[-1]["refill"] != read_lines(
        straight / "state" / "rank0.jsonl"
    )[-1]["refill"]
    # the checkpoint holds both ranks' positions
    ckpt = torch.load(first / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    per_rank = ckpt["PromptDataModule"]["per_rank"]
    assert len(per_rank) == 2 and per_rank[0]["refill"] != per_rank[1]["refill"]  # refills differ per rank
