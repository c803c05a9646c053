"""The ablation (issue #15): the four overlays differ only in their named switches, resolved by the
real CLI (`--print_config`), for the embedded default and the paper recipe; and
`python -m ares_lit.tools.ablate --quick` runs end to end through the real CLI (fits, evaluations,
ablation.json, the table and a PNG), and a second call reruns nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ares_lit.cli import main
from ares_lit.tools.ablate import ARMS, BASELINES, overlay_chain, rollout_settings

ROOT = Path(__file__).resolve().parents[2]
SWITCHES = {
    "dynamic_kl": {"DynamicKLCallback.rate", "DynamicKLCallback.rho"},
    "entropy_shaping": {"RolloutCallback.entropy_reward"},
    "aepo": {"RolloutCallback.branching"},
}


def _resolved(base: str, overlay: str, capsys) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(ROOT / base), "--config", str(ROOT / overlay), "--print_config"])
    assert exc.value.code in (0, None)
    out = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("[20"))
    return yaml.safe_load(out)


def _flat(node, prefix=""):
    """Dotted leaves; a callback's init_args are keyed by its class name (the list order is kept), and
    the `rollout:` group's by RolloutCallback."""
    if isinstance(node, dict) and not prefix and isinstance(node.get("rollout"), dict):
        node = dict(node)
        rollout = node.pop("rollout")
        return {**_flat(node), **_flat(rollout["init_args"], f"{rollout['class_path'].rsplit('.', 1)[-1]}.")}
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(node, list) and node and all(isinstance(c, dict) and "class_path" in c for c in node):
        out = {f"{prefix}order": [c["class_path"] for c in node]}
        for c in node:
            out.update(_flat(c.get("init_args") or {}, f"{c['class_path'].rsplit('.', 1)[-1]}."))
        return out
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("base,folder", [("configs/aepo.yaml", "configs/ablation"),
                                         ("configs/recipes/ares_7b_aepo.yaml", "configs/recipes/ablation")])  # fmt: skip
def test_arms_differ_only_in_their_switches(base, folder, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ares_lit"])
    flat = {a: _flat(_resolved(base, f"{folder}/{a}.yaml", capsys)) for a in ARMS}
    assert flat["grpo"]["RolloutCallback.entropy_reward"] is False
    assert flat["grpo"]["DynamicKLCallback.rate"] == 0.0 and flat["grpo"]["DynamicKLCallback.rho"] == 1.0
    assert flat["grpo"]["RolloutCallback.branching"] is None
    assert flat["aepo"]["RolloutCallback.branching.initial_n"] >= 1
    for prev, arm in zip(ARMS, ARMS[1:]):  # each arm adds exactly its switch to the one before
        diff = {k for k in flat[prev].keys() | flat[arm].keys() if flat[prev].get(k) != flat[arm].get(k)}
        diff = {k if not k.startswith("RolloutCallback.branching") else "RolloutCallback.branching" for k in diff}
        assert diff == SWITCHES[arm], (prev, arm, diff)
    # The entropy_shaping arm is the base config itself (the default is entropy shaping + dynamic KL).
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / base), "--print_config"])
    plain = _flat(yaml.safe_load("\n".join(x for x in capsys.readouterr().out.splitlines() if not x.startswith("[20"))))
    assert {k for k in plain.keys() | flat["entropy_shaping"].keys() if plain.get(k) != flat["entropy_shaping"].get(k)} == set()


# Each baseline (configs/baselines/<name>.yaml) is the `grpo` arm plus exactly these switches.
BASELINE_SWITCHES = {
    "clip_cov": {"model.init_args.policy_loss", "model.init_args.policy_loss_kwargs"},
    "kl_cov": {"model.init_args.policy_loss", "model.init_args.policy_loss_kwargs"},
    "forking_tokens": {"model.init_args.entropy_control"},
    "entropy_bonus": {"model.init_args.entropy_control"},
    "adaptive_entropy": {"model.init_args.entropy_control"},
    "overlong": {"RolloutCallback.length_reward"},
    "kimi_length": {"RolloutCallback.length_reward"},
    "shorter_better": {"RolloutCallback.length_reward"},
}


def test_baselines_differ_from_grpo_only_in_their_switches(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ares_lit"])
    assert sorted(p.stem for p in BASELINES.glob("*.yaml")) == sorted(BASELINE_SWITCHES)
    grpo = _flat(_resolved("configs/aepo.yaml", "configs/ablation/grpo.yaml", capsys))
    for name, switches in BASELINE_SWITCHES.items():
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(ROOT / "configs/aepo.yaml"), "--config", str(ROOT / "configs/ablation/grpo.yaml"),
                  "--config", str(BASELINES / f"{name}.yaml"), "--print_config"])  # fmt: skip
        assert exc.value.code in (0, None)
        out = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith("[20"))
        flat = _flat(yaml.safe_load(out))
        diff = {k for k in grpo.keys() | flat.keys() if grpo.get(k) != flat.get(k)}
        diff = {next((s for s in switches if k == s or k.startswith(s + ".")), k) for k in diff}
        assert diff == switches, (name, diff)
        # the ablation tool resolves the same chain: the grpo arm, then the baseline
        assert [p.name for p in overlay_chain(name, ROOT / "configs/ablation")] == ["grpo.yaml", f"{name}.yaml"]


def test_ares_preset_starts_every_arm_from_the_one_cold_start_model(tmp_path, capsys, monkeypatch):
    """The two-stage preset's resolved configs (the real CLI, --print_config): every RL arm and seed starts from
    the cold-start export, and the cold start itself starts from the base model on the chain pool."""
    from ares_lit.tools.ablate import main as ablate

    written = ablate(["--output_dir", str(tmp_path), "--dry_run"])["configs"]
    assert "dry run" in capsys.readouterr().out and not (tmp_path / "ablation.json").exists()
    cold, runs = Path(written[0]), [Path(p) for p in written[1:]]
    assert cold == tmp_path / "coldstart" / "config.yaml"
    seeds = {}
    for run in runs:
        seeds.setdefault(run.parts[-3], []).append(int(run.parts[-2].removeprefix("seed")))
    assert seeds == {"grpo": [0, 1, 2], "entropy_shaping": [0, 1], "aepo": [0, 1, 2], "forking_tokens": [0, 1], "kimi_length": [0, 1]}
    monkeypatch.setattr(sys, "argv", ["ares_lit"])
    starts = set()
    for path in runs:
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(path), "--print_config"])
        assert exc.value.code in (0, None)
        resolved = yaml.safe_load("\n".join(x for x in capsys.readouterr().out.splitlines() if not x.startswith("[20")))
        starts.add(resolved["model"]["init_args"]["model_path"])
        assert resolved["data"]["init_args"]["path"] == "builtin:chain"
    assert starts == {str(tmp_path / "coldstart" / "hf_model")}
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(cold), "--print_config"])
    resolved = yaml.safe_load("\n".join(x for x in capsys.readouterr().out.splitlines() if not x.startswith("[20")))
    assert resolved["model"]["init_args"]["export_dir"] == str(tmp_path / "coldstart" / "hf_model")
    assert resolved["data"]["init_args"]["path"] == "builtin:chain"


def _ablate(args: list[str], tmp_path: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ares_lit.tools.ablate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_quick_two_stage_ablation_writes_json_table_and_figures_and_resumes(tmp_path):
    """`--quick` on the ares preset: the cold start (AdaCS on the chain pool) once, then two arms from its export
    (1 step each, tiny model), every evaluation, the gate, the report; a second call reruns nothing."""
    out = tmp_path / "abl"
    args = ["--quick", "--output_dir", str(out), "--arms", "grpo,aepo"]
    res = _ablate(args, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["arms"]) == ["grpo", "aepo"] and result["seeds"] == {"grpo": [0], "aepo": [0]}
    cold = json.loads((out / "coldstart" / "DONE").read_text())
    assert cold["seconds"] > 0 and len(cold["model_sha256"]) == 64
    assert set(result["models"]) == {"base", "coldstart"} and result["start"] == result["models"]["coldstart"]
    for model in result["models"].values():
        assert {"easy", "medium", "hard"} <= set(model) and model["all"]["length"] > 0
    assert isinstance(result["coldstart"]["gate"]["passed"], bool) and len(result["coldstart"]["gate"]["checks"]) == 3
    targets = [result["coldstart"]["curation"][lv]["L_target"] for lv in ("easy", "medium", "hard")]
    assert targets == sorted(targets) and targets[0] < targets[-1]  # AdaCS: L_target(p) rises with difficulty
    for arm in ("grpo", "aepo"):
        (seed,) = result["arms"][arm]["seeds"]
        assert seed["start_model_sha256"] == cold["model_sha256"]  # byte for byte the cold-start model
        assert seed["fit_seconds"] > 0 and 0.0 <= seed["eval"]["all"]["accuracy"] <= 1.0
        assert any(t.endswith("/response_length") for t in seed["curves"])  # read back from TensorBoard
        cfg = yaml.safe_load((out / "runs" / arm / "seed0" / "config.yaml").read_text())
        assert rollout_settings(cfg)["seed"] == 0 and cfg["trainer"]["max_steps"] == 1
        assert cfg["model"]["init_args"]["model_path"] == str(out / "coldstart" / "hf_model")
        assert (out / "runs" / arm / "seed0" / "hf_model" / "config.json").exists()
    table = (out / "ablation.md").read_text()
    assert "AdaCS curation by level" in table and "Cold-start gate" in table and "Claims of the paper" in table
    for png in ("ablation.png", "ares_length.png", "ares_accuracy.png", "ares_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert all(f"| {name} | 0 | 0.50 |" in table for name in ("grpo", "aepo")), table
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call finds every fit and evaluation done: nothing is retrained or re-sampled.
    logs = {p: p.stat().st_mtime for p in out.rglob("*.log")}
    res = _ablate(args, tmp_path, timeout=600)
    assert res.returncode == 0 and "[ablate] fit" not in res.stdout and "[ablate] evaluate" not in res.stdout
    assert "[ablate] cold start" not in res.stdout
    assert {p: p.stat().st_mtime for p in out.rglob("*.log")} == logs


@pytest.mark.slow
def test_quick_one_stage_ablation_still_runs_under_its_own_name(tmp_path):
    """The issue #15 setting (`--preset one_stage`): RL from the start model on builtin:math, four arms, no cold start."""
    out = tmp_path / "abl"
    res = _ablate(["--quick", "--preset", "one_stage", "--output_dir", str(out)], tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["arms"]) == list(ARMS) and result["seeds"] == {a: [0] for a in ARMS}
    assert "models" not in result and "coldstart" not in result and not (out / "coldstart").exists()
    assert 0.0 <= result["start"]["all"]["accuracy"] <= 1.0 and result["start"]["all"]["length"] > 0
    for arm in ARMS:
        cfg = yaml.safe_load((out / "runs" / arm / "seed0" / "config.yaml").read_text())
        assert cfg["data"]["init_args"]["path"] == "builtin:math" and cfg["trainer"]["max_steps"] == 1
    table = (out / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in ("start", *ARMS))
    assert all(f"| {name} | 0 | 0.50 |" in table for name in ARMS), table
