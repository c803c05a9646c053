"""A full disk while writing the export or TensorBoard's events (ENOSPC and EFBIG are handled alike).

The limit is the kernel's file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets; Python ignores
SIGXFSZ, so writes fail with a real EFBIG): by `ulimit -f` in the shell that starts
`python -m ares_lit.export`, and from inside a cold-start fit at step 2 for TensorBoard
(tests/e2e/faults.py FileSizeLimitAt), so that the run's start-up files are written first. Each run
must stop with one message naming what it could not write, exit 1, and keep what it had: the
previous export byte for byte and no staged folder; the previous last.ckpt. The checkpoint's own
case is tests/e2e/test_aepo_resume.py, evaluate's tests/evaluation/test_evaluate_cli.py.
"""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from ares_lit.export import main as export_main
from tests.strategies import ROOT, coldstart_overlay, run_cli


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_during_export_keeps_the_previous_export(tmp_path, monkeypatch):
    from ares_lit.models.resolve import resolve_model_path

    monkeypatch.setenv("ARES_LIT_CACHE", str(tmp_path.parent / "ares_cache"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-qwen2"))
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {f"policy.{k}": v + 0.01 for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_path": "builtin:tiny-qwen2", "dtype": "float32"}}, ckpt)  # fmt: skip
    out = tmp_path / "exported"
    export_main(["--checkpoint", str(ckpt), "--output_dir", str(out)])
    before = _files(out)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = f"ulimit -f 64; exec {sys.executable} -m ares_lit.export --checkpoint {ckpt} --output_dir {out} --overwrite"
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith(f"python -m ares_lit.export: error: [Errno 27] could not write the export {out}"), res.stderr[-3000:]
    assert "a previous export there is intact" in lines[-2] and "ulimit -f" in lines[-1]
    assert _files(out) == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run.ckpt"]  # no staged folder left


@pytest.mark.slow
def test_a_full_disk_for_tensorboard_stops_the_run_with_one_message(tmp_path):
    overlay = coldstart_overlay(tmp_path, stage=None, steps=2)
    first = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config", str(overlay),
                    "--model.init_args.export_dir=")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    saved = ckpt.read_bytes()
    limited = tmp_path / "limited.yaml"
    limited.write_text(overlay.read_text().replace(
        "save_top_k: 0}", "save_top_k: 0}\n    - class_path: tests.e2e.faults.FileSizeLimitAt\n      init_args: {step: 2}"
    ))  # fmt: skip
    res = run_cli(tmp_path, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config", str(limited),
                  "--model.init_args.export_dir=", "--trainer.max_steps=6", "--trainer.max_epochs=3", "--ckpt_path=last")  # fmt: skip
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    log_dir = tmp_path / "runs" / "coldstart" / "version_1"
    assert lines[-2] == (f"error: [Errno 27] could not write TensorBoard's event file in {log_dir} (File too large); "
                         "the last checkpoint is intact"), res.stderr[-3000:]  # fmt: skip
    assert "ulimit -f" in lines[-1] and "Exception in thread" not in res.stderr  # once, not a thread's traceback
    assert ckpt.read_bytes() == saved  # the last checkpoint: untouched, and it loads
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 2
