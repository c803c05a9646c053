"""The README and docs/ stay true: links and anchors resolve, named files exist, configs parse, commands are real.

Cheap checks, no model loads: the configs go through the real CLI with `--print_config` (which
exits after parsing), and the flags of the shown tool commands are looked up in each tool's own
argparse parser. The quick-start commands themselves are run elsewhere.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import re
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 260

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CONFIG = re.compile(r"configs/[\w./*-]+\.yaml")
REPO_FILE = re.compile(r"(?<![\w/.])((?:ares_lit|data_modules|callbacks|benchmarks|scripts|tests)/[\w./-]*\w\.(?:py|sh|sbatch))\b")
MODULE = re.compile(r"python -m (ares_lit(?:\.\w+)*)")
FLAG = re.compile(r"(?<!\S)(--[A-Za-z][\w.-]*)")
# Tools whose flags are checked against their argparse parser.
PARSED_TOOLS = ("ares_lit.evaluate", "ares_lit.export", "ares_lit.infer", "ares_lit.tools.ablate", "ares_lit.tools.pass_rate")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def _commands(text: str) -> list[str]:
    """Shell commands shown on a page: fenced lines (backslash continuations joined) and inline code
    spans, each without its trailing `# comment`."""
    found = []
    for block in FENCE.findall(text):
        found += block.replace("\\\n", " ").splitlines()
    found += [span.replace("\n", " ") for span in INLINE.findall(_prose(text))]
    return [re.split(r"\s#", c, maxsplit=1)[0].strip() for c in found if "python" in c or "sbatch" in c]


def _configs_named(text: str) -> list[str]:
    """configs/...yaml paths named on a page, globs (configs/*_vl.yaml) expanded; a glob must match."""
    out = []
    for name in CONFIG.findall(text):
        if "*" in name:
            matches = sorted(_rel(Path(p)) for p in glob.glob(str(ROOT / name)))
            out += matches or [name]  # an empty glob stays as a path that does not exist
        else:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# README and links


def test_readme_is_short():
    lines = _text(README).count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_readme_maps_every_docs_page():
    linked = {Path(t.split("#")[0]).name for t in LINK.findall(_prose(_text(README))) if t.startswith("docs/")}
    missing = sorted(p.name for p in DOCS if p.name not in linked)
    assert DOCS, "docs/ has no pages"
    assert not missing, f"README.md's map of the docs does not link: {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 on repeats."""
    anchors, count = set(), {}
    for heading in re.findall(r"^#+ (.*)$", _prose(_text(page)), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = count.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        count[slug] = n + 1
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(_text(page))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s)://, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)  # a heading that was renamed or removed
    assert not broken, f"{_rel(page)}: links to missing files or headings: {broken}"


def test_no_page_mentions_the_internal_spec():
    """The algorithm page is docs/algorithm.md; no page points at a file users do not have."""
    SPEC = "ARES_" + "SPEC"  # the internal spec's name, spelled so that a rename of references leaves it
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in {"runs", "lightning_logs", "node_modules"}
                   and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith(".md") and SPEC in Path(folder, f).read_text(encoding="utf-8", errors="replace"):
                offenders.append(_rel(Path(folder, f)))
    assert not offenders, f"these pages mention {SPEC}; point to docs/algorithm.md instead: {offenders}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_named_repository_files_exist(page):
    missing = sorted({p for p in REPO_FILE.findall(_text(page)) if not (ROOT / p).exists()})
    assert not missing, f"{_rel(page)} names files that do not exist: {missing}"


# ---------------------------------------------------------------------------------------------
# Configs: every named config exists and parses with the real CLI (on its base, for an overlay)


NAMED_CONFIGS = sorted({c for page in PAGES for c in _configs_named(_text(page))})


@pytest.mark.parametrize("config", NAMED_CONFIGS)
def test_named_config_exists(config):
    pages = [_rel(p) for p in PAGES if config in _configs_named(_text(p))]
    assert (ROOT / config).is_file(), f"{config} (named in {pages}) does not exist"


def _header_base(config: str) -> str | None:
    """The base an overlay names in its header comment: `--config BASE --config <this file>`."""
    head = "\n".join((ROOT / config).read_text(encoding="utf-8").splitlines()[:20])
    found = re.search(r"--config\s+(configs/\S+\.yaml)\s+--config\s+" + re.escape(config) + r"\b", head)
    return found.group(1) if found else None


def _config_chains() -> list[tuple[str, ...]]:
    """What to parse: the configs of each shown command, in order (`--config A --config B`, or
    `sbatch ... ares.sbatch A --config B`), and every other named config on the base its header
    names, else alone."""
    chains: set[tuple[str, ...]] = set()
    for page in PAGES:
        for command in _commands(_text(page)):
            if "python -m ares_lit fit" in command or "sbatch" in command:
                named = tuple(CONFIG.findall(command))
                if named and "*" not in "".join(named):
                    chains.add(named)
    covered = {chain[-1] for chain in chains}
    for config in NAMED_CONFIGS:
        if config not in covered and (ROOT / config).is_file():
            base = _header_base(config)
            chains.add((base, config) if base else (config,))
    return sorted(c for c in chains if all((ROOT / p).is_file() for p in c))


@pytest.mark.parametrize("chain", _config_chains(), ids=lambda c: "+".join(Path(p).stem for p in c))
def test_config_parses_with_the_cli(chain, capsys, monkeypatch):
    from ares_lit.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["ares_lit"])  # pytest's own arguments are not the CLI's
    args = ["fit"]
    for path in chain:
        args += ["--config", path]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), f"`python -m ares_lit {' '.join(args)}` does not parse:\n{captured.err[-2000:]}"
    # DeepSpeed logs "[<time>] [WARNING] ..." to stdout on first import; the YAML has no such line.
    resolved = yaml.safe_load("\n".join(line for line in captured.out.splitlines() if not line.startswith("[20")))
    assert {"trainer", "model", "data"} <= set(resolved), f"{chain}: --print_config printed no full config"
    assert resolved["model"]["class_path"] and resolved["data"]["class_path"]


# ---------------------------------------------------------------------------------------------
# Commands: modules exist, and the tools' flags exist in their parsers


def _shown_commands() -> list[tuple[str, str, str]]:
    """(page, module, the command from the module on) for every `python -m ares_lit...` shown."""
    out = []
    for page in PAGES:
        for command in _commands(_text(page)):
            for found in MODULE.finditer(command):
                rest = command[found.end():]
                nxt = MODULE.search(rest)  # `a && b`: up to the next command
                out.append((_rel(page), found.group(1), rest[: nxt.start()] if nxt else rest))
    return out


SHOWN = _shown_commands()


def test_pages_show_commands():
    modules = {m for _, m, _ in SHOWN}
    assert {"ares_lit", "ares_lit.evaluate"} <= modules, f"expected fit and evaluate commands; found {sorted(modules)}"


@pytest.mark.parametrize("module", sorted({m for _, m, _ in SHOWN}))
def test_command_module_exists(module):
    path = ROOT / module.replace(".", "/")
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), (
        f"`python -m {module}` is shown in {sorted({p for p, m, _ in SHOWN if m == module})}, but there is no such module")


class _Parsed(Exception):
    pass


def _tool_parser(module: str) -> argparse.ArgumentParser:
    """The tool's parser: its `_parser()`, or the one its `main` builds (caught at parse_args)."""
    mod = importlib.import_module(module)
    if hasattr(mod, "_parser"):
        return mod._parser()
    caught = {}

    def catch(self, *args, **kwargs):
        caught["parser"] = self
        raise _Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", catch), pytest.raises(_Parsed):
        mod.main([])
    return caught["parser"]


@pytest.mark.parametrize("module", PARSED_TOOLS)
def test_tool_flags_exist(module):
    shown = [(page, rest) for page, m, rest in SHOWN if m == module]
    parser = _tool_parser(module)
    known = set(parser._option_string_actions)
    unknown = sorted({(page, flag.split("=")[0]) for page, rest in shown for flag in FLAG.findall(rest)
                      if flag.split("=")[0] not in known})
    assert not unknown, f"`python -m {module}` is shown with flags its parser does not have: {unknown}"
