"""Atomic caches (issue #26 item 1): builtin models and curated cold-start sets are built in a temp
folder and renamed into place under a lock (ares_lit/models/cache.py).

The CI flake "Unrecognized model in .../ares_cache/models/tiny-qwen2" had a first cause, fixed in
5ab5720: transformers 5's save_pretrained writes nothing on a DDP rank other than 0, so when rank 1
took the build lock the folder got a tokenizer and a marker but no config.json. The second hazard
was the in-place build: a process reading the folder without the lock (vLLM, or a test loading the
path directly) could see it half-written. Here several real processes race on an empty cache while
another process watches the cache folder, and every entry it ever sees is complete.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ares_lit.models.cache import build_once, spec_name
from ares_lit.models.tiny import build_tiny_qwen2

ROOT = Path(__file__).resolve().parents[2]

BUILDER = """
import sys, time
from pathlib import Path
import ares_lit.models.tiny as tiny
from ares_lit.models.resolve import resolve_model_path
log = Path(sys.argv[1])
build = tiny._build_qwen2
def counted(out, *args):
    with log.open("a") as f:
        f.write("built\\n")
    time.sleep(0.5)  # a slow build: the other processes arrive while it runs
    return build(out, *args)
tiny._build_qwen2 = counted
path = resolve_model_path("builtin:tiny-qwen2")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
AutoConfig.from_pretrained(path); AutoModelForCausalLM.from_pretrained(path); AutoTokenizer.from_pretrained(path)
print("PATH", path)
"""

WATCHER = """
import json, sys, time
from pathlib import Path
models, stop, seen = Path(sys.argv[1]), Path(sys.argv[2]), set()
while not stop.exists():
    for entry in (models.iterdir() if models.is_dir() else []):
        if entry.name.startswith("."):
            continue  # locks and temp folders: not entries
        names = {p.name for p in entry.iterdir()}
        complete = {"config.json", "model.safetensors", "tokenizer.json", "ares_tiny.json"} <= names
        seen.add((entry.name, complete))
    time.sleep(0.01)
print("SEEN", json.dumps(sorted(seen)))
"""


def test_processes_racing_on_an_empty_cache_build_once_and_no_reader_sees_half_a_folder(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    env = {"PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(cache / "models"), str(tmp_path / "stop")], env=env,
                               stdout=subprocess.PIPE, text=True)
    builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(log)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [b.communicate(timeout=300) for b in builders]
    assert all(b.returncode == 0 for b in builders), [o[1][-2000:] for o in outs]
    paths = {line.split(" ", 1)[1] for out, _ in outs for line in out.splitlines() if line.startswith("PATH ")}
    (tmp_path / "stop").write_text("")
    watched, _ = watcher.communicate(timeout=60)
    assert log.read_text().count("built") == 1  # one process built; the other two waited and reused it
    assert len(paths) == 1
    seen = json.loads(watched.split("SEEN ", 1)[1])
    assert seen and all(complete for _, complete in seen), seen  # never an incomplete entry at its final name
    leftovers = [p.name for p in (cache / "models").iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_a_changed_spec_is_built_beside_the_old_entry(tmp_path):
    old = build_tiny_qwen2(tmp_path / "tiny", versioned=True)
    new = build_tiny_qwen2(tmp_path / "tiny", versioned=True, seed=1)
    assert old != new and old.parent == new.parent
    assert old.name == spec_name("tiny", json.loads((old / "ares_tiny.json").read_text()))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(old)  # the old entry is untouched and still loads
    assert build_tiny_qwen2(tmp_path / "tiny", versioned=True) == old  # and is reused


def test_an_incomplete_folder_is_replaced_and_a_failed_build_leaves_nothing(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "half.bin").write_text("left by an in-place build")
    complete = lambda p: (p / "done").is_file()  # noqa: E731

    def fails(tmp: Path) -> None:
        (tmp / "weights").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        build_once(target, complete, fails)
    assert (target / "half.bin").is_file()  # what was there is not lost to a failed build
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    def works(tmp: Path) -> None:
        (tmp / "weights").write_text("x")
        (tmp / "done").write_text("")

    assert build_once(target, complete, works) == target
    assert sorted(p.name for p in target.iterdir()) == ["done", "weights"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
    with pytest.raises(RuntimeError, match="incomplete"):  # a build that forgets its marker is refused
        build_once(tmp_path / "other", complete, lambda tmp: (tmp / "weights").write_text("x"))
    assert not (tmp_path / "other").exists()


CURATOR = """
import sys, time
from pathlib import Path
import data_modules.coldstart as coldstart
from data_modules.coldstart import ColdstartDataModule
log = Path(sys.argv[2])
curate = ColdstartDataModule._curate
def counted(self, pool):
    with log.open("a") as f:
        f.write("curated\\n")
    time.sleep(0.5)
    return curate(self, pool)
ColdstartDataModule._curate = counted
dm = ColdstartDataModule(path="builtin:coldstart", tokenizer_path=sys.argv[3], cache_dir=sys.argv[1], size=16,
                         builtin_size=48, max_length=512, batch_size=4)
dm.setup("fit")
print("KEY", dm.cache_path.name, len(dm.records))
"""


@pytest.mark.slow
def test_two_processes_curating_one_pool_curate_once(tmp_path):
    tiny = build_tiny_qwen2(tmp_path / "tiny")
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "ARES_LIT_CACHE": str(tmp_path)}
    args = [sys.executable, "-c", CURATOR, str(tmp_path / "curation"), str(tmp_path / "log"), str(tiny)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    keys = {line for out, _ in outs for line in out.splitlines() if line.startswith("KEY ")}
    assert len(keys) == 1 and (tmp_path / "log").read_text().count("curated") == 1
    assert [p.name for p in (tmp_path / "curation").iterdir() if ".tmp-" in p.name] == []
