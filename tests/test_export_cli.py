"""`python -m ares_lit.export`: checkpoints of real runs -> HF folders that reload, generate, and hold the trained weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from ares_lit.export import main
from tests.strategies import fit_coldstart, run_cli


def check_folder(folder, trained: dict[str, torch.Tensor]) -> None:
    """The folder reloads with its tokenizer, holds exactly `trained`, and generates."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    state = model.state_dict()
    assert set(trained) <= set(state)
    for name, value in trained.items():
        assert torch.equal(state[name], value.to(state[name].dtype)), name
    ids = tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_export_from_a_zero3_checkpoint(tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    res = fit_coldstart(tmp_path, stage=3)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_dir()  # DeepSpeed's sharded folder
    res = run_cli(tmp_path, "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "exported"), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-4000:]
    trained = {k.removeprefix("policy."): v for k, v in get_fp32_state_dict_from_zero_checkpoint(str(ckpt)).items()}
    check_folder(tmp_path / "exported", trained)
    # The same weights as the folder the run itself exported at the end of fit.
    at_fit_end = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model").state_dict()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").state_dict()
    assert all(torch.equal(at_fit_end[k], exported[k]) for k in at_fit_end)


def test_export_from_a_plain_checkpoint(tmp_path):
    res = fit_coldstart(tmp_path, stage=None)
    assert res.returncode == 0, res.stderr[-4000:]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    res = run_cli(tmp_path, "--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "exported"), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-4000:]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    trained = {k.removeprefix("policy."): v for k, v in state.items()}
    check_folder(tmp_path / "exported", trained)
    initial = AutoModelForCausalLM.from_pretrained(tmp_path.parent / "ares_cache" / "models" / "tiny-qwen2").state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained.items())  # trained weights, not the initial ones


def test_export_of_a_vision_language_checkpoint_carries_the_image_processor(tmp_path, monkeypatch):
    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.vision import VisionProcessor

    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path / "cache"))
    source = resolve_model_path("builtin:tiny-qwen2.5-vl")
    model = AutoModelForImageTextToText.from_pretrained(source)
    trained = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = tmp_path / "vl.ckpt"  # what Lightning saves for AdaptiveColdstartModule / AEPOModule
    torch.save({"state_dict": {f"policy.{k}": v for k, v in trained.items()},
                "hyper_parameters": {"model_path": "builtin:tiny-qwen2.5-vl", "dtype": "float32"}}, ckpt)
    main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "exported")])
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "exported").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in trained.items())
    processor = VisionProcessor.from_pretrained(str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "preprocessor_config.json").exists()
    assert processor.image_token_id == model.config.image_token_id


def test_export_dtype_follows_the_run_unless_overridden(tmp_path, monkeypatch):
    from ares_lit.models.resolve import resolve_model_path

    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-qwen2"))
    ckpt = tmp_path / "bf16.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_path": "builtin:tiny-qwen2", "dtype": "bfloat16"}}, ckpt)
    main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "auto")])
    main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "fp32"), "--dtype", "float32"])
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "auto", dtype="auto").dtype == torch.bfloat16
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype="auto").dtype == torch.float32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "nope.ckpt", "does not exist"),
        (lambda tmp: (tmp / "folder").mkdir() or tmp / "folder", "not a DeepSpeed checkpoint"),
        (lambda tmp: (tmp / "text.ckpt").write_text("hello") and tmp / "text.ckpt", "cannot read"),
        (lambda tmp: torch.save({"state_dict": {"layer.weight": torch.ones(1)}}, tmp / "other.ckpt") or tmp / "other.ckpt",
         "not an ares_lit checkpoint"),
        (lambda tmp: torch.save({"state_dict": {"policy.w": torch.ones(1)}}, tmp / "nohp.ckpt") or tmp / "nohp.ckpt",
         "pass --model_path"),
    ],
)
def test_export_errors_say_what_to_change(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(make(tmp_path)), "--output_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_weights_of_another_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path / "cache"))
    torch.save({"state_dict": {"policy.model.embed_tokens.weight": torch.ones(3, 3)},
                "hyper_parameters": {"model_path": "builtin:tiny-qwen2"}}, tmp_path / "x.ckpt")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "x.ckpt"), "--output_dir", str(tmp_path / "out")])
    assert "do not fit 'builtin:tiny-qwen2'" in capsys.readouterr().err
