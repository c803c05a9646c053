"""PromptDataModule with images: real files, bytes and `datasets` Image columns, the tiny Qwen2.5-VL.

Every prompt's ids must be the chat template's ids with each `<|image_pad|>` expanded to the image's
vision-token count, so that `max_prompt_length` counts image tokens; bad images are dropped and
counted by reason.
"""

import json
import os

import pytest
from PIL import Image
from transformers import AutoTokenizer

from ares_lit.vision import VisionProcessor
from data_modules.prompts import DROP_REASONS, PromptDataModule, collate_prompts

PAD = "<|image_pad|>"
# Vision tokens of an image whose sides are multiples of 28 (patch 14 × merge 2) within the pixel limits.
TOKENS = {"small": (56 // 28) * (56 // 28), "medium": (112 // 28) * (112 // 28), "big": (448 // 28) * (448 // 28)}


@pytest.fixture(scope="module")
def vl_tok(vl_path):
    return AutoTokenizer.from_pretrained(vl_path)


@pytest.fixture()
def image_dir(tmp_path):
    """A data folder with images of known token counts, a corrupt file, and a too-wide strip."""
    d = tmp_path / "data"
    (d / "img").mkdir(parents=True)
    Image.new("RGB", (56, 56), (200, 10, 10)).save(d / "img" / "small.png")
    Image.new("L", (112, 112), 90).save(d / "img" / "medium.png")  # grayscale: converted to RGB
    Image.new("RGB", (448, 448), (10, 10, 200)).save(d / "img" / "big.png")
    Image.new("RGB", (1000, 4), (10, 200, 10)).save(d / "img" / "strip.png")  # aspect 250: Qwen refuses it
    (d / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return d


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _dm(path, vl_path, **kw):
    kw.setdefault("image_key", "images")
    dm = PromptDataModule(path=str(path), tokenizer_path=vl_path, shuffle=False, batch_size=1, **kw)
    dm.setup("fit")
    return dm


def _text_tokens(tok, record):
    """Tokens of the prompt text other than its image placeholders."""
    ids = tok(record["prompt_text"], add_special_tokens=False)["input_ids"]
    return len(ids) - record["prompt_text"].count(PAD)


def test_jsonl_images_are_loaded_expanded_and_bad_ones_counted(image_dir, vl_path, vl_tok):
    rows = [
        {"question": "Q0 one small", "answer": "0", "images": ["img/small.png"]},
        {"question": "Q1 two", "answer": "1", "images": ["img/small.png", "img/medium.png"]},
        {"question": "Q2 missing", "answer": "2", "images": ["img/nope.png"]},
        {"question": "Q3 corrupt", "answer": "3", "images": ["img/corrupt.png"]},
        {"question": "Q4 big", "answer": "4", "images": ["img/big.png"]},
        {"question": "Q5 text only", "answer": "5", "images": None},
        {"question": "Q6 one path, not a list", "answer": "6", "images": "img/medium.png"},
        {"question": f"Q7 the text holds a placeholder {PAD}", "answer": "7", "images": ["img/small.png"]},
        {"question": "Q8 second image missing", "answer": "8", "images": ["img/small.png", "img/gone.png"]},
        {"question": "Q9 absolute path", "answer": "9", "images": [str(image_dir / "img" / "medium.png")]},
        {"question": "Q10 not an image", "answer": "10", "images": [123]},
        {"question": "Q11 too wide", "answer": "11", "images": ["img/strip.png"]},
        {"question": "Q12 empty list", "answer": "12", "images": []},
    ]
    path = _write(image_dir / "train.jsonl", rows)
    # Text alone is < 120 tokens; the big image alone is 256 vision tokens.
    dm = _dm(path, vl_path, max_prompt_length=200)
    assert dm.drop_counts == {
        "malformed": 1, "empty_prompt": 0, "no_answer": 0, "missing_image": 2, "bad_image": 3, "too_long": 1,
    }
    assert set(dm.drop_counts) == set(DROP_REASONS)
    assert isinstance(dm.processor, VisionProcessor)
    records = {r["answer"]: r for r in dm.train_records}
    assert sorted(records, key=int) == ["0", "1", "5", "6", "9", "12"]
    expected_tokens = {"0": TOKENS["small"], "1": TOKENS["small"] + TOKENS["medium"], "5": 0, "6": TOKENS["medium"],
                       "9": TOKENS["medium"], "12": 0}
    expected_sizes = {
        "0": [(56, 56)], "1": [(56, 56), (112, 112)], "5": [], "6": [(112, 112)], "9": [(112, 112)], "12": [],
    }
    image_id = dm.processor.image_token_id
    for answer, record in records.items():
        assert set(record) == {"id", "question", "answer", "prompt_text", "prompt_ids", "images", "num_image_tokens"}
        assert [im.size for im in record["images"]] == expected_sizes[answer]
        assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in record["images"])
        assert record["num_image_tokens"] == expected_tokens[answer]
        assert record["prompt_ids"].count(image_id) == expected_tokens[answer]
        assert record["prompt_text"].count(PAD) == len(record["images"])
        # prompt_ids = text tokens + image tokens, and collapsing gives the template's own ids back.
        assert len(record["prompt_ids"]) == _text_tokens(vl_tok, record) + expected_tokens[answer]
        assert dm.processor.collapse(record["prompt_ids"]) == vl_tok(record["prompt_text"], add_special_tokens=False)[
            "input_ids"
        ]
        assert len(record["prompt_ids"]) <= 200
    # The placeholders sit where the template put them: the run of image tokens is contiguous.
    ids = records["0"]["prompt_ids"]
    first = ids.index(image_id)
    assert ids[first : first + TOKENS["small"]] == [image_id] * TOKENS["small"]
    # Batches hand the decoded images on in shallow copies of the records (no pixel copies).
    (copy,) = collate_prompts([records["1"]])["prompts"]
    assert copy is not records["1"] and copy["images"] is records["1"]["images"]


def test_too_long_counts_image_tokens_and_max_pixels_bounds_them(image_dir, vl_path):
    names = ["img/small.png", "img/big.png"]
    rows = [{"question": f"Q{i}", "answer": str(i), "images": [name]} for i, name in enumerate(names)]
    path = _write(image_dir / "train.jsonl", rows)
    dm = _dm(path, vl_path, max_prompt_length=200)
    assert [r["answer"] for r in dm.train_records] == ["0"] and dm.drop_counts["too_long"] == 1
    text_only = len(dm.train_records[0]["prompt_ids"]) - TOKENS["small"]
    # The same rows with max_pixels = 112·112: the big image is resized to 112x112, 16 tokens, and fits.
    dm = _dm(path, vl_path, max_prompt_length=200, max_pixels=112 * 112)
    assert dm.drop_counts["too_long"] == 0
    big = dm.train_records[1]
    assert big["num_image_tokens"] == TOKENS["medium"] and big["images"][0].size == (448, 448)  # kept as loaded
    assert len(big["prompt_ids"]) == text_only + TOKENS["medium"]
    # A limit just under the big prompt's length drops it again: the count is exact.
    dm = _dm(path, vl_path, max_prompt_length=len(big["prompt_ids"]) - 1, max_pixels=112 * 112)
    assert dm.drop_counts["too_long"] == 1


def test_parquet_bytes_and_path_structs(image_dir, vl_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    small = (image_dir / "img" / "small.png").read_bytes()
    table = pa.Table.from_pylist(
        [
            {"question": "raw bytes", "answer": "1", "images": [{"bytes": small, "path": None}]},
            {"question": "a path only", "answer": "2", "images": [{"bytes": None, "path": "img/medium.png"}]},
            {"question": "corrupt bytes", "answer": "3", "images": [{"bytes": b"not an image", "path": None}]},
            {"question": "a missing path", "answer": "4", "images": [{"bytes": None, "path": "img/none.png"}]},
        ]
    )
    pq.write_table(table, image_dir / "train.parquet")
    dm = _dm(image_dir / "train.parquet", vl_path)
    assert dm.drop_counts == dict.fromkeys(DROP_REASONS, 0) | {"missing_image": 1, "bad_image": 1}
    assert [(r["answer"], r["num_image_tokens"]) for r in dm.train_records] == [("1", 4), ("2", 16)]


@pytest.mark.parametrize("as_list", [False, True])
def test_datasets_image_feature_round_trip(tmp_path, vl_path, as_list):
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    pictures = [Image.new("RGB", (56 * (i + 1), 56), (40 * i, 100, 30)) for i in range(3)]
    column = ImageFeature()
    features = Features(
        {"question": Value("string"), "answer": Value("string"), "picture": List(column) if as_list else column}
    )
    data = {
        "question": [f"What is drawn {i}?" for i in range(3)],
        "answer": [str(i) for i in range(3)],
        "picture": [[p] for p in pictures] if as_list else pictures,
    }
    Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / "pics.parquet"))
    dm = _dm(tmp_path / "pics.parquet", vl_path, image_key="picture")
    assert dm.num_rows == 3 and sum(dm.drop_counts.values()) == 0
    for record, picture in zip(dm.train_records, pictures):
        (image,) = record["images"]
        assert image.size == picture.size and image.tobytes() == picture.tobytes()
        w, h = picture.size
        assert record["num_image_tokens"] == (w // 28) * (h // 28)


def test_val_images_resolve_against_the_val_file(image_dir, vl_path):
    train = _write(image_dir / "train.jsonl", [{"question": "Q", "answer": "1", "images": ["img/small.png"]}])
    other = image_dir.parent / "val"
    (other / "pics").mkdir(parents=True)
    Image.new("RGB", (112, 112)).save(other / "pics" / "v.png")
    val = _write(other / "val.jsonl", [{"question": "V", "answer": "2", "images": ["pics/v.png"]},
                                       {"question": "W", "answer": "3", "images": ["img/small.png"]}])
    dm = _dm(train, vl_path, val_path=val)
    assert [r["num_image_tokens"] for r in dm.val_records] == [16]
    assert dm.val_drop_counts["missing_image"] == 1  # img/small.png is relative to the train file, not this one


def test_builtin_visual_sets_image_key_and_expands(vl_path):
    dm = PromptDataModule(path="builtin:visual", tokenizer_path="builtin:tiny-qwen2.5-vl", builtin_size=9,
                          builtin_seed=3, batch_size=3, max_prompt_length=400)
    assert dm.image_key == "images" and dm.hparams.image_key == "images"
    dm.setup("fit")
    assert dm.num_rows == 9 and sum(dm.drop_counts.values()) == 0
    image_id = dm.processor.image_token_id
    for record in dm.train_records:
        (image,) = record["images"]
        assert record["num_image_tokens"] == (image.width // 28) ** 2 in (16, 36, 64)
        assert record["prompt_ids"].count(image_id) == record["num_image_tokens"]
    # A small max_prompt_length keeps the 112-pixel pictures and drops the 224-pixel ones.
    short = min(len(r["prompt_ids"]) for r in dm.train_records if r["num_image_tokens"] == 64) - 1
    dm = PromptDataModule(path="builtin:visual", tokenizer_path=vl_path, builtin_size=9, builtin_seed=3,
                          batch_size=1, max_prompt_length=short)
    dm.setup("fit")
    assert all(r["num_image_tokens"] < 64 for r in dm.train_records)
    assert dm.drop_counts["too_long"] == 9 - dm.num_rows >= 1


def test_pixel_limits_are_checked_at_construction():
    with pytest.raises(ValueError, match="need 0 < data.min_pixels <= data.max_pixels"):
        PromptDataModule(path="builtin:visual", min_pixels=5000, max_pixels=4000)
