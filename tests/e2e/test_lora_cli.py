"""LoRA through the real CLI, both stages, on the tiny random Qwen2 (no mocks).

The cold start trains an adapter and exports the merged model (and the adapter beside it). AEPO
starts from that merged model twice, with the vLLM engine: full fine-tuning (whose panels
tests/e2e/test_aepo_cli.check_panels checks) and a new LoRA adapter. Then:
- vLLM's log-probs match the trainer's as closely with LoRA as with full fine-tuning (the
  `rollout/engine_logprob_gap` panel of both runs; the second step samples after an update);
- the policy changed and the base did not: the exported merged model equals the start model
  plus the exported adapter, log-prob for log-prob, and differs from the start model;
- last.ckpt holds the adapter only, a fraction of the full run's checkpoint;
- `python -m ares_lit.export` writes the merged model (default) and the adapter (--adapter_only)
  from that checkpoint, and `infer` and `evaluate` take the adapter folder as a model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.e2e.aepo_overlay import write_overlay
from tests.e2e.test_aepo_cli import check_panels, fit, scalars
from tests.e2e.test_coldstart_cli import coldstart_overlay, run
from tests.strategies import run_cli

ROOT = Path(__file__).resolve().parents[2]
LORA = "model:\n  init_args:\n    lora: {r: 8, alpha: 16}\n"


def _lora_overlay(tmp: Path) -> str:
    path = tmp / "lora.yaml"
    path.write_text(LORA)
    return str(path)


def _logprobs(model, seq: list[int], start: int) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)[start - 1 :]


def _export(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARES_LIT_CACHE": str(tmp.parent / "ares_cache")}
    return subprocess.run([sys.executable, "-m", "ares_lit.export", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


def test_lora_cold_start_then_aepo_on_vllm_as_close_as_full_fine_tuning(tmp_path):
    from peft import PeftModel

    cs, full, lora = tmp_path / "coldstart", tmp_path / "full", tmp_path / "lora"
    for d in (cs, full, lora):
        d.mkdir()
    res = run(cs, "configs/coldstart.yaml", "--config", str(coldstart_overlay(cs)), "--config", _lora_overlay(cs),
              "--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "[ares_lit] LoRA r=8:" in res.stdout
    start, cs_adapter = cs / "hf_model", cs / "adapter"
    assert (cs_adapter / "adapter_config.json").is_file() and json.loads((start / "ares_export.json").read_text())["lora"] == "merged"

    # AEPO from the merged cold-start model: full fine-tuning, then a new adapter (the documented default).
    for d, extra in ((full, []), (lora, ["--config", _lora_overlay(lora)])):
        fit(d, "--config", str(write_overlay(d, "vllm", steps=2)), f"--model.init_args.model_path={start}", *extra)
    check_panels(full, "vllm")
    gaps = {name: [e.value for e in scalars(next((d / "runs" / "aepo").glob("version_*"))).Scalars("rollout/engine_logprob_gap")]
            for name, d in (("full", full), ("lora", lora))}
    print("rollout/engine_logprob_gap by step:", gaps)  # docs/lora.md quotes this line (pytest -s)
    assert len(gaps["lora"]) == 2 and max(gaps["lora"]) < 1e-4, gaps
    assert max(gaps["lora"]) <= 3 * max(gaps["full"]) + 1e-6, gaps  # as small as full fine-tuning's

    # The merged export = the start model + the adapter (so the base did not move), and it moved the policy.
    run_dir = next((lora / "runs" / "aepo").glob("version_*"))
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model", dtype=torch.float32).eval()
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32), run_dir / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
    seq = torch.randint(5, 400, (48,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(_logprobs(merged, seq, 20), _logprobs(rebuilt, seq, 20), atol=1e-5, rtol=0)
    assert (_logprobs(merged, seq, 20) - _logprobs(base, seq, 20)).abs().max() > 1e-4

    # last.ckpt: the adapter and its optimizer state only.
    ckpt = torch.load(lora / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    full_size, lora_size = (os.path.getsize(d / "ckpt" / "last.ckpt") for d in (full, lora))
    assert lora_size < 0.25 * full_size, (lora_size, full_size)

    # The export CLI from that checkpoint: merged (default) and --adapter_only.
    res = _export(lora, "--checkpoint", str(lora / "ckpt" / "last.ckpt"), "--output_dir", "exported")
    assert res.returncode == 0, res.stderr[-3000:]
    mine, theirs = load_file(lora / "exported" / "model.safetensors"), load_file(run_dir / "hf_model" / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    res = _export(lora, "--checkpoint", str(lora / "ckpt" / "last.ckpt"), "--output_dir", "adapter_only", "--adapter_only")
    assert res.returncode == 0, res.stderr[-3000:]
    mine, theirs = (load_file(d / "adapter_model.safetensors") for d in (lora / "adapter_only", run_dir / "adapter"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    res = _export(full, "--checkpoint", str(full / "ckpt" / "last.ckpt"), "--output_dir", "x", "--adapter_only")
    assert res.returncode == 2 and "full fine-tuning checkpoint" in res.stderr

    # infer and evaluate take the adapter folder as a model (merged once into the cache).
    res = run_cli(lora, "--model_path", str(lora / "adapter_only"), "--question", "What is 2 + 3?", "--max_tokens", "8",
                  module="ares_lit.infer", timeout=300)
    assert res.returncode == 0 and "=== response 1/1" in res.stdout, res.stderr[-3000:]
    data = lora / "eval.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    res = run_cli(lora, "--model_path", str(lora / "adapter_only"), "--data", str(data), "--n", "1", "--k", "1",
                  "--max_tokens", "8", "--engine", "hf", "--output_dir", str(lora / "eval"), "--no_progress",
                  module="ares_lit.evaluate", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((lora / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_lora_resume_continues_exactly(tmp_path):
    """2 steps, saved, resumed to 3 = 3 uninterrupted steps: same adapter, same losses (hf engine)."""
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    for d in (straight, first, resumed):
        d.mkdir()
    fit(straight, "--config", str(write_overlay(straight, "hf", steps=3)), "--config", _lora_overlay(straight))
    fit(first, "--config", str(write_overlay(first, "hf", steps=2)), "--config", _lora_overlay(first))
    fit(resumed, "--config", str(write_overlay(resumed, "hf", steps=3)), "--config", _lora_overlay(resumed),
        f"--ckpt_path={first / 'ckpt' / 'last.ckpt'}")
    a = torch.load(straight / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    b = torch.load(resumed / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert a["global_step"] == b["global_step"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys() and all(".lora_" in k for k in a["state_dict"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], atol=1e-6, rtol=1e-5, msg=k)
    assert any(float(v.abs().max()) > 0 for k, v in b["state_dict"].items() if "lora_B" in k)  # it trained
    losses = {}
    for name, d in (("straight", straight), ("resumed", resumed)):
        acc = scalars(sorted((d / "runs" / "aepo").glob("version_*"))[-1])
        losses[name] = {e.step: e.value for e in acc.Scalars("train/loss")}
    step3 = max(losses["straight"])
    assert step3 in losses["resumed"], losses
    assert abs(losses["straight"][step3] - losses["resumed"][step3]) <= 1e-5 * max(1.0, abs(losses["straight"][step3])), losses


@pytest.mark.slow
def test_lora_under_ddp_two_ranks(tmp_path):
    """2 DDP processes (gloo): the adapter trains, the ranks keep one controller state, last.ckpt holds
    the adapter only, and the merged export equals the base plus the exported adapter."""
    from peft import PeftModel

    from tests.e2e.test_ddp_cli import fit_two_ranks, overlay_with_state_dump, read_lines

    fit_two_ranks(tmp_path, overlay_with_state_dump(tmp_path), "--config", _lora_overlay(tmp_path))
    rank0, rank1 = (read_lines(tmp_path / "state" / f"state_rank{r}.jsonl") for r in (0, 1))
    assert [s["shared"] for s in rank0] == [s["shared"] for s in rank1]
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    assert any(float(v.abs().max()) > 0 for k, v in ckpt["state_dict"].items() if "lora_B" in k)
    run_dir = next((tmp_path / "runs" / "aepo").glob("version_*"))
    base_path = json.loads((run_dir / "hf_model" / "ares_export.json").read_text())["source"]
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "hf_model", dtype=torch.float32).eval()
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), run_dir / "adapter").eval()
    seq = torch.randint(5, 400, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(_logprobs(merged, seq, 10), _logprobs(rebuilt, seq, 10), atol=1e-5, rtol=0)
