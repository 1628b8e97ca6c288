"""The import direction of the house: apps -> library -> mondeq / bounds, never app -> app."""
from __future__ import annotations

import pytest

from src.sources import SRC, imports_of, module_name

APPS = {"src.run", "src.bound", "src.robustness", "src.plot", "src.bench"}
CORE = ("src.mondeq", "src.bounds", "src.certify")  # may import each other and the small library below them only


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
