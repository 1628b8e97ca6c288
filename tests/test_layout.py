"""The import direction of the house: apps -> library -> mondeq / bounds, never app -> app."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APPS = {"src.run", "src.bound", "src.robustness", "src.plot", "src.bench"}
CORE = ("src.mondeq", "src.bounds", "src.certify")  # may import each other and the small library below them only


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the src modules `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("src")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.startswith("src"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_an_app(path):
    assert not (imports_of(path) & APPS), f"{module_name(path)} imports an app module"


@pytest.mark.parametrize("path", [p for p in MODULES if module_name(p).startswith(CORE)], ids=lambda p: module_name(p))
def test_solver_and_bound_packages_import_no_app_framework(path):
    bad = {m for m in imports_of(path) if m.startswith(("src.cli", "src.lit", "src.figures", "src.loggers"))}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def test_the_checker_sees_relative_imports():
    names = imports_of(SRC / "bound.py")
    assert "src.bounds.registry" in names and "src.bounds.compute" in names and "src.cli" in names
