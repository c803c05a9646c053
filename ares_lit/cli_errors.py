"""One-line errors for `python -m ares_lit` (docs/configuration.md, "Errors and console output").

A config or data error prints one message that names the field, the value and the fix, with no
usage dump and no traceback; `--debug` restores both. Two sources:

- parse errors (unknown keys, wrong types): jsonargparse's nested "Parser key … / Problem with given
  class_path …" report is reduced to its innermost field and message, and an unknown key gets a
  "did you mean" from the keys its class or group accepts (`AresArgumentParser.error`);
- exceptions raised while the run is being set up (a constructor's `ValueError`, a missing data
  file, a DataModule's check in `setup`): `short_error` takes the innermost cause of the chain.

The CLI (ares_lit/cli.py) wires both in.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys

from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["AresArgumentParser", "short_error", "describe_parse_error", "did_you_mean", "HINT"]

HINT = "(`--help` lists the options; `--debug` shows the full error)"

_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "- Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
)


def did_you_mean(word: str, candidates) -> str:
    """`; did you mean 'x'?` for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _class_options(class_path: str | None) -> list[str]:
    if not class_path:
        return []
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return []


def _parser_keys(parser) -> list[str]:
    """Every `--key` of `parser` and of its subcommands' parsers (fit, validate, test)."""
    keys = []
    for action in getattr(parser, "_actions", []):
        keys += [s.lstrip("-") for s in action.option_strings if s.startswith("--")]
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            for sub in choices.values():
                if hasattr(sub, "_actions"):
                    keys += _parser_keys(sub)
    return keys


def describe_parse_error(message: str, parser=None) -> str:
    """One line for jsonargparse's error `message` (the innermost field and reason, plus a suggestion)."""
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if m:
        key = m.group(1).split("=", 1)[0].lstrip("-")
        keys = _parser_keys(parser) if parser is not None else []
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}?" if close else ""
        return f"unknown option --{key}{hint}"
    m = re.search(r"Group '([^']+)' does not accept option '([^']+)'", message)
    s = re.search(r"Subcommand '[^']+' does not accept option '([^'.]+)\.([^']+)'", message)
    if m or s:
        group, key = (m or s).groups()
        keys = [k[len(group) + 1:] for k in _parser_keys(parser) if k.startswith(group + ".")] if parser else []
        return f"unknown key '{key}' in {group}{did_you_mean(key, keys)}"
    path: list[str] = []
    class_path = None
    leaf = message.strip().splitlines()[-1].strip() if message.strip() else message
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        k = re.match(r'(?:- )?Parser key "([^"]+)":?$', line)
        c = re.match(r"- Problem with given class_path '([^']+)':?$", line)
        if k:
            path.append(k.group(1))
        elif c:
            class_path = c.group(1)
        else:
            leaf = line.lstrip("- ")
    field = ".".join(path)
    o = re.match(r"Option '([^']+)' is not accepted", leaf)
    if o:
        key = o.group(1)
        where = f" in {field}" if field else ""
        owner = f" ({class_path})" if class_path else ""
        return f"unknown key '{key}'{where}{owner}{did_you_mean(key.split('.')[-1], _class_options(class_path))}"
    t = re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)", leaf)
    if t:
        return f"{field}: expected {t.group(1)}, got {t.group(2)!r}"
    return f"{field}: {leaf}" if field and not leaf.startswith(field) else leaf


class AresArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line, with no abbreviated keys.

    argparse accepts any unambiguous prefix of an option (`--trainer.max_step=1` silently set
    `max_steps`); `allow_abbrev=False` makes such a key an error with a suggestion instead.
    """

    debug = False  # set by `python -m ares_lit --debug` (ares_lit/cli.py main)

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):  # noqa: D102
        if self.debug or not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"error: {describe_parse_error(message, parser)}\n       {HINT}\n")
        self.exit(2)


def short_error(exc: BaseException) -> str:
    """The innermost cause of `exc`'s chain as `Type: message` (no type for a plain ValueError): its own
    lines, at most 4 (a message that lists several problems keeps them)."""
    seen = set()
    root = exc
    while id(root) not in seen:
        seen.add(id(root))
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None:
            break
        root = nxt
    text = str(root).strip() or type(root).__name__
    if "Does not validate against any of the Union subtypes" in text:  # a wrapper's report
        text = describe_parse_error(text)
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 4:  # a list of problems keeps its lines; a dump does not flood the console
        lines = lines[:3] + [f"  ... ({len(lines) - 3} more lines with --debug)"]
    text = "\n       ".join(lines)
    prefix = "" if isinstance(root, ValueError) and type(root) is ValueError else f"{type(root).__name__}: "
    return prefix + text
