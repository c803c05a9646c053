"""The house rules of STYLE.md and issue 11, checked on the source tree (static: ast, no imports)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ares_lit", "data_modules", "callbacks")


def _files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_no_file_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in _files(*PACKAGES) if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long


def test_core_imports_nothing_else_of_the_project():
    for path in _files("ares_lit/core"):
        bad = {m for m in _imports(path) if m.split(".")[0] in PACKAGES and not m.startswith("ares_lit.core")}
        assert not bad, (path, bad)
        assert not {m for m in _imports(path) if m.startswith("lightning")}, path


def test_callbacks_do_not_import_each_other_and_data_modules_import_no_callback_or_module():
    for path in _files("callbacks"):
        assert not {m for m in _imports(path) if m.startswith("callbacks")}, path
    for path in _files("data_modules"):
        bad = {m for m in _imports(path) if m.startswith(("callbacks", "ares_lit.modules"))}
        assert not bad, (path, bad)


def test_the_experience_pipeline_imports_no_lightning():
    for path in _files("ares_lit/experience", "ares_lit/evaluation"):
        assert not {m for m in _imports(path) if m.startswith("lightning")}, path
