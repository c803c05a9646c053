"""ColdstartDataModule: curation numbers by hand, bad rows, sampling, normalization, cache, batches.

Traces are built so that their token lengths are base + m under the tiny tokenizer (" 1" is one
token), so medians, targets and selections can be computed by hand below.
"""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from ares_lit.grading import format_ok
from ares_lit.prompting import build_prompt_text
from data_modules.adacs import target_length
from data_modules.coldstart import DROP_REASONS, ColdstartDataModule


def trace(m: int, answer: str = "7") -> str:
    """A trace already in normalized form whose length is base + m tokens."""
    return f"<think>\n{' 1' * m}\n</think>\n\\boxed{{{answer}}}"


def row(i, source, k, ms, answer="7", n=8, **extra):
    return {"id": f"r{i}", "source": source, "question": f"What is {i}?", "answer": answer, "k": k, "n": n,
            "traces": [trace(m, answer) for m in ms], **extra}


def write(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


def make_dm(path, tok, tmp_path, **kw):
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    kw.setdefault("id_key", "id")
    dm = ColdstartDataModule(path=str(path), **kw)
    dm.tokenizer = tok
    dm.setup("fit")
    return dm


def hand_pool(wrong_m=23):
    wrong = {"text": trace(wrong_m, "8")}  # graded (no flag): a wrong answer, by default at exactly L_target
    return [
        row(0, "A", 0, [10, 30, 50]),
        {**row(1, "A", 0, [40, 60]), "traces": [trace(40), trace(60), {"text": trace(70), "correct": False}]},
        row(2, "A", 8, [2, 6]),
        row(3, "A", 8, [4, 8, 20]),
        {**row(4, "A", 4, []), "traces": [trace(m) for m in (5, 20, 33, 45)] + [wrong]},
        row(5, "B", 8, [12, 16]),
        row(6, "B", 2, [20, 33, 36]),
    ]


def test_trace_lengths_are_base_plus_m(tok):
    lengths = {m: len(tok(trace(m), add_special_tokens=False).input_ids) for m in (0, 1, 5, 60, 200)}
    base = lengths[0]
    assert all(lengths[m] == base + m for m in lengths), lengths


def test_medians_targets_and_selection_by_hand(tmp_path, tok):
    base = len(tok(trace(0), add_special_tokens=False).input_ids)
    dm = make_dm(write(tmp_path / "pool.jsonl", hand_pool()), tok, tmp_path, size=100, max_length=1024)
    src = dm.report["sources"]
    # A: L(0) = median{10,30,50,40,60} = 40, L(1) = median{2,6,4,8,20} = 6 (the incorrect 70 never counts).
    assert (src["A"]["L0"], src["A"]["L1"]) == (base + 40, base + 6)
    assert src["A"]["L0_from"] == src["A"]["L1_from"] == "source"
    # B has no p = 0 problem: L(0) falls back to the global median (only A's p = 0 traces): 40.
    assert (src["B"]["L0"], src["B"]["L0_from"]) == (base + 40, "global")
    assert (src["B"]["L1"], src["B"]["L1_from"]) == (base + 14, "source")  # median{12, 16}
    picked = {r["id"]: r["response_tokens"] - base for r in dm.records}
    # r0: target 40, 30 and 50 tie -> the shorter. r1: 40. r2: target 6. r3: 4 and 8 tie -> 4.
    # r4: target 23 -> 20 (the incorrect trace at exactly 23 is never chosen).
    # r5: target L1(B) = 14 -> 12 and 16 tie -> 12. r6: 0.75*40 + 0.25*14 = 33.5 -> 33.
    assert picked == {"r0": 30, "r1": 40, "r2": 6, "r3": 4, "r4": 20, "r5": 12, "r6": 33}
    targets = {r["id"]: r["target_tokens"] - base for r in dm.records}
    assert targets["r4"] == pytest.approx(23.0) and targets["r6"] == pytest.approx(33.5)
    assert target_length(0.25, base + 40, base + 14) == pytest.approx(base + 33.5)
    assert all(r["response_correct"] for r in dm.records)
    assert dm.report["brackets_usable"] == {"0/8": 2, "2/8": 1, "4/8": 1, "8/8": 3}
    assert dm.report["candidates"]["incorrect"] == 2 and dm.report["selected_incorrect"] == 0


def test_incorrect_traces_selected_only_when_allowed(tmp_path, tok):
    base = len(tok(trace(0), add_special_tokens=False).input_ids)
    pool = write(tmp_path / "pool.jsonl", hand_pool(wrong_m=25))
    dm = make_dm(pool, tok, tmp_path, size=100, max_length=1024, allow_incorrect=True)
    # The incorrect 70-token trace of r1 now counts towards L(0) of A: median{10,30,50,40,60,70} = 45,
    # so r4's target is (45 + 6) / 2 = 25.5: the incorrect 25 (0.5 away) beats the correct 20.
    assert dm.report["sources"]["A"]["L0"] == base + 45
    r4 = next(r for r in dm.records if r["id"] == "r4")
    assert r4["response_tokens"] - base == 25 and r4["response_correct"] is False
    assert "\\boxed{8}" in r4["response"] and dm.report["selected_incorrect"] == 1
    # Off (the default): the same pool never selects it.
    dm = make_dm(pool, tok, tmp_path, size=100, max_length=1024)
    r4 = next(r for r in dm.records if r["id"] == "r4")
    assert r4["response_tokens"] - base == 20 and r4["response_correct"] is True


def test_bracket_counts_after_sampling(tmp_path, tok):
    dm = make_dm(write(tmp_path / "pool.jsonl", hand_pool()), tok, tmp_path, size=5, max_length=1024)
    assert dm.report["brackets_selected"] == {"0/8": 2, "2/8": 1, "4/8": 1, "8/8": 1}
    assert len(dm.records) == dm.report["selected"] == 5


def test_uniform_across_brackets_on_a_skewed_pool(tmp_path, tok):
    # 30 problems at 0/8, 3 at 4/8, 12 at 8/8; size 15 -> 6, 3, 6.
    rows = [row(i, "A", 0, [5, 9]) for i in range(30)]
    rows += [row(100 + i, "A", 4, [5, 9]) for i in range(3)]
    rows += [row(200 + i, "A", 8, [5, 9]) for i in range(12)]
    dm = make_dm(write(tmp_path / "pool.jsonl", rows), tok, tmp_path, size=15, max_length=1024)
    assert dm.report["brackets_selected"] == {"0/8": 6, "4/8": 3, "8/8": 6}


def test_anchor_medians_are_taken_before_the_max_length_cut(tmp_path, tok):
    """L(0), L(1) count every eligible trace, also those (and whole problems) cut by max_length."""
    base = len(tok(trace(0), add_special_tokens=False).input_ids)
    pool = hand_pool()
    pool[3] = row(3, "A", 8, [4, 8, 20, 1300])  # r3 keeps 4, 8, 20 after the cut
    pool += [row(7, "A", 0, [1500, 1600]), row(8, "A", 8, [1400])]  # dropped: nothing fits
    dm = make_dm(write(tmp_path / "pool.jsonl", pool), tok, tmp_path, size=100, max_length=1024)
    assert base + 1300 > 1024 and dm.report["dropped"]["too_long"] == 2
    assert dm.report["candidates"]["too_long"] == 4
    src = dm.report["sources"]
    assert list(src) == ["A", "B"]
    # all candidates: L(0) = median{10,30,50,40,60,1500,1600} = 50; L(1) = median{2,6,4,8,20,1300,1400} = 8
    # (after the cut they would be median{10,30,50,40,60} = 40 and median{2,6,4,8,20} = 6)
    assert (src["A"]["L0"], src["A"]["L1"]) == (base + 50, base + 8)
    assert (src["A"]["L0"], src["A"]["L1"]) != (base + 40, base + 6)
    assert (src["B"]["L0"], src["B"]["L0_from"]) == (base + 50, "global")  # uncut global median too
    picked = {r["id"]: r["response_tokens"] - base for r in dm.records}
    # r4: target (50 + 8) / 2 = 29 -> 33 (the cut medians would give 23 -> 20); r3: target 8 -> 8
    assert picked["r4"] == 33 and picked["r3"] == 8 and set(picked) == {f"r{i}" for i in range(7)}
    assert all(r["response_tokens"] < 1024 for r in dm.records)  # the choice still only sees fitting traces


def test_bad_rows_are_skipped_and_counted(tmp_path, tok):
    good = hand_pool()
    bad = [
        {**row(10, "A", 3, [5]), "traces": [{"text": trace(5, "9"), "correct": False}, trace(6, "9")]},  # none correct
        {k: v for k, v in row(11, "A", 3, [5]).items() if k != "answer"},  # no answer
        {**row(12, "A", 3, [5]), "answer": "  "},  # blank answer
        {k: v for k, v in row(13, "A", 3, [5]).items() if k not in ("k", "n")},  # no pass rate
        row(14, "A", 9, [5]),  # k > n
        {**row(15, "A", 3, [5]), "traces": []},  # no traces
        {**row(16, "A", 3, [5]), "question": ""},  # empty prompt
        row(17, "A", 3, [2000]),  # correct, but longer than max_length
    ]
    path = write(tmp_path / "pool.jsonl", good + bad, raw_lines=['{"question": "unterminated', "[1, 2]"])
    dm = make_dm(path, tok, tmp_path, size=100, max_length=1024)
    assert dm.report["dropped"] == {
        "malformed": 2, "empty_prompt": 1, "no_answer": 2, "no_pass_rate": 2, "no_traces": 1,
        "missing_image": 0, "bad_image": 0, "no_correct_trace": 1, "too_long": 1,
    }
    assert dm.drop_counts == dm.report["dropped"] and set(dm.drop_counts) == set(DROP_REASONS)
    assert dm.report["usable"] == len(good) and dm.report["rows"] == len(good) + len(bad) + 2


def test_pool_without_usable_rows_fails_clearly(tmp_path, tok):
    rows = [{**row(i, "A", 3, [5]), "traces": [{"text": trace(5), "correct": False}]} for i in range(3)]
    with pytest.raises(ValueError, match="no usable problems.*'no_correct_trace': 3"):
        make_dm(write(tmp_path / "pool.jsonl", rows), tok, tmp_path)


def test_key_errors_raise_before_the_tokenizer_loads(tmp_path):
    path = write(tmp_path / "pool.jsonl", hand_pool())
    # The tokenizer path does not exist: a key error must come first.
    dm = ColdstartDataModule(path=path, tokenizer_path=str(tmp_path / "missing"), question_key="prompt")
    with pytest.raises(ValueError, match="question_key='prompt' is not a column"):
        dm.setup("fit")
    no_rate = write(tmp_path / "no_rate.jsonl", [{k: v for k, v in r.items() if k not in ("k", "n")} for r in hand_pool()])
    dm = ColdstartDataModule(path=no_rate, tokenizer_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no pass-rate columns"):
        dm.setup("fit")


def test_pass_rate_from_p_column(tmp_path, tok):
    rows = [{k: v for k, v in r.items() if k not in ("k", "n")} | {"p": r["k"] / 8} for r in hand_pool()]
    dm = make_dm(write(tmp_path / "pool.jsonl", rows), tok, tmp_path, size=100, max_length=1024)
    assert dm.report["brackets_usable"] == {"0/8": 2, "2/8": 1, "4/8": 1, "8/8": 3}


def test_multimodal_fraction(tmp_path, vl_path):
    from PIL import Image

    tok = AutoTokenizer.from_pretrained(vl_path)
    for i in range(4):
        Image.new("RGB", (56, 56), (i * 60, 0, 0)).save(tmp_path / f"img{i}.png")
    rows = [row(i, "text", i % 3 * 4, [5, 9]) for i in range(12)]
    rows += [row(100 + i, "vqa", i % 2 * 8, [5, 9], images=[f"img{i}.png"]) for i in range(4)]
    path = write(tmp_path / "pool.jsonl", rows)
    kw = {"image_key": "images", "max_length": 1024, "tokenizer_path": vl_path}
    dm = make_dm(path, tok, tmp_path, size=8, multimodal_fraction=0.25, **kw)
    assert dm.report["modality_selected"] == {"text": 6, "multimodal": 2}
    mm = [r for r in dm.records if r["multimodal"]]
    assert all(r["images"] for r in mm)
    # Multimodal brackets 0/8 and 8/8 get one each; text brackets 0, 4, 8 get two each.
    assert sorted(r["bracket"] for r in mm) == [0, 8]
    assert sorted(r["bracket"] for r in dm.records if not r["multimodal"]) == [0, 0, 4, 4, 8, 8]
    prompt = tok.decode(dm._features[dm.records.index(mm[0])]["prompt_ids"])
    assert prompt.count("<|image_pad|>") == 4  # a 56x56 image is 4 vision tokens
    # Too few multimodal rows for 0.75 of 8: the 4 there are, text fills the rest.
    dm = make_dm(path, tok, tmp_path, size=8, multimodal_fraction=0.75, **kw)
    assert dm.report["modality_selected"] == {"text": 4, "multimodal": 4}


def test_image_rows_with_a_text_only_model_fail_clearly(tmp_path, tok, tok_dir):
    rows = [row(i, "vqa", 4, [5], images=["a.png"]) for i in range(3)]
    path = write(tmp_path / "pool.jsonl", rows)
    with pytest.raises(ValueError, match="image_key='images' is set.*set --data.init_args.tokenizer_path"):
        make_dm(path, tok, tmp_path, image_key="images")  # no path to load an image processor from
    with pytest.raises(ValueError, match="image_key='images' needs a vision-language policy"):
        make_dm(path, tok, tmp_path, image_key="images", tokenizer_path=tok_dir)


def test_curation_is_cached_and_reused(tmp_path, tok):
    path = write(tmp_path / "pool.jsonl", hand_pool())
    first = make_dm(path, tok, tmp_path, size=5, max_length=1024)
    assert not first.reused_cache and (first.cache_path / "curated.jsonl").is_file()
    again = make_dm(path, tok, tmp_path, size=5, max_length=1024)
    assert again.reused_cache and again.records == first.records and again.report == first.report
    other = make_dm(path, tok, tmp_path, size=4, max_length=1024)  # another setting: another key
    assert not other.reused_cache and other.cache_path != first.cache_path
    with open(path, "a") as f:  # another pool content: another key
        f.write(json.dumps(row(50, "A", 8, [3])) + "\n")
    assert not make_dm(path, tok, tmp_path, size=5, max_length=1024).reused_cache


class FakeTrainer:
    """What the DataModule asks of a trainer under DDP: world size, rank, no module, no loggers."""

    def __init__(self, world_size, global_rank):
        self.world_size, self.global_rank = world_size, global_rank
        self.is_global_zero = global_rank == 0
        self.lightning_module, self.log_dir, self.loggers = None, None, []


def test_curation_runs_once_in_prepare_data_and_every_rank_reads_its_cache(tmp_path, tok, monkeypatch):
    """Lightning's DDP order: prepare_data on rank 0 while the others wait, then setup on every rank."""
    import data_modules.coldstart as coldstart

    pools = []

    def counting_curate(*args, **kwargs):
        pools.append(kwargs["pool"])
        return curate(*args, **kwargs)

    curate = coldstart.curate
    monkeypatch.setattr(coldstart, "curate", counting_curate)
    path = write(tmp_path / "pool.jsonl", hand_pool())
    ranks = []
    for rank in range(2):
        dm = ColdstartDataModule(path=path, cache_dir=str(tmp_path / "cache"), id_key="id", size=5, max_length=1024,
                                 batch_size=1)
        dm.tokenizer, dm.trainer = tok, FakeTrainer(world_size=2, global_rank=rank)
        ranks.append(dm)
    ranks[0].prepare_data()
    assert pools == ["pool.jsonl"] and ranks[0].records is None  # curated into the cache, nothing served yet
    for dm in reversed(ranks):  # rank 1 may well set up first
        dm.setup("fit")
    assert pools == ["pool.jsonl"]  # no rank curated again
    assert ranks[1].reused_cache and not ranks[0].reused_cache and ranks[0].cache_path == ranks[1].cache_path
    assert ranks[0].records == ranks[1].records and ranks[0].report == ranks[1].report
    assert len(ranks[1].records) == 5 and ranks[1].drop_counts == ranks[0].drop_counts
    assert [f["response_ids"] for f in ranks[0]._features] == [f["response_ids"] for f in ranks[1]._features]
    # setup without prepare_data (called directly) curates when the cache lacks the set, and only then
    make_dm(path, tok, tmp_path, size=4, max_length=1024)
    make_dm(path, tok, tmp_path, size=4, max_length=1024)
    assert pools == ["pool.jsonl"] * 2


def test_sft_batches_mask_the_prompt(tmp_path, tok):
    dm = make_dm(write(tmp_path / "pool.jsonl", hand_pool()), tok, tmp_path, size=100, max_length=1024, batch_size=3)
    by_prompt = {build_prompt_text(tok, r["question"]): r for r in dm.records}
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["bracket_n"] == 8
        for i in range(batch["input_ids"].shape[0]):
            ids, mask, labels = batch["input_ids"][i], batch["attention_mask"][i], batch["labels"][i]
            length = int(mask.sum())
            assert mask[:length].all() and not mask[length:].any()  # right padding
            resp = (labels != -100).nonzero()[:, 0]
            start = int(resp[0])
            assert resp.tolist() == list(range(start, length))  # labels exactly on the response
            record = by_prompt[tok.decode(ids[:start])]
            expected = tok(record["response"], add_special_tokens=False).input_ids + [tok.eos_token_id]
            assert labels[start:length].tolist() == expected == ids[start:length].tolist()
            assert int(batch["bracket"][i]) == record["bracket"]
            seen += 1
    assert seen == len(dm.records)


def test_length_grouping_reduces_padding(tmp_path, tok):
    rng = np.random.default_rng(0)
    rows = [row(i, "A", int(rng.integers(0, 9)), [int(rng.integers(1, 300))]) for i in range(64)]
    path = write(tmp_path / "pool.jsonl", rows)

    def padding(group_batches):
        dm = make_dm(path, tok, tmp_path, size=64, max_length=1024, batch_size=4, group_batches=group_batches)
        pads = [1 - float(b["attention_mask"].float().mean()) for b in dm.train_dataloader()]
        return float(np.mean(pads))

    grouped, plain = padding(16), padding(1)
    assert grouped < 0.5 * plain, (grouped, plain)


def test_builtin_pool_curates(tmp_path, tok):
    dm = make_dm("builtin:coldstart", tok, tmp_path, size=48, builtin_size=96)
    rep = dm.report
    assert rep["usable"] == 96 and rep["selected"] == 48 and rep["selected_incorrect"] == 0
    for source in ("math-terse", "math-verbose"):
        s = rep["sources"][source]
        assert s["L0_from"] == s["L1_from"] == "source"
        assert s["L0"] > s["L1"]  # hard problems take longer traces in this pool
    assert len(rep["brackets_selected"]) == 9
    assert all(format_ok(r["response"]) for r in dm.records)
