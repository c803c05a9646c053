"""`python -m ares_lit.export`: checkpoints of real runs -> HF folders that reload, generate, and hold the trained weights.
Also `--local_dir`, the seed's `model_merger.py --local_dir` spelling, which writes `<local_dir>/huggingface`."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

from ares_lit.export import main, resolve_local_dir
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
    # --local_dir on the DeepSpeed folder itself: the seed's layout, <local_dir>/huggingface.
    res = run_cli(tmp_path, "--local_dir", str(ckpt), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-4000:]
    check_folder(ckpt / "huggingface", trained)


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
    initial = AutoModelForCausalLM.from_pretrained(next((tmp_path.parent / "ares_cache" / "models").glob("tiny-qwen2-*"))).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained.items())  # trained weights, not the initial ones
    # --local_dir on the run's checkpoint folder: it picks last.ckpt, says so, and writes <folder>/huggingface.
    res = run_cli(tmp_path, "--local_dir", str(tmp_path / "ckpt"), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"exporting the checkpoint {ckpt}" in res.stdout
    check_folder(tmp_path / "ckpt" / "huggingface", trained)


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


# ------------------------------------------------------------------ --local_dir
def tiny_checkpoint(path, shift: float) -> dict[str, torch.Tensor]:
    """What Lightning saves for AdaptiveColdstartModule / AEPOModule on the tiny model, its weights
    moved by `shift` (so that checkpoints differ); returns the policy's weights."""
    from ares_lit.models.resolve import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-qwen2"))
    trained = {k: v + shift if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"policy.{k}": v for k, v in trained.items()},
                "hyper_parameters": {"model_path": "builtin:tiny-qwen2", "dtype": "float32"}}, path)
    return trained


@pytest.fixture
def shared_cache(tmp_path, monkeypatch):
    """The builtin models' cache that run_cli uses too (built once per session)."""
    cache = tmp_path.parent / "ares_cache"
    monkeypatch.setenv("ARES_LIT_CACHE", str(cache))
    return cache


def _touch(path, mtime: int, deepspeed: bool = False):
    if deepspeed:
        path.mkdir(parents=True)
        (path / "latest").write_text("global_step2")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_local_dir_picks_last_ckpt_else_the_newest(tmp_path):
    """Which checkpoint `--local_dir` exports, and where (nothing is loaded to decide)."""
    run = tmp_path / "version_0"
    ckpts = run / "checkpoints"
    _touch(ckpts / "epoch=0-step=1.ckpt", 1_000)
    step2 = _touch(ckpts / "epoch=0-step=2.ckpt", 2_000)
    _touch(ckpts / "notes.txt", 9_000)  # not a checkpoint
    assert resolve_local_dir(ckpts) == (step2, ckpts / "huggingface", True)
    assert resolve_local_dir(run) == (step2, run / "huggingface", True)  # a version folder: its checkpoints/
    step3 = _touch(ckpts / "epoch=1-step=3.ckpt", 3_000, deepspeed=True)  # DeepSpeed's folder counts as a checkpoint
    (ckpts / "broken.ckpt").mkdir()  # a folder without 'latest' does not
    os.utime(ckpts / "broken.ckpt", (8_000, 8_000))
    assert resolve_local_dir(ckpts)[0] == step3
    last = _touch(ckpts / "last.ckpt", 500)  # last.ckpt wins, however old
    assert resolve_local_dir(ckpts) == (last, ckpts / "huggingface", True)
    assert resolve_local_dir(run) == (last, run / "huggingface", True)
    # A file or a DeepSpeed folder is the checkpoint itself.
    assert resolve_local_dir(step2) == (step2, ckpts / "huggingface", False)
    assert resolve_local_dir(step3) == (step3, step3 / "huggingface", False)


def test_local_dir_with_a_ckpt_file_writes_huggingface_beside_it(tmp_path, shared_cache):
    ckpt = tmp_path / "run" / "epoch=0-step=2.ckpt"
    trained = tiny_checkpoint(ckpt, 0.01)
    res = run_cli(tmp_path, "--local_dir", str(ckpt), module="ares_lit.export")
    assert res.returncode == 0, res.stderr[-4000:]
    check_folder(tmp_path / "run" / "huggingface", trained)
    # --output_dir overrides the default.
    main(["--local_dir", str(ckpt), "--output_dir", str(tmp_path / "elsewhere")])
    check_folder(tmp_path / "elsewhere", trained)


def test_local_dir_with_a_version_folder_exports_its_newest_checkpoint(tmp_path, shared_cache, capsys):
    run = tmp_path / "version_0"
    older, newer = run / "checkpoints" / "epoch=0-step=1.ckpt", run / "checkpoints" / "epoch=0-step=2.ckpt"
    tiny_checkpoint(older, 0.01)
    trained = tiny_checkpoint(newer, 0.02)
    os.utime(older, (1_000, 1_000))
    os.utime(newer, (2_000, 2_000))
    main(["--local_dir", str(run)])
    assert f"exporting the checkpoint {newer}" in capsys.readouterr().out
    check_folder(run / "huggingface", trained)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "{ckpt}", "--local_dir", "{ckpt}"], "argument --local_dir: not allowed with argument --checkpoint"),
        ([], "one of the arguments --checkpoint --local_dir is required"),
        (["--output_dir", "{out}"], "one of the arguments --checkpoint --local_dir is required"),
        (["--checkpoint", "{ckpt}"], "--output_dir is required with --checkpoint"),
        (["--local_dir", "{tmp}/missing"], "does not exist"),
        (["--local_dir", "{tmp}/empty"], "holds no checkpoint"),
        (["--local_dir", "{tmp}/only_broken"], "holds no checkpoint"),
    ],
)
def test_local_dir_errors_come_before_any_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    cache = tmp_path / "cache"  # a builtin model would be built here, were any loaded
    monkeypatch.setenv("ARES_LIT_CACHE", str(cache))
    ckpt = tmp_path / "good" / "last.ckpt"  # a valid checkpoint: only the options are wrong
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"policy.w": torch.ones(1)}, "hyper_parameters": {"model_path": "builtin:tiny-qwen2"}}, ckpt)
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_broken" / "x.ckpt").mkdir(parents=True)  # a folder named .ckpt but no DeepSpeed 'latest'
    args = [a.format(ckpt=ckpt, out=tmp_path / "out", tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not cache.exists()
    assert not list(tmp_path.rglob("huggingface")) and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ previous exports are kept
@pytest.fixture
def tiny(shared_cache):
    """The tiny model and tokenizer, loaded once per test (milliseconds)."""
    from ares_lit.models.resolve import resolve_model_path

    path = resolve_model_path("builtin:tiny-qwen2")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _fit_end_export(model, tokenizer, export_dir, log_dir, step):
    """export_at_fit_end as a single-device run at `step` under `log_dir` calls it."""
    from types import SimpleNamespace

    from ares_lit.modules.export import export_at_fit_end

    strategy = SimpleNamespace(barrier=lambda name: None)
    trainer = SimpleNamespace(log_dir=str(log_dir), default_root_dir=str(log_dir), strategy=strategy,
                              is_global_zero=True, global_step=step)
    module = SimpleNamespace(trainer=trainer, policy=model, tokenizer=tokenizer, resolved_model_path=None,
                             hparams={"model_path": "builtin:tiny-qwen2"})
    export_at_fit_end(module, str(export_dir), "cold-start model")


def test_fit_end_export_moves_a_previous_runs_export_aside(tmp_path, tiny, capsys, monkeypatch):
    from ares_lit.modules.export import EXPORT_INFO, read_export_info

    monkeypatch.chdir(tmp_path)
    model, tokenizer = tiny
    target = "runs/coldstart/hf_model"
    _fit_end_export(model, tokenizer, target, "runs/coldstart/version_2", 24)
    info = read_export_info(target)
    assert (info["what"], info["module"], info["log_dir"], info["global_step"]) == (
        "cold-start model", "SimpleNamespace", "runs/coldstart/version_2", 24)
    assert info["ares_lit_version"] == "0.1.0" and info["time"][:2] == "20"
    assert capsys.readouterr().out == f"[ares_lit] exported the cold-start model to {target}\n"

    _fit_end_export(model, tokenizer, target, "runs/coldstart/version_3", 30)  # another run: the old one moves aside
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("[ares_lit] moved the previous export at runs/coldstart/hf_model (from runs/coldstart/version_2, "
                      "step 24) to runs/coldstart/hf_model.1")
    assert read_export_info(target)["global_step"] == 30 and read_export_info(f"{target}.1")["global_step"] == 24
    _fit_end_export(model, tokenizer, target, "runs/coldstart/version_4", 5)  # the next free number
    assert "to runs/coldstart/hf_model.2" in capsys.readouterr().out
    _fit_end_export(model, tokenizer, target, "runs/coldstart/version_4", 6)  # the same run again: replaced
    assert "moved" not in capsys.readouterr().out
    assert read_export_info(target)["global_step"] == 6
    assert sorted(p.name for p in (tmp_path / "runs" / "coldstart").iterdir()) == ["hf_model", "hf_model.1", "hf_model.2"]
    check_folder(target, model.state_dict())
    assert (tmp_path / target / EXPORT_INFO).is_file()


def test_export_hf_keeps_an_export_without_ares_export_json_and_writes_atomically(tmp_path, tiny, capsys, monkeypatch):
    from ares_lit.modules import export as export_module

    model, tokenizer = tiny
    old = tmp_path / "hf_model"
    model.save_pretrained(old)  # an export from before ares_export.json
    export_module.export_hf(model, tokenizer, old)
    assert capsys.readouterr().out.splitlines()[0] == (
        f"[ares_lit] moved the previous export at {old} (from an unknown run: no ares_export.json) to {old}.1")
    assert (tmp_path / "hf_model.1" / "config.json").is_file()

    # A failed save leaves the target as it was and no partial folder behind.
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", broken)
    before = sorted(p.name for p in old.iterdir())
    with pytest.raises(RuntimeError, match="disk full"):
        export_module.export_hf(model, tokenizer, old)
    assert sorted(p.name for p in old.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model", "hf_model.1"]


def test_export_cli_refuses_a_non_empty_output_unless_overwrite(tmp_path, shared_cache, capsys):
    from ares_lit.modules.export import read_export_info

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trained = tiny_checkpoint(ckpt, 0.01)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    main(["--checkpoint", str(ckpt), "--output_dir", str(out)])
    info = read_export_info(out)
    assert (info["checkpoint"], info["log_dir"], info["what"]) == (str(ckpt), str(tmp_path / "run"), "checkpoint's policy")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(ckpt), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"the output folder {str(out)!r} already holds a model (" in err and "pass --overwrite to replace it" in err
    trained = tiny_checkpoint(ckpt, 0.02)
    main(["--checkpoint", str(ckpt), "--output_dir", str(out), "--overwrite"])
    check_folder(out, trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # replaced: no out.1, no partial folder

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--output_dir", str(notes)])
    assert "already holds files (todo.txt); pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a model: --overwrite does not delete it either
        main(["--checkpoint", str(ckpt), "--output_dir", str(notes), "--overwrite"])
    assert "holds no model (todo.txt); --overwrite replaces only a model folder" in capsys.readouterr().err
    assert (notes / "todo.txt").read_text() == "mine"
