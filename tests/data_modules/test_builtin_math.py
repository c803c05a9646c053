"""The bundled arithmetic set: deterministic, balanced, every answer right, and a held-out test
split that no train problem can equal."""

import ast
import hashlib
import json
import operator
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_modules.builtin_math import (
    _MAKERS,
    LEVELS,
    TEST_SIZE,
    _expressions,
    generate_problems,
    held_out_count,
    split_of,
    write_jsonl,
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expr: str) -> int:
    """Integer arithmetic with + - * and parentheses, evaluated from the AST (no eval)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval"))


def _expr(question: str) -> str:
    assert question.startswith("What is ") and question.endswith("?"), question
    return question[len("What is ") : -1]


def test_deterministic_and_prefix_stable():
    a = generate_problems(60, seed=3)
    assert a == generate_problems(60, seed=3)
    assert generate_problems(20, seed=3) == a[:20]
    assert [p["question"] for p in generate_problems(60, seed=4)] != [p["question"] for p in a]
    assert [p["id"] for p in a[:3]] == ["builtin-math-3-0", "builtin-math-3-1", "builtin-math-3-2"]
    assert len({p["id"] for p in a}) == 60
    assert len({p["question"] for p in a}) > 50  # not a handful of repeats


def test_levels_balanced():
    assert Counter(p["level"] for p in generate_problems(300)) == {"easy": 100, "medium": 100, "hard": 100}
    counts = Counter(p["level"] for p in generate_problems(31))
    assert max(counts.values()) - min(counts.values()) <= 1
    only = generate_problems(10, levels=("hard",))
    assert {p["level"] for p in only} == {"hard"}


def test_answers_are_correct_integers():
    negatives = 0
    for p in generate_problems(600, seed=7) + generate_problems(TEST_SIZE, seed=7, split="test"):
        assert p["answer"] == str(_evaluate(_expr(p["question"])))
        negatives += p["answer"].startswith("-")
    assert negatives > 0  # medium/hard produce negative answers, which graders must parse


def test_levels_have_the_promised_shape():
    for p in generate_problems(300, seed=1) + generate_problems(TEST_SIZE, seed=1, split="test"):
        expr = _expr(p["question"])
        numbers = [int(t) for t in expr.replace("(", " ").replace(")", " ").split() if t.isdigit()]
        n_ops = sum(expr.count(op) for op in "+-*")
        if p["level"] == "easy":
            assert n_ops == 1 and "+" in expr and all(1 <= x <= 9 for x in numbers)
        elif p["level"] == "medium":
            assert n_ops == 1 and "(" not in expr
            if "+" in expr:
                assert all(10 <= x <= 99 for x in numbers)
            else:
                assert "*" in expr and all(2 <= x <= 9 for x in numbers)
        else:
            assert n_ops == 2 and ("-" in expr or "*" in expr) and all(2 <= x <= 12 for x in numbers)


def test_answers_parse_with_math_verify():
    from math_verify import parse, verify

    for p in generate_problems(9, seed=2):
        assert verify(parse(p["answer"]), parse(f"\\boxed{{{_evaluate(_expr(p['question']))}}}"))


def test_write_jsonl_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "sub" / "math.jsonl", 12, seed=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == generate_problems(12, seed=5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        generate_problems(3, levels=("easy", "insane"))
    with pytest.raises(ValueError, match="n must be"):
        generate_problems(-1)
    with pytest.raises(ValueError, match="split must be one of"):
        generate_problems(3, split="validation")
    assert LEVELS == ("easy", "medium", "hard")


# ---------------------------------------------------------------------------------- test split
def _sha1_test(question: str) -> bool:
    return int(hashlib.sha1(question.encode()).hexdigest(), 16) % 5 == 0


def test_split_of_is_the_sha1_rule():
    questions = [f"What is {a} + {b}?" for a in range(1, 10) for b in range(1, 10)]
    assert [split_of({"question": q}) for q in questions] == ["test" if _sha1_test(q) else "train" for q in questions]
    assert Counter(split_of({"question": q}) for q in questions) == {"train": 65, "test": 16}


def test_level_spaces_and_test_size_are_computed():
    # Every generated question lies in its level's enumerated space (so held_out_count counts the right set).
    spaces = {lv: {f"What is {e}?" for e in _expressions(lv)} for lv in LEVELS}
    assert {lv: len(q) for lv, q in spaces.items()} == {"easy": 81, "medium": 90 * 90 + 8 * 8, "hard": 4 * 11**3}
    for p in generate_problems(900, seed=11) + generate_problems(TEST_SIZE, seed=11, split="test"):
        assert p["question"] in spaces[p["level"]]
    counts = {lv: sum(map(_sha1_test, q)) for lv, q in spaces.items()}
    assert counts == {lv: held_out_count(lv) for lv in LEVELS} == {"easy": 16, "medium": 1584, "hard": 1140}
    # Fewer than 20 easy test questions exist, so the default test split is all 16 of them per level.
    assert TEST_SIZE == len(LEVELS) * min(20, min(counts.values())) == 48


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_train_problems_are_never_test_problems(seed):
    train = generate_problems(2000, seed=seed)
    assert {split_of(p) for p in train} == {"train"}
    assert {p["source"] for p in train} == {"builtin:math"}
    train_questions = {p["question"] for p in train}
    for test_seed in (0, 1, 2, 3):
        test = generate_problems(TEST_SIZE, seed=test_seed, split="test")
        assert not train_questions & {p["question"] for p in test}


def test_most_train_problems_are_the_first_draw():
    """A train problem redraws only when its first draw is held out: ~4 in 5 problems are unchanged."""
    unchanged = 0
    for i, p in enumerate(generate_problems(600, seed=0)):
        expr, value = _MAKERS[p["level"]](random.Random(f"builtin-math/0/{i}"))
        first = f"What is {expr}?"
        if not _sha1_test(first):
            assert (p["question"], p["answer"]) == (first, str(value))
            unchanged += 1
        else:
            assert p["question"] != first
    assert 420 <= unchanged <= 540  # 600 · 4/5 = 480 expected


def test_test_split_is_distinct_balanced_and_deterministic():
    test = generate_problems(TEST_SIZE, seed=0, split="test")
    assert len(test) == TEST_SIZE == 48
    assert {split_of(p) for p in test} == {"test"}
    assert len({p["question"] for p in test}) == TEST_SIZE  # distinct
    assert Counter(p["level"] for p in test) == {"easy": 16, "medium": 16, "hard": 16}
    assert [p["id"] for p in test[:2]] == ["builtin-math-test-0-0", "builtin-math-test-0-1"]
    assert {p["source"] for p in test} == {"builtin:math"}
    assert test == generate_problems(TEST_SIZE, seed=0, split="test")
    assert generate_problems(12, seed=0, split="test") == test[:12]  # prefix-stable too
    other = generate_problems(TEST_SIZE, seed=1, split="test")
    assert [p["question"] for p in other] != [p["question"] for p in test]
    easy = {f"What is {a} + {b}?" for a in range(1, 10) for b in range(1, 10)}
    assert {p["question"] for p in test if p["level"] == "easy"} == {q for q in easy if _sha1_test(q)}


def test_asking_for_more_test_problems_than_exist_is_an_error():
    assert len(generate_problems(16, levels=("easy",), split="test")) == 16
    with pytest.raises(ValueError, match="only 16 distinct 'easy' test problems.*TEST_SIZE=48"):
        generate_problems(17, levels=("easy",), split="test")
    with pytest.raises(ValueError, match="only 16 distinct 'easy'"):
        generate_problems(TEST_SIZE + 1, split="test")
    assert len(generate_problems(60, levels=("medium", "hard"), split="test")) == 60


def test_write_jsonl_test_split(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", 9, seed=2, split="test")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == generate_problems(9, seed=2, split="test")
    assert rows[0]["id"] == "builtin-math-test-2-0"


@given(st.integers(0, 10**6), st.integers(0, 300))
def test_every_train_problem_is_in_the_train_split(seed, i):
    assert split_of(generate_problems(i + 1, seed=seed)[i]) == "train"
