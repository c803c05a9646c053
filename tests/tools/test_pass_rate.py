"""`python -m ares_lit.tools.pass_rate` on a tiny Qwen2 taught to always answer \\boxed{7}.

The tiny model is first fitted (150 full-batch AdamW steps) to answer every ARES prompt with
"<think>...</think> \\boxed{7}", so that greedy answers are known: problems whose gold answer
equals 7 (also as "7.0", which only math-verify accepts) must get k = n, the others k = 0.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ares_lit.models.tiny import build_tiny_qwen2
from ares_lit.prompting import build_prompt_text

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "<think>\n3 + 4 = 7\n</think>\n\\boxed{7}"


@pytest.fixture(scope="module")
def sevens_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_qwen2(tmp_path_factory.mktemp("tiny"))
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(0)
    questions = ["What is 3 + 4?", "What is 5 + 3?", "What is 14 / 2?", "What is 1 + 1?", "Solve x - 1 = 2."]
    resp = tok(ANSWER, add_special_tokens=False).input_ids + [tok.eos_token_id]
    prompts = [tok(build_prompt_text(tok, q), add_special_tokens=False).input_ids for q in questions]
    width = max(len(p) for p in prompts) + len(resp)
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    labels = torch.full((len(prompts), width), -100)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p) + len(resp)] = torch.tensor(p + resp)
        labels[i, len(p) : len(p) + len(resp)] = torch.tensor(resp)
        mask[i, : len(p) + len(resp)] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: 1 thread is faster, and immune to a busy machine's spin-waits
    try:
        for _ in range(150):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    assert float(loss.detach()) < 0.05
    out = tmp_path_factory.mktemp("sevens")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def pool_rows():
    return [
        {"id": "a", "source": "s", "question": "What is 3 + 4?", "answer": "7", "traces": ["x"]},
        {"id": "b", "source": "s", "question": "What is 5 + 3?", "answer": "8"},
        {"id": "c", "source": "s", "question": "What is 14 / 2?", "answer": "7.0"},
        {"id": "d", "source": "s", "question": "   ", "answer": "1"},  # no question: copied, no k
        {"id": "e", "source": "s", "question": "What is 1 + 1?"},  # no answer: copied, no k
    ]


def run_tool(tmp_path, model, engine, n=3):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in pool_rows()))
    out = tmp_path / "out" / "pool_k.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "ares_lit.tools.pass_rate", "--model_path", str(model), "--pool", str(pool),
        "--output", str(out), "--n", str(n), "--engine", engine, "--temperature", "0", "--max_tokens", "24",
        "--max_model_len", "256", "--kv_cache_gb", "0.25",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], res


def check(rows, res, n):
    by_id = {r["id"]: r for r in rows}
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "e"]  # order and every row kept
    assert (by_id["a"]["k"], by_id["a"]["n"]) == (n, n)
    assert (by_id["b"]["k"], by_id["b"]["n"]) == (0, n)
    assert (by_id["c"]["k"], by_id["c"]["n"]) == (n, n)  # 7 == 7.0 through math-verify
    assert "k" not in by_id["d"] and "k" not in by_id["e"]
    assert by_id["a"]["traces"] == ["x"] and by_id["a"]["source"] == "s"  # other fields untouched
    assert "3 problems x" in res.stdout and "2 rows skipped" in res.stdout
    assert "pass rate" in res.stderr  # the tqdm bar


def test_pass_rate_hf_engine(tmp_path, sevens_model):
    rows, res = run_tool(tmp_path, sevens_model, "hf", n=3)
    check(rows, res, 3)


@pytest.mark.slow
def test_pass_rate_vllm_engine(tmp_path, sevens_model):
    rows, res = run_tool(tmp_path, sevens_model, "vllm", n=2)
    check(rows, res, 2)
