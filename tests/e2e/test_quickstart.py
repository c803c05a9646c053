"""The README's quick start, run as written on the tiny model (issue #22).

Every `python -m ares_lit ...` command of the README's "One-minute smoke test" and "The embedded
default" sections runs through the real CLI in a fresh folder, in order, with small overlays that
put the tiny random model and small sizes in (inserted after the command's own `--config`s, so the
command's explicit overrides still win). The smoke test also gets `--rollout.n=2`, and the test
reads it back from the run's saved config and its TensorBoard samples count. Replaces nothing in
the README: if a command there changes, this test runs the new one.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("## One-minute smoke test", "## The embedded default")

COLDSTART_TINY = """
trainer: {enable_progress_bar: false, num_sanity_val_steps: 0}
model:
  init_args:
    model_path: builtin:tiny-qwen2
    validation: {n: 2, max_tokens: 8}
data:
  init_args: {builtin_size: 48, size: 8, batch_size: 4, max_length: 256, val_size: 3}
"""
AEPO_TINY = ["--trainer.logger.init_args.name=aepo", "--trainer.enable_progress_bar=false", "--trainer.max_steps=1",
             "--trainer.val_check_interval=1"]  # fmt: skip


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for heading in SECTIONS:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        body = text[start:end if end > 0 else None]
        for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                if re.match(r"(\.venv/bin/)?python -m ares_lit", line):
                    commands.append(shlex.split(line)[1:])  # without the interpreter
    return commands


def _tiny(args: list[str], work: Path) -> list[str]:
    """The command with the tiny overlays inserted after its last `--config FILE`."""
    configs = [i for i, a in enumerate(args) if a == "--config"]
    if args[:2] == ["-m", "ares_lit.evaluate"]:
        return args + ["--limit", "1", "--n", "2", "--max_tokens", "8", "--engine", "hf", "--no_progress"]
    assert args[:3] == ["-m", "ares_lit", "fit"] and configs, args
    cut = configs[-1] + 2
    names = {Path(args[i + 1]).name for i in configs}
    if "coldstart.yaml" in names:
        overlay = work / "coldstart_tiny.yaml"
        overlay.write_text(COLDSTART_TINY)
        extra = ["--config", str(overlay)]
    elif "smoke.yaml" in names:
        extra = ["--rollout.n=2", "--trainer.enable_progress_bar=false"]
    else:
        extra = ["--config", "configs/smoke.yaml", *AEPO_TINY]
    return args[:cut] + extra + args[cut:]


def test_every_quick_start_command_runs_on_the_tiny_model(tmp_path):
    commands = readme_commands()
    kinds = [(c[1], next((a for a in c if a.endswith(".yaml")), "")) for c in commands]
    assert ("ares_lit", "configs/coldstart.yaml") in kinds and ("ares_lit.evaluate", "") in kinds, kinds
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}  # fmt: skip
    for args in commands:
        cmd = [sys.executable, *_tiny(args, tmp_path)]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{shlex.join(args)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"

    # The smoke test used the command line's rollout.n = 2: saved in its config, and 2 samples per prompt.
    smoke = tmp_path / "runs" / "smoke" / "version_0"
    saved = yaml.safe_load((smoke / "config.yaml").read_text())
    assert saved["rollout"]["init_args"]["n"] == 2 and saved["rollout"]["init_args"]["engine"] == "hf"
    acc = EventAccumulator(str(smoke), size_guidance={"scalars": 0})
    acc.Reload()
    batch = saved["data"]["init_args"]["batch_size"]
    samples = [e.value for e in acc.Scalars("rollout/num_samples")]
    assert samples and all(0 < s <= 2 * batch for s in samples), samples  # with n = 4 a step has 4 x batch
    assert len(acc.Scalars("train/pg_loss")) == 2 and "val/overall/avg_at_n" in acc.Tags()["scalars"]
    assert saved["trainer"]["num_sanity_val_steps"] == 0

    # The chain: the cold-start export is the AEPO run's model, whose export evaluate takes with --like_run.
    assert (tmp_path / "runs" / "coldstart" / "hf_model" / "config.json").exists()
    aepo = tmp_path / "runs" / "aepo" / "version_0"
    assert yaml.safe_load((aepo / "config.yaml").read_text())["model"]["init_args"]["model_path"] == "runs/coldstart/hf_model"
    assert (aepo / "hf_model" / "config.json").exists()
    metrics = json.loads((tmp_path / "runs" / "eval" / "aepo" / "metrics.json").read_text())
    assert (tmp_path / metrics["model_path"]).resolve() == (aepo / "hf_model").resolve(), metrics["model_path"]
    assert 0.0 <= metrics["overall"]["avg_at_n"] <= 1.0
