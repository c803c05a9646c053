"""The AdaCS rules on hand-built problems, without a tokenizer or a DataModule: pass rates and
brackets, anchor lengths and their fallbacks, the trace closest to L_target(p), bracket quotas,
sampling, and trace normalization."""

import pytest

from ares_lit.grading import format_ok
from data_modules.adacs import (
    anchor_lengths,
    bracket_of,
    closest_trace,
    normalize_trace,
    pass_rate,
    sample_problems,
    target_length,
    uniform_quotas,
)


def problem(source, p, *tokens, multimodal=False, name=None):
    return {"id": name, "source": source, "p": p, "bracket": bracket_of(p, 8), "multimodal": multimodal,
            "eligible": [{"text": f"t{t}", "correct": True, "tokens": t} for t in tokens]}


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"k": 3, "n": 8}, 3 / 8),
        ({"k": 3, "n": 8, "p": 0.9}, 3 / 8),  # k and n win over p
        ({"k": 8.0, "n": 8.0}, 1.0),  # integral floats are counts too
        ({"p": 0.25}, 0.25),
        ({"k": 9, "n": 8}, None),
        ({"k": 3}, None),  # k without n
        ({"k": 0, "n": 0}, None),
        ({"k": True, "n": 8}, None),
        ({"k": 1.5, "n": 8}, None),
        ({"p": 1.5}, None),
        ({"p": float("nan")}, None),
        ({}, None),
    ],
)
def test_pass_rate(row, expected):
    assert pass_rate(row, "k", "n", "p") == expected


def test_brackets_and_target_length():
    assert [bracket_of(k / 8, 8) for k in range(9)] == list(range(9))
    assert bracket_of(1 / 3, 8) == 3 and bracket_of(0.3, 4) == 1
    assert target_length(0.0, 40, 6) == 40 and target_length(1.0, 40, 6) == 6
    assert target_length(0.25, 40, 14) == pytest.approx(33.5)


def test_anchor_lengths_per_source_then_global():
    probs = [
        problem("A", 0.0, 10, 30, 50),
        problem("A", 0.0, 40, 60),
        problem("A", 1.0, 2, 6),
        problem("A", 0.5, 1000),  # not p = 0 or 1: never an anchor
        problem("B", 1.0, 12, 16),
        problem("B", 0.25, 20),
    ]
    anchors = anchor_lengths(probs)
    assert list(anchors) == ["A", "B"]
    assert anchors["A"] == {"L0": 40.0, "L0_from": "source", "L1": 4.0, "L1_from": "source"}
    # B has no p = 0 problem: L(0) is the median over all sources' p = 0 traces.
    assert anchors["B"] == {"L0": 40.0, "L0_from": "global", "L1": 14.0, "L1_from": "source"}


def test_anchor_lengths_fall_back_to_the_nearest_bracket():
    anchors = anchor_lengths([problem("A", 0.25, 5, 9), problem("A", 0.75, 3), problem("A", 0.25, 7)])
    assert anchors["A"] == {
        "L0": 7.0, "L0_from": "nearest_bracket(p=0.250)", "L1": 3.0, "L1_from": "nearest_bracket(p=0.750)",
    }


def test_closest_trace_prefers_the_shorter_then_the_earlier():
    eligible = problem("A", 0.5, 30, 50, 44, 36)["eligible"]
    assert closest_trace(eligible, 40)["tokens"] == 36  # 36 and 44 are 4 away: the shorter
    twins = [{"tokens": 36, "text": "first"}, {"tokens": 36, "text": "second"}]
    assert closest_trace(twins, 40)["text"] == "first"
    assert closest_trace(eligible, 1000)["tokens"] == 50


def test_uniform_quotas_by_hand():
    assert uniform_quotas({0: 10, 1: 1, 2: 3}, 9) == {0: 5, 1: 1, 2: 3}
    assert uniform_quotas({0: 10, 1: 1, 2: 3}, 2) == {0: 1, 1: 1, 2: 0}
    assert uniform_quotas({0: 2, 2: 1, 4: 1, 8: 3}, 5) == {0: 2, 2: 1, 4: 1, 8: 1}
    assert uniform_quotas({0: 2, 3: 2}, 100) == {0: 2, 3: 2}
    assert uniform_quotas({0: 0, 5: 4}, 3) == {0: 0, 5: 3}


def test_sample_problems_uniform_across_brackets_and_seeded():
    probs = [problem("A", 0.0, 5, name=f"h{i}") for i in range(30)]
    probs += [problem("A", 0.5, 5, name=f"m{i}") for i in range(3)]
    probs += [problem("A", 1.0, 5, name=f"e{i}") for i in range(12)]
    chosen = sample_problems(probs, 15, None, seed=0)
    assert [q["bracket"] for q in chosen] == [0] * 6 + [4] * 3 + [8] * 6
    assert [q["id"] for q in chosen] == [q["id"] for q in sample_problems(probs, 15, None, seed=0)]
    assert [q["id"] for q in chosen] != [q["id"] for q in sample_problems(probs, 15, None, seed=1)]
    ids = [q["id"] for q in chosen]
    hard = [int(i[1:]) for i in ids if i.startswith("h")]
    assert len(set(ids)) == 15 and hard == sorted(hard)  # no problem twice; a bracket keeps the pool's order
    assert len(sample_problems(probs, 100, None, seed=0)) == len(probs)


def test_sample_problems_multimodal_share_and_hand_off():
    text = [problem("t", k / 8, 5, name=f"t{k}") for k in (0, 0, 4, 4, 8, 8, 0, 4, 8, 0, 4, 8)]
    images = [problem("v", k / 8, 5, multimodal=True, name=f"v{i}") for i, k in enumerate((0, 8, 0, 8))]
    chosen = sample_problems(text + images, 8, 0.25, seed=0)
    assert [q["multimodal"] for q in chosen] == [False] * 6 + [True] * 2  # text group first
    assert sorted(q["bracket"] for q in chosen if q["multimodal"]) == [0, 8]
    assert sorted(q["bracket"] for q in chosen if not q["multimodal"]) == [0, 0, 4, 4, 8, 8]
    # 0.75 of 8 wants 6 multimodal rows; there are 4, and the text rows take the 2 places left.
    chosen = sample_problems(text + images, 8, 0.75, seed=0)
    assert sum(q["multimodal"] for q in chosen) == 4 and len(chosen) == 8


@pytest.mark.parametrize(
    "raw, gold, expected",
    [
        ("a b \\boxed{3}.", "3", "<think>\na b \\boxed{3}.\n</think>\n\\boxed{3}"),
        ("<think>x</think> so 3", "3", "<think>\nx\n</think>\nso 3\n\\boxed{3}"),
        ("<think> x </think>\n\\boxed{3}", "3", "<think>\nx\n</think>\n\\boxed{3}"),
        ("<think>a</think><think>b</think> \\boxed{4}", "3", "<think>\na  b  \\boxed{4}\n</think>\n\\boxed{4}"),
        ("no answer at all", "5", "<think>\nno answer at all\n</think>\n\\boxed{5}"),
        ("no answer at all", None, None),  # an incorrect trace with no answer cannot be normalized
    ],
)
def test_normalize_trace_rules(raw, gold, expected):
    out = normalize_trace(raw, gold)
    assert out == expected
    if out is not None:
        assert format_ok(out) and normalize_trace(out, gold) == out  # valid and idempotent
