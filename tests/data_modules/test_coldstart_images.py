"""ColdstartDataModule with images: bad images counted, image tokens in the length filter, cached PNGs,
and SFT batches whose pixel_values / image_grid_thw match the expanded placeholders. Real files, the
tiny Qwen2.5-VL tokenizer and image processor.
"""

import json
import os

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from ares_lit.grading import Grader, extract_boxed
from data_modules.coldstart import DROP_REASONS, ColdstartDataModule
from data_modules.coldstart_pool import VISUAL_SOURCES, generate_visual_pool
from data_modules.sft import collate_sft

PATCH_DIM = 3 * 2 * 14 * 14  # channels · temporal patch · patch²


def trace(m: int, answer: str) -> str:
    return f"<think>\n{' 1' * m}\n</think>\n\\boxed{{{answer}}}"


def row(i, k, images=None, **extra):
    r = {"id": f"r{i}", "source": "vqa" if images else "text", "question": f"What is {i}?", "answer": str(i),
         "k": k, "n": 8, "traces": [trace(m, str(i)) for m in (4, 12)], **extra}
    if images is not None:
        r["images"] = images
    return r


@pytest.fixture(scope="module")
def vl_tok(vl_path):
    return AutoTokenizer.from_pretrained(vl_path)


@pytest.fixture()
def pool(tmp_path):
    """A pool file with text rows, good image rows (4 and 16 vision tokens), bad ones and a huge one."""
    d = tmp_path / "pool"
    (d / "img").mkdir(parents=True)
    Image.new("RGB", (56, 56), (250, 0, 0)).save(d / "img" / "small.png")
    Image.new("RGBA", (112, 112), (0, 0, 250, 128)).save(d / "img" / "medium.png")
    Image.new("RGB", (448, 448), (0, 250, 0)).save(d / "img" / "big.png")
    (d / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    rows = [row(i, k) for i, k in enumerate((0, 4, 8, 8))]
    rows += [
        row(10, 0, ["img/small.png"]),
        row(11, 8, ["img/medium.png", "img/small.png"]),
        row(12, 4, "img/medium.png"),  # one image, not in a list
        row(13, 8, [str(d / "img" / "small.png")]),  # absolute path
        row(14, 2, ["img/missing.png"]),
        row(15, 2, ["img/small.png", "img/corrupt.png"]),
        row(16, 2, ["img/big.png"]),  # 256 vision tokens: too long for max_length 300
        row(17, 2, ["img/small.png"], question="Look at <|image_pad|> here"),  # placeholders ≠ images
    ]
    path = d / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dm(path, vl_path, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("image_key", "images")
    dm = ColdstartDataModule(path=str(path), tokenizer_path=vl_path, id_key="id", size=100, batch_size=3,
                             max_length=300, **kw)
    dm.setup("fit")
    return dm


def test_images_are_checked_counted_and_cached(pool, vl_path, tmp_path):
    dm = _dm(pool, vl_path, tmp_path)
    assert dm.report["dropped"] == dict.fromkeys(DROP_REASONS, 0) | {
        "missing_image": 1, "bad_image": 1, "malformed": 1, "too_long": 1,
    }
    assert dm.drop_counts == dm.report["dropped"]
    assert sorted(r["id"] for r in dm.records) == ["r0", "r1", "r10", "r11", "r12", "r13", "r2", "r3"]
    assert dm.report["modality_selected"] == {"text": 4, "multimodal": 4}
    by_id = {r["id"]: r for r in dm.records}
    # The selected images live in the cache as PNG, referred to relative to it, with their pixels intact.
    for rid, originals in {"r10": ["small"], "r11": ["medium", "small"], "r12": ["medium"], "r13": ["small"]}.items():
        names = by_id[rid]["images"]
        assert len(names) == len(originals) and all(n.startswith("images/") and n.endswith(".png") for n in names)
        for name, original in zip(names, originals):
            with Image.open(pool.parent / "img" / f"{original}.png") as src, Image.open(dm.cache_path / name) as kept:
                assert kept.mode == "RGB" and kept.tobytes() == src.convert("RGB").tobytes()
    saved = [json.loads(line) for line in (dm.cache_path / "curated.jsonl").read_text().splitlines()]
    assert {r["id"]: r.get("images") for r in saved} == {r["id"]: r.get("images") for r in dm.records}


def test_features_and_batches_match_the_expanded_placeholders(pool, vl_path, vl_tok, tmp_path):
    dm = _dm(pool, vl_path, tmp_path)
    image_id = dm.processor.image_token_id
    tokens = {"r10": [4], "r11": [16, 4], "r12": [16], "r13": [4]}
    feats = {r["id"]: f for r, f in zip(dm.records, dm._features)}
    for rid, feat in feats.items():
        want = tokens.get(rid, [])
        assert feat["prompt_ids"].count(image_id) == sum(want)
        assert (feat.get("multimodal") is None) == (not want)
        if want:
            grid = feat["multimodal"].image_grid_thw
            assert (grid.prod(-1) // 4).tolist() == want  # merge 2×2: four patches per vision token
            assert feat["multimodal"].pixel_values.shape == (int(grid.prod(-1).sum()), PATCH_DIM)
        # Prompt + response fit max_length with the image tokens counted.
        assert len(feat["prompt_ids"]) + len(feat["response_ids"]) <= 300
    pad = vl_tok.pad_token_id
    order = ["r0", "r11", "r1", "r13"]  # text, two images, text, one image
    batch = collate_sft([feats[r] for r in order], pad, 8)
    grid = batch["image_grid_thw"]
    assert grid.shape == (3, 3) and (grid.prod(-1) // 4).tolist() == [16, 4, 4]  # images in row order
    assert batch["pixel_values"].shape == (int(grid.prod(-1).sum()), PATCH_DIM)
    per_row = (batch["input_ids"] == image_id).sum(-1).tolist()
    assert per_row == [0, 20, 0, 4] and sum(per_row) == int(grid.prod(-1).sum()) // 4
    assert bool((batch["labels"][batch["input_ids"] == image_id] == -100).all())  # image tokens are prompt
    expected = torch.cat([feats["r11"]["multimodal"].pixel_values, feats["r13"]["multimodal"].pixel_values])
    assert torch.equal(batch["pixel_values"], expected)
    text_only = collate_sft([feats["r0"], feats["r1"]], pad, 8)
    assert "pixel_values" not in text_only and "image_grid_thw" not in text_only
    # Every loader batch is consistent the same way.
    seen_images = 0
    for b in dm.train_dataloader():
        n_tokens = int((b["input_ids"] == image_id).sum())
        if "image_grid_thw" in b:
            assert n_tokens == int(b["image_grid_thw"].prod(-1).sum()) // 4
            seen_images += b["image_grid_thw"].shape[0]
        else:
            assert n_tokens == 0
    assert seen_images == 5


def test_cache_is_reused_and_keyed_by_pixel_limits(pool, vl_path, tmp_path):
    first = _dm(pool, vl_path, tmp_path)
    again = _dm(pool, vl_path, tmp_path)
    assert again.reused_cache and again.cache_path == first.cache_path
    for a, b in zip(first._features, again._features):
        assert a["prompt_ids"] == b["prompt_ids"]
        if a.get("multimodal") is not None:
            assert torch.equal(a["multimodal"].pixel_values, b["multimodal"].pixel_values)
    # A max_pixels under 448² shrinks the big image to 112x112 (16 tokens): another cache, and it fits.
    smaller = _dm(pool, vl_path, tmp_path, max_pixels=112 * 112)
    assert not smaller.reused_cache and smaller.cache_path != first.cache_path
    assert smaller.drop_counts["too_long"] == 0 and "r16" in {r["id"] for r in smaller.records}


def test_visual_pool_is_deterministic_and_its_traces_are_graded_right():
    rows = generate_visual_pool(18, seed=2)
    again = generate_visual_pool(9, seed=2)
    assert [{k: v for k, v in r.items() if k != "images"} for r in again] == [
        {k: v for k, v in r.items() if k != "images"} for r in rows[:9]
    ]
    assert rows[4]["images"][0].tobytes() == again[4]["images"][0].tobytes()
    assert {r["source"] for r in rows} == set(VISUAL_SOURCES)
    with Grader(timeout=10) as grader:
        for r in rows:
            right = wrong = 0
            for cand in r["traces"]:
                text, flag = (cand["text"], cand.get("correct")) if isinstance(cand, dict) else (cand, None)
                if extract_boxed(text) is None:  # the flagged-correct trace without a box
                    assert flag is True
                    continue
                ok = grader.grade(text, r["answer"])
                assert flag is None or flag == ok
                right, wrong = right + ok, wrong + (not ok)
            assert right == 3 and wrong in (1, 2)  # short, medium, very long; one or two slips


def test_builtin_visual_pool_through_the_datamodule(vl_path, tmp_path):
    dm = ColdstartDataModule(path="builtin:visual", tokenizer_path="builtin:tiny-qwen2.5-vl", builtin_size=27, size=12,
                             max_length=1024, batch_size=4, cache_dir=str(tmp_path / "cache"))
    assert dm.hparams.image_key == "images"
    dm.setup("fit")
    assert len(dm.records) == 12 and all(r["multimodal"] for r in dm.records)
    assert set(dm.report["sources"]) == set(VISUAL_SOURCES)
    assert dm.report["candidates"]["incorrect"] > 0 and dm.report["selected_incorrect"] == 0
    with Grader(timeout=10) as grader:
        assert all(grader.grade(r["response"], r["answer"]) for r in dm.records)
    batch = next(iter(dm.train_dataloader()))
    image_id = dm.processor.image_token_id
    assert int((batch["input_ids"] == image_id).sum()) == int(batch["image_grid_thw"].prod(-1).sum()) // 4
    assert batch["image_grid_thw"].shape[0] == batch["input_ids"].shape[0]  # one picture per row
