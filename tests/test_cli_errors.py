"""Errors of `python -m ares_lit` in one line, early (issue #22 item 4; ares_lit/cli_errors.py).

Every case runs the real LightningCLI (ares_lit.cli.main) in-process and asserts the message and
that what it printed is at most 5 lines; one case runs the real `python -m ares_lit` subprocess.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ares_lit.cli import main
from ares_lit.cli_errors import describe_parse_error, did_you_mean

ROOT = Path(__file__).resolve().parents[1]
AEPO = str(ROOT / "configs/aepo.yaml")
TINY = ["--model", "tests.cli_models.TinyRegression", "--data", "tests.cli_models.TinyData",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]  # fmt: skip


def _fails(capsys, *args) -> str:
    """The CLI's stderr for `args`, which must exit with status 2 in at most 5 lines and no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    text = "\n".join(line for line in (out.out + out.err).splitlines() if not line.startswith("[20"))
    assert exc.value.code == 2, text
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 5, text
    return text


@pytest.fixture(autouse=True)
def _argv(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["ares_lit"])  # pytest's own arguments are not the CLI's
    monkeypatch.chdir(tmp_path)


def test_a_constructor_error_is_one_line_naming_field_and_value(capsys):
    text = _fails(capsys, "fit", "--config", AEPO, "--data.init_args.batch_size=-4")
    assert "error: data.batch_size must be >= 1; got -4" in text and "--debug" in text


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("--trainer.max_stepz=1", "unknown option --trainer.max_stepz; did you mean --trainer.max_steps?"),
        ("--trainer.max_step=1", "did you mean --trainer.max_steps?"),  # no silent prefix match
        ("--model.init_args.lrr=1", "unknown key 'lrr' in model (ares_lit.modules.aepo.AEPOModule); did you mean 'lr'?"),
        ("--rollout.temprature=1.0", "unknown key 'temprature' in rollout (callbacks.rollout.RolloutCallback); did you mean 'temperature'?"),
        ("--trainer.max_steps=abc", "trainer.max_steps: expected int, got 'abc'"),
    ],
)
def test_a_bad_key_or_value_on_the_command_line(capsys, arg, expected):
    assert expected in _fails(capsys, "fit", "--config", AEPO, arg, "--print_config")


def test_a_misspelled_key_in_yaml_gets_a_suggestion(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 3\n")
    text = _fails(capsys, "fit", "--config", AEPO, "--config", str(bad), "--print_config")
    assert "unknown key 'max_stepz' in trainer; did you mean 'max_steps'?" in text


def test_rollout_settings_in_two_places_say_what_to_move(capsys, tmp_path):
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("trainer:\n  callbacks:\n    - class_path: callbacks.rollout.RolloutCallback\n      init_args: {n: 2}\n")
    text = _fails(capsys, "fit", "--config", AEPO, "--config", str(legacy))
    assert "given twice" in text and "Move the callback's init_args to `rollout:`" in text


def test_rollout_settings_on_a_stage_without_rollouts(capsys):
    text = _fails(capsys, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--rollout.n=8")
    assert "rollout settings apply to the AEPO stage only" in text


def test_a_failed_start_leaves_no_version_folder_and_a_failed_run_keeps_it(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, "--model.init_args.fail_at=fit_start"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: model.fail_at: failing at fit start as asked" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # SaveConfigCallback had made runs/lightning_logs/version_0
    # A failure after the first step is a crash, not a config error: traceback, and the run's folder stays.
    with pytest.raises(ValueError, match="failing at step 2"):
        main(["fit", *TINY, "--model.init_args.fail_at=step2"])
    assert [p.name for p in (tmp_path / "runs").rglob("version_*")] == ["version_0"]


def test_debug_shows_the_exception(capsys):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        main(["fit", "--config", AEPO, "--data.init_args.batch_size=-4", "--debug"])


def test_suggestions():
    assert did_you_mean("max_stepz", ["max_steps", "max_epochs"]) == "; did you mean 'max_steps'?"
    assert did_you_mean("zzz", ["max_steps"]) == ""
    nested = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
        "    - Problem with given class_path 'ares_lit.modules.validation.ValidationSettings':\n"
        "        Option 'nn' is not accepted\n    - Expected a <class 'NoneType'>\n"
    )
    assert describe_parse_error(nested) == (
        "unknown key 'nn' in model (ares_lit.modules.validation.ValidationSettings); did you mean 'n'?")


def test_the_real_command_prints_at_most_5_lines(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "ares_lit", "fit", "--config", AEPO, "--data.init_args.batch_size=-4"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    text = (res.stdout + res.stderr).strip()
    assert res.returncode == 2 and len(text.splitlines()) <= 5, text
    assert "data.batch_size must be >= 1; got -4" in text and "Traceback" not in text
    assert time.perf_counter() - start < 120 and not (tmp_path / "runs").exists()


def test_a_config_listing_the_rollout_callback_under_trainer_callbacks_still_runs(tmp_path):
    """The layout before `rollout:` existed: the callback in trainer.callbacks, no `rollout:`.
    The Trainer gets exactly that callback, once, with its settings."""
    from callbacks.rollout import RolloutCallback

    base = yaml.safe_load(Path(AEPO).read_text())
    rollout = base.pop("rollout")
    base["trainer"]["callbacks"].insert(0, {"class_path": "callbacks.rollout.RolloutCallback", "init_args": {**rollout, "n": 2}})
    base["model"]["init_args"]["model_path"] = "builtin:tiny-qwen2"
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(yaml.safe_dump(base))
    cli = main(["--config", str(legacy), "--trainer.enable_progress_bar=false"], run=False)
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, RolloutCallback)]
    assert found.config.n == 2 and found.answer_fallback == "last_number"
    # and the new layout puts it first in the list, once
    cli = main(["--config", AEPO, "--model.init_args.model_path=builtin:tiny-qwen2", "--rollout.n=3",
                "--trainer.enable_progress_bar=false"], run=False)  # fmt: skip
    assert isinstance(cli.trainer.callbacks[0], RolloutCallback) and cli.trainer.callbacks[0].config.n == 3
    assert sum(isinstance(c, RolloutCallback) for c in cli.trainer.callbacks) == 1


def test_a_model_path_that_is_not_a_model_folder_fails_before_any_tokenizer(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    text = _fails(capsys, "fit", "--config", AEPO, f"--model.init_args.model_path={tmp_path / 'empty'}")
    assert "is not a model folder: has no config.json (it is empty)" in text and "builtin:tiny-qwen2" in text
    assert "sentencepiece" not in text and not (tmp_path / "runs").exists()
