"""Multiple-choice grading: map a model's extracted answer to an option letter and compare letters.

Pure Python (no torch, no Lightning), so the evaluation command and tests can call it anywhere.

An answer names an option in one of two ways:

- a letter form: "B", "b", "(B)", "[B]", "B.", "B)", "B: 12 apples", "Option B", "Answer: B", or any
  of these inside `\\text{}`, `\\textbf{}`, `\\mathrm{}`, `\\mathbf{}`, `\\boxed{}` or `$...$`;
- the option's text itself: equal after case folding, whitespace collapsing and dropping a
  trailing period, or else numerically equal ("12.0" names the option "12").

When the two readings disagree (the answer "A" with an option whose text is "A" at C), or the text
matches several options, the answer is undecided (None), which grades as wrong: a grader that
guessed would reward hedging. Without options only the letters A-J are recognised.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence

__all__ = ["PLAIN_LETTERS", "choice_letter", "grade_choice", "option_letters"]

PLAIN_LETTERS = "ABCDEFGHIJ"  # the letters recognised when a problem lists no options (ten choices at most)
Options = Mapping[str, str] | Sequence[str] | None

_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|boxed|mbox)\s*\{(.*)\}", re.DOTALL)
_PREFIX = re.compile(r"(?:the\s+)?(?:option|choice|answer)(?:\s+is)?\s*:?\s*", re.IGNORECASE)
_LETTER_FORMS = (
    re.compile(r"\(\s*([A-Za-z])\s*\)\s*(.*)", re.DOTALL),  # (B) ...
    re.compile(r"\[\s*([A-Za-z])\s*\]\s*(.*)", re.DOTALL),  # [B] ...
    re.compile(r"([A-Za-z])(?:\s*[.:)]\s*(.*))?", re.DOTALL),  # B | B. | B) | B: 12 apples
)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")


def option_letters(options: Options) -> dict[str, str]:
    """Letter -> option text: a list is lettered A, B, C, ...; a dict's keys are stripped and upper-cased."""
    if options is None:
        return {}
    if isinstance(options, str):
        raise TypeError(f"options must be a list of texts or a dict letter -> text; got the string {options!r}")
    if isinstance(options, Mapping):
        return {str(key).strip().upper(): str(text) for key, text in options.items()}
    if len(options) > len(string.ascii_uppercase):
        raise ValueError(f"at most {len(string.ascii_uppercase)} options can be lettered; got {len(options)}")
    return {string.ascii_uppercase[i]: str(text) for i, text in enumerate(options)}


def _unwrap(text: str) -> str:
    """Strip whitespace, `$` delimiters, markdown bold and LaTeX text wrappers, outermost first."""
    while True:
        stripped = text.strip().strip("$*").strip()
        match = _WRAPPER.fullmatch(stripped)
        stripped = match.group(1) if match else stripped
        if stripped == text:
            return text
        text = stripped


def _normal(text: str) -> str:
    """Text for exact matching: unwrapped, case-folded, whitespace collapsed, no trailing period."""
    return " ".join(_unwrap(text).casefold().split()).rstrip(".").rstrip()


def _number(text: str) -> float | None:
    text = _normal(text)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _letter_form(answer: str, letters: Sequence[str]) -> tuple[str, str] | None:
    """(letter, trailing text) when the answer is a letter form naming one of `letters`."""
    text = _unwrap(answer)
    prefix = _PREFIX.match(text)
    candidates = [text[prefix.end() :], text] if prefix and prefix.end() else [text]
    for candidate in candidates:
        candidate = _unwrap(candidate)
        for form in _LETTER_FORMS:
            match = form.fullmatch(candidate)
            if match and match.group(1).upper() in letters:
                return match.group(1).upper(), match.group(2) or ""
    return None


def _text_match(answer: str, lettered: Mapping[str, str]) -> str | None:
    """The one option whose text equals the answer (exactly, else numerically); None if none or several."""
    wanted = _normal(answer)
    exact = [letter for letter, text in lettered.items() if _normal(text) == wanted]
    if exact:
        return exact[0] if len(exact) == 1 else None
    value = _number(answer)
    if value is None:
        return None
    close = [
        letter
        for letter, text in lettered.items()
        if (number := _number(text)) is not None and math.isclose(number, value, rel_tol=1e-9, abs_tol=1e-12)
    ]
    return close[0] if len(close) == 1 else None


def choice_letter(answer: str | None, options: Options = None) -> str | None:
    """The option letter an extracted answer names, or None when it names none or it is ambiguous.

    With options: a letter form of one of their letters, or one option's text (see the module
    docstring); a letter form whose trailing text is exactly another option's text is ambiguous.
    Without options: letter forms of A-J only.
    """
    if answer is None:
        return None
    lettered = option_letters(options)
    letters = list(lettered) if lettered else list(PLAIN_LETTERS)
    by_form = _letter_form(answer, letters)
    if not lettered:
        return by_form[0] if by_form else None
    by_text = _text_match(answer, lettered)
    if by_form is None:
        return by_text
    letter, rest = by_form
    if by_text is not None and by_text != letter:
        return None  # "A" is both letter A and the text of another option
    if rest and _normal(rest) != _normal(lettered[letter]):
        named = _text_match(rest, lettered)
        if named is not None and named != letter:
            return None  # "B: 15" where 15 is option C's text
    return letter


def grade_choice(answer: str | None, gold: str, options: Options = None) -> bool | None:
    """Whether the answer names the gold option; None when the problem is not graded as a choice.

    Gold may be a letter form ("C", "(C)") or an option's text, mapped to its letter through
    options. None when there are no options and gold is not a letter A-J, or when gold names no
    option: the caller then grades the answer as free text. An undecided answer (None, no match,
    ambiguous) is wrong.
    """
    gold_letter = choice_letter(gold, options)
    if gold_letter is None:
        return None
    return choice_letter(answer, options) == gold_letter
