"""PromptDataModule and the ARES prompt: loading, bad-row accounting, batches, resume, refill."""

import copy
import hashlib
import json
import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoTokenizer

from ares_lit.models.tiny import build_tiny_tokenizer
from ares_lit.prompting import ARES_PROMPT_SUFFIX, build_prompt_text
from data_modules.prompts import DROP_REASONS, PromptDataModule
from data_modules.sampler import ResumableBatchSampler

SPEC_SUFFIX = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)


def _rows(n):
    return [{"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _dm(path, tok_dir, **kw):
    dm = PromptDataModule(path=str(path), tokenizer_path=tok_dir, **kw)
    dm.setup("fit")
    return dm


def _ids(batch):
    return [r["id"] for r in batch["prompts"]]


# ---------------------------------------------------------------------------------------- prompts
def test_prompt_text_has_suffix_and_chat_markers(tok):
    assert ARES_PROMPT_SUFFIX == SPEC_SUFFIX
    text = build_prompt_text(tok, "What is 2 + 3?")
    assert text == f"<|im_start|>user\nWhat is 2 + 3?\n{SPEC_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    with_sys = build_prompt_text(tok, "Q", suffix="", system_prompt="Be brief.")
    assert with_sys == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_without_chat_template_is_refused(tok_dir):
    bare = AutoTokenizer.from_pretrained(tok_dir)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt_text(bare, "Q")


# ---------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt", ["jsonl", "json", "json-lines-in-.json", "parquet"])
def test_loads_each_file_format(tmp_path, tok_dir, tok, fmt):
    rows = _rows(6)
    rows[0]["answer"] = 1  # numbers are accepted and become strings
    if fmt == "jsonl":
        path = _write_jsonl(tmp_path / "train.jsonl", rows)
    elif fmt == "json":
        path = tmp_path / "train.json"
        path.write_text(json.dumps(rows))
    elif fmt == "json-lines-in-.json":
        path = _write_jsonl(tmp_path / "train.json", rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows[0]["answer"] = "1"  # a parquet column has one type
        path = tmp_path / "train.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    dm = _dm(path, tok_dir, shuffle=False, batch_size=2)
    assert dm.num_rows == 6 and dm.drop_counts == dict.fromkeys(DROP_REASONS, 0)
    rec = dm.train_records
    assert [r["question"] for r in rec] == [r["question"] for r in _rows(6)]
    assert [r["answer"] for r in rec] == ["1", "3", "5", "7", "9", "11"]
    assert rec[2]["prompt_text"] == build_prompt_text(tok, "What is 2 + 3?")
    assert rec[2]["prompt_ids"] == tok(rec[2]["prompt_text"], add_special_tokens=False)["input_ids"]
    assert tok.decode(rec[2]["prompt_ids"]) == rec[2]["prompt_text"]
    assert set(rec[0]) == {"id", "question", "answer", "prompt_text", "prompt_ids"}


def test_builtin_math_default(tok_dir):
    dm = PromptDataModule(tokenizer_path=tok_dir, builtin_size=30, builtin_seed=2)
    dm.setup()
    assert dm.num_rows == 30
    assert dm.train_records[0]["question"].startswith("What is ")
    assert SPEC_SUFFIX in dm.train_records[0]["prompt_text"]


def test_builtin_math_test_split_is_the_held_out_set(tok_dir):
    from data_modules.builtin_math import TEST_SIZE, generate_problems, split_of

    dm = PromptDataModule(path="builtin:math:test", tokenizer_path=tok_dir, builtin_size=5, builtin_seed=1)
    dm.setup()
    assert dm.num_rows == TEST_SIZE == 48  # builtin_size does not apply to a test split
    records = dm.train_records
    assert [r["question"] for r in records] == [p["question"] for p in generate_problems(TEST_SIZE, 1, split="test")]
    assert all(split_of(r) == "test" for r in records)
    assert [r["level"] for r in records[:3]] == ["easy", "medium", "hard"]
    assert {r["source"] for r in records} == {"builtin:math"}
    assert "options" not in records[0]

    dm = PromptDataModule(tokenizer_path=tok_dir, builtin_size=300, builtin_seed=1, val_path="builtin:math:test")
    dm.setup()
    assert len(dm.val_records) == TEST_SIZE and dm.num_rows == 300
    assert not {r["question"] for r in dm.train_records} & {r["question"] for r in dm.val_records}
    assert dm.image_key is None


def test_builtin_visual_test_split_sets_image_key():
    for kw in ({"path": "builtin:visual:test"}, {"path": "builtin:visual", "val_path": "builtin:visual:test"},
               {"path": "builtin:math", "val_path": "builtin:visual"}):
        dm = PromptDataModule(**kw)
        assert dm.image_key == "images" and dm.hparams.image_key == "images", kw
    assert PromptDataModule(path="builtin:visual:test", image_key="pics").image_key == "pics"
    assert PromptDataModule(path="builtin:math", val_path="builtin:math:test").image_key is None


def test_level_source_and_options_are_carried(tmp_path, tok_dir):
    rows = [
        {"question": "Q0", "answer": "1", "level": "hard", "source": "gsm8k", "options": ["1", "2", "3"]},
        {"question": "Q1", "answer": "B", "level": 3, "source": "mmlu", "choices": {"A": "x", "B": 7}},
        {"question": "Q2", "answer": "A", "difficulty": "easy", "choices": {"label": ["A", "B"], "text": ["p", "q"]}},
        {"question": "Q3", "answer": "4", "level": None, "difficulty": 2, "options": "not a list"},
        {"question": "Q4", "answer": "5", "options": ["ok", {"bad": 1}], "source": None},
        {"question": "Q5", "answer": "6"},
    ]
    dm = _dm(_write_jsonl(tmp_path / "mc.jsonl", rows), tok_dir, shuffle=False, batch_size=2)
    assert dm.num_rows == 6 and sum(dm.drop_counts.values()) == 0  # nothing is dropped for lacking them
    extra = [{k: r[k] for k in ("level", "source", "options") if k in r} for r in dm.train_records]
    assert extra == [
        {"level": "hard", "source": "gsm8k", "options": ["1", "2", "3"]},
        {"level": "3", "source": "mmlu", "options": {"A": "x", "B": "7"}},
        {"level": "easy", "options": {"A": "p", "B": "q"}},
        {"level": "2"},
        {},
        {},
    ]
    batch = next(iter(dm.train_dataloader()))
    assert batch["prompts"][0]["options"] == ["1", "2", "3"]


def test_custom_column_names_and_ids(tmp_path, tok_dir):
    rows = [{"q": f"Compute {i} * 2.", "a": str(2 * i), "uid": f"u{i}"} for i in range(4)]
    path = _write_jsonl(tmp_path / "custom.jsonl", rows)
    dm = _dm(path, tok_dir, question_key="q", answer_key="a", id_key="uid", shuffle=False, batch_size=2)
    assert [r["id"] for r in dm.train_records] == ["u0", "u1", "u2", "u3"]
    assert [r["question"] for r in dm.train_records] == [f"Compute {i} * 2." for i in range(4)]
    assert [r["answer"] for r in dm.train_records] == ["0", "2", "4", "6"]


# A Qwen2-VL-style template: list content with image entries becomes vision placeholders.
VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_image_key_needs_a_vision_language_model(tmp_path, tok_dir):
    """Images need the policy's image processor: a text model fails in setup, before any image is read.

    Real image handling is tested in test_prompts_images.py with the tiny Qwen2.5-VL.
    """
    rows = [{"question": f"What is shown {i}?", "answer": str(i), "img": [f"a{i}.png"]} for i in range(4)]
    path = _write_jsonl(tmp_path / "mm.jsonl", rows)
    with pytest.raises(ValueError, match="cannot render image content"):
        _dm(path, tok_dir, image_key="img")  # the text-only template has no image placeholders
    vl_dir = tmp_path / "vl_tok"  # a text model whose template renders images: still not a VL model
    vl = build_tiny_tokenizer(vl_dir)
    vl.chat_template = VL_TEMPLATE
    vl.save_pretrained(vl_dir)
    with pytest.raises(ValueError, match="image_key='img' needs a vision-language policy"):
        _dm(path, str(vl_dir), image_key="img")


@pytest.mark.parametrize("option", ["question_key", "answer_key", "id_key", "image_key"])
def test_unknown_column_is_reported_before_anything_else(tmp_path, tok_dir, monkeypatch, option):
    path = _write_jsonl(tmp_path / "train.jsonl", [{"q": "What is 1 + 1?", "a": "2"}] * 3)

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer must not load before the columns are checked")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_tokenizer)
    keys = {"question_key": "q", "answer_key": "a", option: "prompt"}
    dm = PromptDataModule(path=path, tokenizer_path=tok_dir, **keys)
    with pytest.raises(ValueError) as err:
        dm.setup()
    msg = str(err.value)
    assert f"data.{option}='prompt' is not a column of train.jsonl" in msg
    assert "columns are ['q', 'a']" in msg and f"--data.init_args.{option}" in msg


def test_bad_rows_are_dropped_and_counted_by_reason(tmp_path, tok_dir):
    good = _rows(3)
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        json.dumps({"question": "What is 9 + 9?"}).encode(),  # no_answer (missing)
        json.dumps({"question": "What is 8 + 8?", "answer": None}).encode(),  # no_answer (null)
        json.dumps({"question": "What is 7 + 7?", "answer": "  "}).encode(),  # no_answer (blank)
        json.dumps({"question": "", "answer": "1"}).encode(),  # empty_prompt
        json.dumps({"question": 5, "answer": "1"}).encode(),  # malformed: not a string
        b'{"question": "What is \xff\xfe?", "answer": "1"}',  # malformed: invalid UTF-8
        b'{"question": "What is \\ud800?", "answer": "1"}',  # malformed: lone surrogate
        b'{"question": "What is 1 +',  # malformed: not JSON
        b"[1, 2, 3]",  # malformed: not an object
        json.dumps({"question": "What is 1 + 1? " * 200, "answer": "2"}).encode(),  # too_long
        b"",  # blank lines are not rows
    ]
    path = tmp_path / "dirty.jsonl"
    path.write_bytes(b"\n".join(lines))
    dm = _dm(path, tok_dir, max_prompt_length=200, batch_size=1, shuffle=False)
    assert dm.drop_counts == {
        "malformed": 5, "empty_prompt": 1, "no_answer": 3, "missing_image": 0, "bad_image": 0, "too_long": 1
    }
    assert dm.num_rows == 3
    assert [r["question"] for r in dm.train_records] == [r["question"] for r in good]
    assert max(len(r["prompt_ids"]) for r in dm.train_records) <= 200


def test_all_bad_rows_is_a_clear_error(tmp_path, tok_dir):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "", "answer": "1"}\n{"question": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"no usable prompts in bad.jsonl: dropped .*'malformed': 1.*of 3 rows"):
        _dm(path, tok_dir)


def test_config_errors(tmp_path, tok_dir):
    with pytest.raises(ValueError, match="tokenizer_path"):
        PromptDataModule().setup()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PromptDataModule(batch_size=0)
    with pytest.raises(ValueError, match="unknown builtin"):
        PromptDataModule(path="builtin:chess", tokenizer_path=tok_dir).setup()
    with pytest.raises(ValueError, match="could not load 'no-such-org/no-such-set'.*local .json/.jsonl/.parquet"):
        PromptDataModule(path="no-such-org/no-such-set", tokenizer_path=tok_dir).setup()  # offline: fails at once
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        PromptDataModule(path=str(tmp_path / "missing.jsonl"), tokenizer_path=tok_dir).setup()
    path = _write_jsonl(tmp_path / "few.jsonl", _rows(3))
    with pytest.raises(ValueError, match="fewer than one step needs"):
        _dm(path, tok_dir, batch_size=4)


def test_the_module_owns_a_configured_tracker():
    dm = PromptDataModule(alpha_init=0.7, alpha_eta=0.1, easy_min=0.75, medium_min=0.25, target_momentum=0.5, history=2)
    tr = dm.tracker
    assert tr.alpha.tolist() == pytest.approx([0.7] * 3)
    assert (tr.alpha_eta, tr.easy_min, tr.medium_min, tr.target_momentum, tr.history) == (0.1, 0.75, 0.25, 0.5, 2)
    assert tr.assign(["a", "b"], torch.tensor([0.7, 0.2])).tolist() == [1, 2]  # 0.7 < easy_min=0.75
    with pytest.raises(ValueError, match="alpha_init"):
        PromptDataModule(alpha_init=5.0)
    assert (tr.alpha_update, tr.calibration_batches, tr.alpha_min_responses) == ("log_ratio", 5, 4)
    old = PromptDataModule(alpha_update="relative", calibration_batches=3, alpha_min_responses=2).tracker
    assert (old.alpha_update, old.alpha_eta, old.calibration_batches, old.alpha_min_responses) == ("relative", 0.05, 3, 2)


def test_settings_read_as_attributes():
    """The rollout callback sizes its engine from dm.max_prompt_length and the pixel limits."""
    dm = PromptDataModule(max_prompt_length=300, min_pixels=28 * 28, max_pixels=56 * 56, batch_size=3)
    assert (dm.max_prompt_length, dm.min_pixels, dm.max_pixels, dm.batch_size) == (300, 784, 3136, 3)
    assert dm.path == "builtin:math" and dm.tokenizer_path is None and dm.val_path is None
    assert not hasattr(dm, "no_such_setting")
    with pytest.raises(AttributeError, match="no_such_setting"):
        dm.no_such_setting
    assert copy.deepcopy(dm).max_prompt_length == 300 and pickle.loads(pickle.dumps(dm)).max_pixels == 3136


def test_ids_are_stable_and_content_addressed(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(8))
    a, b = _dm(path, tok_dir), _dm(path, tok_dir, seed=9)
    assert [r["id"] for r in a.train_records] == [r["id"] for r in b.train_records]
    expect = hashlib.sha1("What is 0 + 1?\x1f1".encode()).hexdigest()[:16]
    assert a.train_records[0]["id"] == expect
    assert len({r["id"] for r in a.train_records}) == 8


# ---------------------------------------------------------------------------------------- batches
def test_batches_are_mutable_dicts_and_drop_the_last_partial_one(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(10))
    dm = _dm(path, tok_dir, batch_size=4)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == 2 and len(batches) == 2
    for batch in batches:
        assert set(batch) == {"prompts"} and len(batch["prompts"]) == 4
    ids = _ids(batches[0]) + _ids(batches[1])
    assert len(set(ids)) == 8  # a permutation: no prompt twice in an epoch
    batches[0]["rollouts"] = "added in place"
    batches[0]["prompts"][0]["question"] = "changed"
    assert "changed" not in {r["question"] for r in dm.train_records}  # records are copies


def test_epochs_reshuffle_and_reset_the_position(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(12))
    dm = _dm(path, tok_dir, batch_size=3)
    loader = dm.train_dataloader()
    epoch0 = [_ids(b) for b in loader]
    assert dm.state_dict()["epoch"] == 0 and dm.state_dict()["consumed"] == 4
    epoch1 = [_ids(b) for b in loader]
    assert dm.state_dict()["epoch"] == 1 and dm.state_dict()["consumed"] == 4
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == sorted(sum(epoch1, []))
    loader.sampler.set_epoch(5)  # what Lightning does at an epoch start
    assert dm.state_dict()["epoch"] == 5 and dm.state_dict()["consumed"] == 0
    unshuffled = _dm(path, tok_dir, batch_size=3, shuffle=False)
    assert [_ids(b) for b in unshuffled.train_dataloader()][0] == [r["id"] for r in unshuffled.train_records[:3]]


def test_resume_continues_with_the_next_unseen_batch(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(40))
    reference = [_ids(b) for b in _dm(path, tok_dir, batch_size=4, seed=3).train_dataloader()]

    dm = _dm(path, tok_dir, batch_size=4, seed=3)
    it = iter(dm.train_dataloader())
    seen = [_ids(next(it)) for _ in range(3)]
    assert seen == reference[:3]
    dm.tracker.assign(["x"], torch.tensor([0.5]))
    state = dm.state_dict()
    assert state["consumed"] == 3 and state["epoch"] == 0
    torch.save(state, tmp_path / "dm.pt")
    state = torch.load(tmp_path / "dm.pt", weights_only=True)

    fresh = _dm(path, tok_dir, batch_size=4, seed=3)  # Lightning's order: setup, then load_state_dict
    fresh.load_state_dict(state)
    rest = [_ids(b) for b in fresh.train_dataloader()]
    assert rest[0] == reference[3] and rest == reference[3:]
    assert fresh.tracker.state_dict()["bucket"] == {"x": 1}

    early = PromptDataModule(path=path, tokenizer_path=tok_dir, batch_size=4, seed=3)  # loaded before setup
    early.load_state_dict(state)
    early.setup()
    assert _ids(next(iter(early.train_dataloader()))) == reference[3]


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(_ids(batch))
        return (self.w**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(path, tok_dir, max_steps, ckpt_dir=None, ckpt_path=None):
    dm = PromptDataModule(path=path, tokenizer_path=tok_dir, batch_size=4, seed=1)
    model = _Recorder()
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)] if ckpt_dir else []
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(ckpt_dir),
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_checkpoint_resume_mid_epoch_and_across_epochs(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(20))  # 5 batches per epoch
    reference = _fit(path, tok_dir, max_steps=9)
    first = _fit(path, tok_dir, max_steps=6, ckpt_dir=tmp_path / "ckpt")
    assert first == reference[:6]
    ckpts = {int(p.stem.split("step=")[1]): p for p in (tmp_path / "ckpt").glob("*.ckpt")}
    assert sorted(ckpts) == [1, 2, 3, 4, 5, 6]
    for step in (3, 5, 6):  # mid-epoch, on the last batch of epoch 0, first batch of epoch 1
        resumed = _fit(path, tok_dir, max_steps=9, ckpt_path=str(ckpts[step]))
        assert resumed == reference[step:9], f"resumed from step {step}"
    assert len(set(sum(reference[:5], []))) == 20  # epoch 0 saw every prompt once
    assert reference[5:9] != reference[:4]  # epoch 1 is a new permutation


def test_sampler_shards_global_batches_across_ranks():
    ranks = [list(ResumableBatchSampler(26, 3, seed=4, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # 26 // (3 · 2)
    flat = [i for batches in ranks for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 24
    whole = ResumableBatchSampler(26, 3, seed=4).permutation(0)
    assert ranks[0][1] + ranks[1][1] == whole[6:12]  # step 1 = the second global batch of 6


# ---------------------------------------------------------------------------------- refill / val
def test_refill_returns_k_records_and_wraps_around(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(10))
    dm = _dm(path, tok_dir, batch_size=2)
    assert dm.refill_prompts(0) == []
    three = dm.refill_prompts(3)
    assert len(three) == 3 and all(set(r) >= {"id", "prompt_ids", "answer"} for r in three)
    more = dm.refill_prompts(22)  # past the end of the data, twice
    assert len(more) == 22
    ids = [r["id"] for r in three + more]
    assert sorted(ids[:10]) == sorted(r["id"] for r in dm.train_records)  # one full pass first
    assert sorted(ids[10:20]) == sorted(ids[:10]) and ids[10:20] != ids[:10]  # then a fresh order

    state = dm.state_dict()
    after = [r["id"] for r in dm.refill_prompts(7)]
    again = _dm(path, tok_dir, batch_size=2)
    again.load_state_dict(state)
    assert [r["id"] for r in again.refill_prompts(7)] == after  # the stream resumes too


def test_val_size_holds_out_rows_and_val_path_loads_a_file(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(20))
    dm = _dm(path, tok_dir, batch_size=4, val_size=6)
    train_ids = {r["id"] for r in dm.train_records}
    val_ids = {r["id"] for r in dm.val_records}
    assert len(train_ids) == 14 and len(val_ids) == 6 and not train_ids & val_ids
    assert {r["id"] for r in _dm(path, tok_dir, batch_size=4, val_size=6).val_records} == val_ids
    val_batches = list(dm.val_dataloader())
    assert [len(b["prompts"]) for b in val_batches] == [4, 2]  # validation keeps its last batch

    val_file = _write_jsonl(tmp_path / "val.jsonl", _rows(25)[20:] + [{"question": "", "answer": "1"}])
    dm = _dm(path, tok_dir, batch_size=4, val_path=val_file)
    assert len(dm.train_records) == 20 and len(dm.val_records) == 5
    assert dm.val_drop_counts["empty_prompt"] == 1
    assert _dm(path, tok_dir, batch_size=4).val_dataloader() == []


def test_val_size_with_val_path_keeps_the_first_usable_rows(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(8))
    val_rows = [{"question": "", "answer": "1"}] + _rows(30)[20:]  # a bad row first: it is not counted
    val_file = _write_jsonl(tmp_path / "val.jsonl", val_rows)
    dm = _dm(path, tok_dir, batch_size=4, val_path=val_file, val_size=3)
    assert [r["question"] for r in dm.val_records] == [r["question"] for r in _rows(30)[20:23]]
    assert len(dm.train_records) == 8  # nothing is held out of path when val_path is set
    assert dm.val_drop_counts["empty_prompt"] == 1
    assert len(_dm(path, tok_dir, batch_size=4, val_path=val_file, val_size=0).val_records) == 10
    assert len(_dm(path, tok_dir, batch_size=4, val_path=val_file, val_size=50).val_records) == 10


def test_test_dataloader_is_the_validation_set(tmp_path, tok_dir):
    path = _write_jsonl(tmp_path / "train.jsonl", _rows(20))
    dm = _dm(path, tok_dir, batch_size=4, val_size=6)
    val, test = list(dm.val_dataloader()), list(dm.test_dataloader())
    assert [_ids(b) for b in test] == [_ids(b) for b in val] and sum(map(len, map(_ids, test))) == 6
    assert [b["prompts"] for b in test] == [b["prompts"] for b in val]
    assert _dm(path, tok_dir, batch_size=4).test_dataloader() == []
