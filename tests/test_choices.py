"""Multiple-choice grading: every answer form maps to its letter, and undecidable answers grade wrong."""

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ares_lit.choices import PLAIN_LETTERS, choice_letter, grade_choice, option_letters

OPTIONS = ["10", "12", "15 apples", "Seven", "1,000"]  # A B C D E


def test_option_letters():
    assert option_letters(["x", "y", "z"]) == {"A": "x", "B": "y", "C": "z"}
    assert option_letters({" a ": "x", "b": "y"}) == {"A": "x", "B": "y"}
    assert option_letters(None) == {}
    with pytest.raises(ValueError, match="at most 26 options"):
        option_letters([str(i) for i in range(27)])
    with pytest.raises(TypeError, match="list of texts or a dict"):
        option_letters("ABCD")


@pytest.mark.parametrize(
    "answer, letter",
    [
        # letter forms
        ("B", "B"), ("(B)", "B"), ("[B]", "B"), ("B.", "B"), ("B)", "B"), ("b", "B"), (" B ", "B"),
        ("\\text{B}", "B"), ("\\textbf{(B)}", "B"), ("$\\mathrm{B}$", "B"), ("\\boxed{\\text{B}}", "B"),
        ("**B**", "B"), ("Option B", "B"), ("option (b)", "B"), ("Answer: B", "B"), ("The answer is (B)", "B"),
        ("B: 12 apples", "B"), ("B. 12", "B"), ("(B) 12", "B"),
        # option texts
        ("12", "B"), ("12.0", "B"), ("  12. ", "B"), ("15 APPLES", "C"), ("15  apples.", "C"), ("seven", "D"),
        ("\\text{Seven}", "D"), ("1000", "E"), ("1,000", "E"), ("1e3", "E"),
        # undecided
        ("F", None),  # not an option letter
        ("13", None), ("fifteen apples", None), ("", None), (None, None),
        ("A: 12", None),  # letter A, but the text after it is option B's
        ("B 12 apples", None),  # no separator after the letter: not a letter form
        ("I think B", None),  # free text is not parsed for letters
    ],
)
def test_choice_letter_with_options(answer, letter):
    assert choice_letter(answer, OPTIONS) == letter


@pytest.mark.parametrize(
    "answer, letter",
    [("C", "C"), ("(c)", "C"), ("Option J", "J"), ("\\textbf{(A)}", "A"), ("D: 42", "D"),
     ("K", None), ("12", None), ("apples", None), (None, None)],
)
def test_choice_letter_without_options_knows_only_a_to_j(answer, letter):
    assert choice_letter(answer, None) == letter
    assert PLAIN_LETTERS == "ABCDEFGHIJ"


def test_ambiguous_answers_are_undecided():
    tricky = ["C", "D", "A", "K"]  # option texts that are letters
    assert choice_letter("A", tricky) is None  # letter A, or the text of option C
    assert choice_letter("K", tricky) == "D"  # K is no option letter, only a text
    assert choice_letter("4", ["4", "4.0", "5"]) == "A"  # an exact text match wins over numeric ones
    assert choice_letter("4.00", ["4", "4.0", "5"]) is None  # two numeric matches
    assert choice_letter("same", ["same", "Same."]) is None  # two options read alike
    assert choice_letter("b", {"a": "x", "b": "y"}) == "B"  # dict keys are upper-cased
    assert choice_letter("nan", ["nan", "1"]) == "A" and choice_letter("inf", ["1", "2"]) is None


@pytest.mark.parametrize(
    "answer, gold, options, expected",
    [
        ("B", "B", OPTIONS, True),
        ("(B)", "B", OPTIONS, True),
        ("12.0", "B", OPTIONS, True),  # numeric option match
        ("B", "12", OPTIONS, True),  # gold as option text
        ("12", "12", OPTIONS, True),
        ("Option D", "seven", OPTIONS, True),
        ("C", "(B)", OPTIONS, False),
        ("13", "B", OPTIONS, False),
        (None, "B", OPTIONS, False),  # no answer on a choice problem is wrong, not ungraded
        ("A: 12", "A", OPTIONS, False),  # ambiguous is wrong
        ("(C)", "C", None, True),  # no options, gold a letter: still a choice problem
        ("\\text{c}", "(C)", None, True),
        ("D", "C", None, False),
        (None, "C", None, False),
        ("12", "12", None, None),  # not multiple choice: grade it elsewhere
        ("B", "12", None, None),
        ("x", "K", None, None),  # K is beyond A-J
        ("B", "42", OPTIONS, None),  # gold names no option: not gradable as a choice
    ],
)
def test_grade_choice(answer, gold, options, expected):
    assert grade_choice(answer, gold, options) is expected


_texts = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ", min_size=1, max_size=12)


@given(
    st.lists(_texts, min_size=2, max_size=10, unique_by=lambda t: " ".join(t.split())),
    st.data(),
)
def test_letter_and_option_text_grade_true_and_other_letters_false(options, data):
    # Texts that read as a letter ("b", "option c") or nothing ("  ") make the set itself ambiguous.
    assume(all(t.strip() and choice_letter(t, None) is None for t in options))
    gold = data.draw(st.integers(0, len(options) - 1))
    letters = "ABCDEFGHIJ"[: len(options)]
    for gold_form in (letters[gold], options[gold], f"({letters[gold]})"):
        assert grade_choice(letters[gold], gold_form, options) is True
        assert grade_choice(options[gold], gold_form, options) is True
        for j, letter in enumerate(letters):
            if j != gold:
                assert grade_choice(letter, gold_form, options) is False
