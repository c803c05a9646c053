"""`python -m ares_lit.infer` on the tiny text and vision-language models, with both engines; and
`scripts/inference.sh`, the ARES release's inference script, on top of it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ares_lit import infer
from ares_lit.rollout import Completion
from tests.strategies import ROOT, run_cli

SCRIPT = ROOT / "scripts" / "inference.sh"

def _torchvision_usable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or built for another torch
        return False
    return True


RESPONSE = re.compile(r"^=== response (\d+)/(\d+) \((stop|length), (\d+) tokens\) ===$", re.M)
ANSWER = re.compile(r"^=== answer (\d+)/(\d+): (.*)$", re.M)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path.parent / "ares_cache"))


def blocks(out: str) -> tuple[list, list]:
    return RESPONSE.findall(out), ANSWER.findall(out)


def test_text_model_through_the_cli_prints_every_sample(tmp_path):
    res = run_cli(tmp_path, "--model_path", "builtin:tiny-qwen2", "--question", "What is 2 + 3?", "--max_tokens", "12",
                  "--do_sample", "--num_return_sequences", "3", module="ares_lit.infer", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    responses, answers = blocks(res.stdout)
    assert [r[:2] for r in responses] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(1 <= int(r[3]) <= 12 for r in responses)
    assert [a[:2] for a in answers] == [("1", "3"), ("2", "3"), ("3", "3")]


def test_greedy_is_deterministic_and_sampling_is_not(cache, capsys):
    args = ["--model_path", "builtin:tiny-qwen2", "--question", "What is 12 + 7?", "--max_tokens", "16"]
    infer.main(args)
    first = capsys.readouterr().out
    infer.main(args)
    assert capsys.readouterr().out == first
    assert len(blocks(first)[0]) == 1
    infer.main([*args, "--do_sample", "--num_return_sequences", "4", "--seed", "1"])
    sampled = capsys.readouterr().out
    texts = re.split(RESPONSE, sampled)[5::5]  # the text after each header
    assert len(blocks(sampled)[0]) == 4 and len(set(texts)) > 1


def test_vision_language_model_with_an_image(cache, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "bars.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(image)
    args = ["--model_path", "builtin:tiny-qwen2.5-vl", "--image_path", str(image), "--question", "Which bar is tallest?",
            "--max_tokens", "8"]
    infer.main([*args, "--do_sample", "--num_return_sequences", "2"])
    responses, answers = blocks(capsys.readouterr().out)
    assert len(responses) == 2 and len(answers) == 2
    infer.main(args)
    greedy = capsys.readouterr().out
    infer.main(args)
    assert capsys.readouterr().out == greedy


def test_answers_are_the_last_boxed_content(monkeypatch, capsys):
    fake = [Completion([1, 2], "<think>2+3</think> \\boxed{\\frac{1}{2}}", None, "stop"),
            Completion([3], "no box here", None, "length")]
    monkeypatch.setattr(infer, "run", lambda args: fake)
    infer.main(["--model_path", "x", "--question", "q"])
    out = capsys.readouterr().out
    assert blocks(out) == ([("1", "2", "stop", "2"), ("2", "2", "length", "1")],
                           [("1", "2", "\\frac{1}{2}"), ("2", "2", infer.NO_ANSWER)])


def test_vllm_engine_on_the_text_model(tmp_path):
    res = run_cli(tmp_path, "--model_path", "builtin:tiny-qwen2", "--question", "What is 2 + 3?", "--max_tokens", "8",
                  "--engine", "vllm", "--do_sample", "--num_return_sequences", "2", module="ares_lit.infer", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    responses, answers = blocks(res.stdout)
    assert len(responses) == 2 and len(answers) == 2
    # vLLM logs at WARNING by default: none of its INFO lines (config dump, ...), no "may crash" warning.
    vllm_lines = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("(MainProcess pid=")]
    assert not [line for line in vllm_lines if " INFO " in line or " DEBUG " in line], vllm_lines
    assert "chunked prefill" not in res.stdout + res.stderr


def test_vllm_log_level_flag():
    parse = infer._parser().parse_args
    assert parse(["--model_path", "m", "--question", "q"]).vllm_log_level == "WARNING"
    assert parse(["--model_path", "m", "--question", "q", "--vllm_log_level", "info"]).vllm_log_level == "INFO"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model_path", "builtin:tiny-qwen2", "--image_path", "{img}"], "needs a vision-language model"),
        pytest.param(["--model_path", "builtin:tiny-qwen2.5-vl", "--image_path", "{img}", "--engine", "vllm"], "torchvision",
                     marks=pytest.mark.skipif(_torchvision_usable(), reason="torchvision works here")),
        (["--model_path", "builtin:tiny-qwen2", "--image_path", "{missing}"], "does not exist"),
        (["--model_path", "builtin:tiny-qwen2", "--num_return_sequences", "0"], "--num_return_sequences must be >= 1"),
        (["--model_path", "builtin:tiny-qwen2", "--do_sample", "--top_p", "0"], "--top_p must be in (0, 1]"),
        (["--model_path", "{tmp}"], "is not a model folder: has no config.json (it holds: img.png); give an HF model"),
        (["--model_path", "runs/coldstart/version_3/hf_model"], "is not a model folder: does not exist; give an HF model"),
    ],
)
def test_errors_say_what_to_change(cache, tmp_path, capsys, extra, message):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (64, 64)).save(img)
    args = [a.format(img=img, missing=tmp_path / "missing.png", tmp=tmp_path) for a in extra]
    with pytest.raises(SystemExit) as exc:
        infer.main([*args, "--question", "q"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ --do_sample as the ARES release spells it
@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], False),
        (["--do_sample"], True),
        (["--do_sample", "True"], True),
        (["--do_sample", "False"], False),
        (["--do_sample", "true"], True),
        (["--do_sample", "false"], False),
        (["--do_sample", "YES"], True),
        (["--do_sample", "no"], False),
        (["--do_sample", "1"], True),
        (["--do_sample", "0"], False),
        (["--do_sample", "--temperature", "0.5"], True),  # bare flag before another option
        (["--do_sample", "True", "--do_sample", "false"], False),  # the last one wins
    ],
)
def test_do_sample_takes_an_optional_value(extra, expected):
    args = infer._parser().parse_args(["--model_path", "m", "--question", "q", *extra])
    assert args.do_sample is expected


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_do_sample_rejects_other_values(capsys, value):
    with pytest.raises(SystemExit) as exc:
        infer._parser().parse_args(["--model_path", "m", "--question", "q", "--do_sample", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --do_sample" in err and repr(value) in err


def _response_texts(out: str) -> list[str]:
    return re.split(RESPONSE, out)[5::5]  # the text after each header


@pytest.mark.slow
def test_release_spelling_of_do_sample_through_the_cli(tmp_path):
    """`--do_sample True/False` as the release passes it: False is greedy (the seed does not matter), True samples."""
    base = ["--model_path", "builtin:tiny-qwen2", "--question", "What is 12 + 7?", "--max_tokens", "12",
            "--temperature", "1.0", "--top_p", "0.95", "--top_k", "50"]
    greedy = [run_cli(tmp_path, *base, "--do_sample", "False", "--seed", seed, module="ares_lit.infer", timeout=300)
              for seed in ("1", "2")]
    for res in greedy:
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(blocks(res.stdout)[0]) == 1
    first, second = (r.stdout[r.stdout.index("=== response"):] for r in greedy)  # a library may log to stdout first
    assert first == second
    res = run_cli(tmp_path, *base, "--do_sample", "True", "--seed", "1", "--num_return_sequences", "4",
                  module="ares_lit.infer", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    responses, answers = blocks(res.stdout)
    assert len(responses) == 4 and len(answers) == 4
    assert len(set(_response_texts(res.stdout))) > 1  # sampled: not four copies of the greedy text


# ------------------------------------------------------------------ scripts/inference.sh
# A question that breaks any unquoted expansion: spaces, quotes, a glob, and `$HOME` as literal text.
TRICKY_QUESTION = 'What is "2 + 3" * 4 in $HOME\'s $(units)?  Answer in \\boxed{}.'


def _script_env(tmp_path: Path, **settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (
        "MODEL_PATH", "IMAGE_PATH", "QUESTION", "PROMPT", "MAX_TOKENS", "DO_SAMPLE", "TEMPERATURE", "TOP_P", "TOP_K",
        "NUM_RETURN_SEQUENCES", "ENGINE", "PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", ARES_LIT_CACHE=str(tmp_path.parent / "ares_cache"))
    env.update(settings)
    return env


def _argv_shim(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for PYTHON that only writes the arguments it got as JSON: it checks how the script
    passes (and quotes) its settings, not inference, which the real-model test below runs."""
    out = tmp_path / "argv.json"
    shim = tmp_path / "python-shim"
    shim.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    shim.chmod(0o755)
    return shim, out


def test_inference_script_has_valid_syntax():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_inference_script_defaults_match_the_release(tmp_path):
    shim, out = _argv_shim(tmp_path)
    res = subprocess.run([str(SCRIPT)], cwd=tmp_path, env=_script_env(tmp_path, PYTHON=str(shim)),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    argv = json.loads(out.read_text())
    assert argv[:2] == ["-m", "ares_lit.infer"]
    args = infer._parser().parse_args(argv[2:])
    assert (args.model_path, args.question, args.max_tokens, args.do_sample, args.temperature, args.top_p, args.top_k,
            args.num_return_sequences, args.engine) == (
        "builtin:smollm2-135m-instruct", "What is 12 + 7?", 512, True, 1.0, 0.95, 50, 1, "hf")
    assert "--image_path" not in argv and "--prompt" not in argv  # empty IMAGE_PATH, unset PROMPT: left out
    assert args.prompt == infer.ARES_PROMPT_SUFFIX


def test_inference_script_passes_every_setting_intact(tmp_path):
    shim, out = _argv_shim(tmp_path)
    image = tmp_path / "my chart $1.png"
    settings = dict(MODEL_PATH=str(tmp_path / "a model"), IMAGE_PATH=str(image), QUESTION=TRICKY_QUESTION, PROMPT="",
                    MAX_TOKENS="16384", DO_SAMPLE="False", TEMPERATURE="0.7", TOP_P="0.9", TOP_K="20",
                    NUM_RETURN_SEQUENCES="3", ENGINE="vllm", PYTHON=str(shim))
    extra = ["--seed", "7", "--system_prompt", "Be brief; don't  *guess*."]
    res = subprocess.run([str(SCRIPT), *extra], cwd="/", env=_script_env(tmp_path, **settings),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    argv = json.loads(out.read_text())
    assert argv[-4:] == extra  # passed through, after the settings
    args = infer._parser().parse_args(argv[2:])
    assert args.question == TRICKY_QUESTION
    assert args.model_path == str(tmp_path / "a model") and args.image_path == [str(image)]
    assert args.prompt == ""  # PROMPT="" is passed: no suffix
    assert (args.max_tokens, args.do_sample, args.temperature, args.top_p, args.top_k, args.num_return_sequences,
            args.engine, args.seed, args.system_prompt) == (16384, False, 0.7, 0.9, 20, 3, "vllm", 7, extra[-1])


def test_inference_script_runs_the_tiny_model(tmp_path, monkeypatch):
    from ares_lit.models.resolve import resolve_model_path

    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path.parent / "ares_cache"))
    model_dir = resolve_model_path("builtin:tiny-qwen2")  # a plain HF folder, as an export is
    env = _script_env(tmp_path, MODEL_PATH=str(model_dir), QUESTION=TRICKY_QUESTION, MAX_TOKENS="8",
                      PYTHON=sys.executable, PROMPT="Put the answer in \\boxed{}.")
    res = subprocess.run(["bash", str(SCRIPT), "--seed", "3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    responses, answers = blocks(res.stdout)
    assert [r[:2] for r in responses] == [("1", "1")] and 1 <= int(responses[0][3]) <= 8
    assert [a[:2] for a in answers] == [("1", "1")]
    assert "=== response 1/1" in res.stdout and "=== answer 1/1: " in res.stdout
