"""`kill -9` while DeepSpeed writes a folder checkpoint (ZeRO-2 and ZeRO-3, CPU shim, real CLI).

A cold-start fit saves `last.ckpt/` after every step (ModelCheckpoint every_n_train_steps 1) and
is killed with SIGKILL during its second save (tests/e2e/faults.py KillDuringSave): half-way
through the first or second state file, just before `latest` is committed, or just after. Then:
- before the commit, the folder is exactly what the first save left (every byte), `latest` names
  it, and the checkpoint loads at step 1; after the commit, it loads at step 2;
- `fit --ckpt_path=last` resumes from that step (it logs only the steps after it), to step 3;
- a kill during the very first save leaves no complete checkpoint: the resume stops before any
  model loads, with a message naming the incomplete folder, and trains nothing.
ares_lit/atomic_io.py (`atomic_deepspeed_checkpoints`) makes this hold; Lightning's own save
rewrote `last.ckpt/checkpoint/*.pt` in place, so such a kill left a torn checkpoint.
"""

import json

import pytest

from ares_lit.export import load_checkpoint
from tests.strategies import ROOT, coldstart_overlay, run_cli


def killed_fit(tmp, stage, save, moment):
    """Fit 2 steps on ZeRO `stage`, saving after each, killed at `moment` of save `save`; returns the overlay
    without the kill (for the resume), the checkpoint folder and the pre-save record."""
    overlay = coldstart_overlay(tmp, stage, steps=2)
    base = overlay.read_text().replace("save_top_k: 0}", "save_top_k: 0, every_n_train_steps: 1, every_n_epochs: 0}")
    overlay.write_text(base)
    killing = tmp / "kill_overlay.yaml"
    record = tmp / "before_save.json"
    killing.write_text(base.replace(
        "save_top_k: 0, every_n_train_steps: 1, every_n_epochs: 0}",
        "save_top_k: 0, every_n_train_steps: 1, every_n_epochs: 0}\n    - class_path: tests.e2e.faults.KillDuringSave\n"
        f"      init_args: {{save: {save}, moment: {moment}, record: {record}}}",
    ))  # fmt: skip
    res = run_cli(tmp, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config", str(killing))
    assert res.returncode == -9, (res.returncode, res.stderr[-3000:])
    return overlay, tmp / "ckpt" / "last.ckpt", record


def resume(tmp, overlay, steps=3):
    return run_cli(tmp, "fit", "--config", str(ROOT / "configs/coldstart.yaml"), "--config", str(overlay),
                   f"--trainer.max_steps={steps}", "--ckpt_path=last")  # fmt: skip


def logged_steps(tmp):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted((tmp / "runs" / "coldstart").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    acc = EventAccumulator(str(versions[-1]), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("train/loss")]


def _record_keys(record):  # the record's paths are relative to the ModelCheckpoint folder
    return json.loads(record.read_text())


@pytest.mark.parametrize(
    "stage,moment",
    [(2, "file2"), pytest.param(3, "file1", marks=pytest.mark.slow)],
)
def test_a_kill_mid_save_resumes_from_the_last_complete_checkpoint(tmp_path, stage, moment):
    overlay, folder, record = killed_fit(tmp_path, stage, save=2, moment=moment)
    before = _record_keys(record)
    assert "last.ckpt/latest" in before  # the first save was complete when the second began
    check_killed_files(folder, before, moment)
    res = resume(tmp_path, overlay)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in res.stderr and str(folder) in res.stderr
    assert logged_steps(tmp_path) == [1, 2]  # steps 2 and 3 (0-based 1, 2): not from step 0
    assert load_checkpoint(folder)["global_step"] == 3
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [(folder / "latest").read_text()]  # one tag left


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("moment", ["file1", "file2", "commit", "cleanup"])
def test_every_kill_moment_leaves_a_complete_checkpoint(tmp_path, stage, moment):
    _, folder, record = killed_fit(tmp_path, stage, save=2, moment=moment)
    check_killed_files(folder, _record_keys(record), moment)


def check_killed_files(folder, before, moment):
    tag = (folder / "latest").read_text()
    if moment == "cleanup":  # committed: the new save is the checkpoint, the old tag not yet removed
        assert before["last.ckpt/latest"] != tag.encode().hex()
        assert load_checkpoint(folder)["global_step"] == 2
        return
    # Not committed: `latest` and the tag folder it names are byte for byte what the first save left.
    assert before["last.ckpt/latest"] == tag.encode().hex()
    mine = lambda files: {p: v for p, v in files.items() if p.startswith(f"last.ckpt/{tag}/")}  # noqa: E731
    now = {p: (folder.parent / p).read_bytes().hex() for p in mine(before)}
    assert now and now == mine(before)
    assert load_checkpoint(folder)["global_step"] == 1


@pytest.mark.slow
def test_a_kill_in_the_first_save_stops_the_resume_naming_the_folder(tmp_path):
    overlay, folder, _ = killed_fit(tmp_path, 2, save=1, moment="file1")
    assert folder.is_dir() and not (folder / "latest").exists()
    res = resume(tmp_path, overlay)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"the DeepSpeed checkpoint '{folder}' is incomplete" in res.stderr and "no 'latest' file" in res.stderr
    assert "Loading" not in res.stderr and "Restoring states" not in res.stderr  # stopped before the model
    with pytest.raises(ValueError, match="is incomplete"):
        load_checkpoint(folder)  # the export says the same
