"""`python -m ares_lit.infer` on the tiny text and vision-language models, with both engines."""

import re

import pytest

from ares_lit import infer
from ares_lit.rollout import Completion
from tests.strategies import run_cli

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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model_path", "builtin:tiny-qwen2", "--image_path", "{img}"], "needs a vision-language model"),
        pytest.param(["--model_path", "builtin:tiny-qwen2.5-vl", "--image_path", "{img}", "--engine", "vllm"], "torchvision",
                     marks=pytest.mark.skipif(_torchvision_usable(), reason="torchvision works here")),
        (["--model_path", "builtin:tiny-qwen2", "--image_path", "{missing}"], "does not exist"),
        (["--model_path", "builtin:tiny-qwen2", "--num_return_sequences", "0"], "--num_return_sequences must be >= 1"),
        (["--model_path", "builtin:tiny-qwen2", "--do_sample", "--top_p", "0"], "--top_p must be in (0, 1]"),
    ],
)
def test_errors_say_what_to_change(cache, tmp_path, capsys, extra, message):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (64, 64)).save(img)
    args = [a.format(img=img, missing=tmp_path / "missing.png") for a in extra]
    with pytest.raises(SystemExit) as exc:
        infer.main([*args, "--question", "q"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
