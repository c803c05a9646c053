"""`python -m ares_lit.evaluate --like_run DIR`: evaluating as a training run validated.

Run folders are made by hand here, in the shape LightningCLI leaves them (`config.yaml` with the
`model` and `data` blocks of the embedded configs, completed as SaveConfigCallback writes them, and
the export in `hf_model/`). The evaluations run in-process on the tiny random model with the hf
engine and the real grader.
"""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from ares_lit.evaluate import _parser, main, parse_args
from ares_lit.evaluation.like_run import DEFAULTS, VALIDATION_KEYS
from ares_lit.evaluation.sources import load_problems, parse_source
from ares_lit.modules.validation import ValidationSettings
from tests.strategies import ROOT

# The run's validation: every value differs from evaluate's defaults, so each one shows where it came from.
VALIDATION = {"n": 2, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "max_tokens": 12, "seed": 3,
              "answer_fallback": "none", "grade_timeout": 4.0, "k": None}  # fmt: skip


def _embedded(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def _write_run(folder: Path, base: str = "aepo.yaml", validation: dict | None = VALIDATION, **data) -> Path:
    config = _embedded(base)
    config["trainer"]["logger"]["init_args"].update(version=None, sub_dir=None)  # as LightningCLI completes it
    if validation is None:
        config["model"]["init_args"].pop("validation")
    else:
        config["model"]["init_args"]["validation"] = dict(validation)
    config["model"]["init_args"].setdefault("export_dir", None)
    config["data"]["init_args"].update(data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ares_lit.models.resolve import resolve_model_path

    return Path(resolve_model_path("builtin:tiny-qwen2"))


@pytest.fixture
def run(tmp_path, tiny):
    folder = _write_run(tmp_path / "runs" / "aepo" / "version_0", val_size=3)
    shutil.copytree(tiny, folder / "hf_model")
    return folder


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_like_run_evaluates_as_the_run_validated_and_a_flag_wins(run, tmp_path, capsys):
    out = tmp_path / "eval"
    main(["--like_run", str(run), "--engine", "hf", "--output_dir", str(out), "--no_progress"])
    header = capsys.readouterr().out
    config = _metrics(out)["config"]
    for key in ("n", "temperature", "top_p", "top_k", "max_tokens", "seed", "answer_fallback", "grade_timeout"):
        assert config[key] == VALIDATION[key] and config["sources"][key] == "run", key
    assert config["like_run"] == str(run) and config["model_path"] == str(run / "hf_model")
    assert config["limit"] == 3 and config["max_prompt_length"] == 256 and config["k"] == [1, 2]
    assert [d["path"] for d in config["data"]] == ["builtin:math:test"]
    assert config["sources"]["data"] == config["sources"]["model_path"] == "run"
    assert config["sources"]["batch_size"] == "default" and config["sources"]["engine"] == "command line"
    rows = _rows(out)
    assert len(rows) == 3 * 2 and max(r["n_tokens"] for r in rows) == 12  # the run's max_tokens, reached
    assert [r["seed"] for r in rows] == [3 + i for i in range(6)]  # the run's seed: seed + p·n + j
    header = header.replace("\n  ", " ")
    assert f"model_path={run / 'hf_model'} (run {run})" in header and "data=builtin:math:test (run)" in header
    assert "temperature=0.5 (run)" in header and "max_tokens=12 (run)" in header and "batch_size" not in header

    # A command-line flag wins over the run; the rest still comes from the run.
    capsys.readouterr()
    other = tmp_path / "eval_short"
    main(["--like_run", str(run), "--engine", "hf", "--output_dir", str(other), "--no_progress",
          "--max_tokens", "5", "--temperature", "1.0", "--limit", "2"])  # fmt: skip
    header = capsys.readouterr().out.replace("\n  ", " ")
    config = _metrics(other)["config"]
    assert (config["max_tokens"], config["temperature"], config["limit"]) == (5, 1.0, 2)
    assert {config["sources"][k] for k in ("max_tokens", "temperature", "limit")} == {"command line"}
    assert config["top_p"] == 0.9 and config["sources"]["top_p"] == "run"
    assert all(r["n_tokens"] <= 5 for r in _rows(other)) and len(_rows(other)) == 2 * 2
    assert "max_tokens=5 (command line)" in header and "temperature=1.0 (command line)" in header

    # The run's export as --model_path implies the run: same settings, so the first folder resumes.
    samples = (out / "samples.jsonl").read_text()
    main(["--model_path", str(run / "hf_model"), "--engine", "hf", "--output_dir", str(out), "--no_progress"])
    resumed = _metrics(out)
    assert (out / "samples.jsonl").read_text() == samples and " samples (" not in capsys.readouterr().out
    assert resumed["config"]["sources"]["model_path"] == "command line" and resumed["config"]["temperature"] == 0.5
    assert Path(resumed["config"]["like_run"]).resolve() == run.resolve()


def test_a_model_inside_a_run_folder_takes_its_settings_unless_no_like_run(run, tmp_path):
    base = ["--output_dir", str(tmp_path / "o")]
    args = parse_args(["--model_path", str(run / "hf_model"), *base])
    assert Path(args.like_run).resolve() == run.resolve()
    assert {k: getattr(args, k) for k in VALIDATION if k != "k"} == {k: v for k, v in VALIDATION.items() if k != "k"}
    assert args.limit == 3 and args.sources["temperature"] == "run" and args.sources["model_path"] == "command line"

    (run / "checkpoints" / "huggingface").mkdir(parents=True)  # python -m ares_lit.export --local_dir <run>/checkpoints
    args = parse_args(["--model_path", str(run / "checkpoints" / "huggingface"), *base])
    assert Path(args.like_run).resolve() == run.resolve() and args.max_tokens == 12

    export = tmp_path / "exports" / "step5"  # python -m ares_lit.export --output_dir anywhere: ares_export.json names the run
    export.mkdir(parents=True)
    (export / "ares_export.json").write_text(json.dumps({"what": "policy", "log_dir": str(run), "global_step": 5}))
    args = parse_args(["--model_path", str(export), *base])
    assert args.like_run == str(run) and args.temperature == 0.5 and args.model_path == str(export)

    args = parse_args(["--model_path", str(run / "hf_model"), "--no_like_run", "--data", "builtin:math", *base])
    assert args.like_run is None and set(args.sources.values()) <= {"default", "command line"}
    defaults = _parser().parse_args(["--output_dir", "x"])
    assert {k: getattr(args, k) for k in VALIDATION_KEYS} == {k: getattr(defaults, k) for k in VALIDATION_KEYS}
    assert (args.limit, args.max_prompt_length) == (0, 1024)

    # --data given: the run's sampling still applies, its held-out limits do not.
    args = parse_args(["--like_run", str(run), "--data", "builtin:math", *base])
    assert args.max_tokens == 12 and (args.limit, args.max_prompt_length, args.model_path) == (0, 1024, str(run / "hf_model"))


@pytest.mark.parametrize("case", ["no_config", "no_folder", "no_export", "no_held_out"])
def test_a_bad_run_folder_is_one_line_and_exit_2(tmp_path, capsys, case):
    folder = tmp_path / "runs" / "aepo" / "version_0"
    if case == "no_config":
        folder.mkdir(parents=True)
    elif case != "no_folder":
        _write_run(folder, **({"val_path": None, "val_size": 0} if case == "no_held_out" else {}))
    extra = ["--model_path", "builtin:tiny-qwen2"] if case == "no_held_out" else []
    with pytest.raises(SystemExit) as exc:
        main(["--like_run", str(folder), *extra, "--output_dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    line = err.splitlines()[-1]
    assert "Traceback" not in err and line.startswith(f"python -m ares_lit.evaluate: error: --like_run {folder}"), err
    expected = {
        "no_config": "has no config.yaml",
        "no_folder": "no such folder",
        "no_export": f"expected {folder / 'hf_model'} (written at the end of fit) or {folder / 'huggingface'}; make one "
                     f"from its checkpoint with `python -m ares_lit.export --local_dir {folder}`",
        "no_held_out": "no held-out data (data.init_args.val_path and val_size are unset); pass --data",
    }[case]  # fmt: skip
    assert expected in line, err
    assert not (tmp_path / "o").exists()


def test_plain_defaults_are_the_validation_settings_of_the_embedded_configs():
    defaults = _parser().parse_args(["--output_dir", "x"])
    for name in ("aepo.yaml", "coldstart.yaml", "aepo_branching.yaml"):
        block = _embedded(name)["model"]["init_args"]["validation"]
        for key in ("temperature", "top_p", "max_tokens", "answer_fallback"):
            assert getattr(defaults, key) == block[key], (name, key)
    assert defaults.n == _embedded("aepo.yaml")["model"]["init_args"]["validation"]["n"]
    # What the embedded blocks leave out is ValidationSettings' own.
    dataclass = ValidationSettings()
    for key in ("top_k", "seed", "grade_timeout", "k"):
        assert getattr(defaults, key) == getattr(dataclass, key) == DEFAULTS[key], key


def test_a_run_without_a_validation_block_validated_with_the_dataclass_defaults(tmp_path, tiny):
    folder = _write_run(tmp_path / "run", validation=None)
    args = parse_args(["--like_run", str(folder), "--model_path", str(tiny), "--output_dir", str(tmp_path / "o")])
    dataclass = ValidationSettings()
    assert {k: getattr(args, k) for k in VALIDATION_KEYS} == {k: getattr(dataclass, k) for k in VALIDATION_KEYS}
    assert {f.name for f in fields(ValidationSettings)} - set(VALIDATION_KEYS) == {"batch_size"}  # not a sampling setting


def test_a_cold_start_run_and_a_relative_export_dir(tmp_path, monkeypatch):
    root = tmp_path / "repo"  # where `fit` ran: configs/coldstart.yaml exports to runs/coldstart/hf_model
    folder = _write_run(root / "runs" / "coldstart" / "version_2", base="coldstart.yaml", validation={"n": 2, "max_tokens": 9})
    (root / "runs" / "coldstart" / "hf_model").mkdir()
    (root / "runs" / "coldstart" / "hf_model" / "config.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = parse_args(["--like_run", str(folder), "--output_dir", "o", "--question_key", "problem"])
    assert Path(args.model_path) == root / "runs" / "coldstart" / "hf_model"
    assert (args.n, args.max_tokens, args.temperature, args.answer_fallback) == (2, 9, 1.0, "none")  # the rest: dataclass
    assert (args.limit, args.max_prompt_length) == (12, 384)  # val_size, and the cold-start data's max_length
    spec = json.loads(args.data[0])
    assert spec == {"path": "builtin:math:test", "answer_key": "answer"}  # the command line's --question_key wins
    assert args.sources["question_key"] == "command line"


def test_an_aepo_hold_out_without_val_path_is_the_rows_the_run_held_out(tmp_path, tiny):
    from transformers import AutoTokenizer

    from data_modules.prompts import PromptDataModule

    folder = _write_run(tmp_path / "run", val_path=None, val_size=5, builtin_size=40, seed=7)
    args = parse_args(["--like_run", str(folder), "--model_path", str(tiny), "--output_dir", "o"])
    source = parse_source(args.data[0], {"question_key": "question", "answer_key": "answer", "split": "test"})
    assert source.path == "builtin:math" and source.options == {"val_size": 5, "seed": 7, "builtin_seed": 0, "builtin_size": 40}
    tokenizer = AutoTokenizer.from_pretrained(str(tiny))
    problems, _ = load_problems([source], tokenizer, str(tiny), args.max_prompt_length, limit=args.limit)
    dm = PromptDataModule(path="builtin:math", tokenizer_path=str(tiny), builtin_size=40, val_size=5, seed=7,
                          max_prompt_length=256, batch_size=4)  # fmt: skip
    dm.setup("fit")
    assert [p["id"] for p in problems] == [r["id"] for r in dm.val_records] and len(problems) == 5
