"""src/sources.py: the code dependencies of the DVC stages, found from the imports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src import sources

ROOT = Path(__file__).resolve().parents[1]


def _relative(paths) -> set[str]:
    return {p.relative_to(sources.ROOT).as_posix() for p in paths}


@pytest.mark.parametrize("app", sources.APPS)
def test_every_module_an_app_loads_is_among_its_sources(app):
    """Independently of the static walk: the src modules that importing the app actually loads (module
    level imports; the walk also sees those inside functions)."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, src.{app}; print(' '.join(m.__file__ for n, m in sys.modules.items() "
                               f"if n.split('.')[0] == 'src'))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = _relative(Path(f) for f in loaded) - _relative(sources.sources(app))
    assert not missing, f"src.{app} loads {sorted(missing)}, not among its sources"


def test_training_reads_the_registries_not_the_bounds_or_certificates():
    """The registries import no bound or certificate, so that changing one re-runs no training; a function-level
    import counts (src.run's resume reads src.checkpoints inside a function)."""
    run = _relative(sources.sources("run"))
    assert {"src/bounds/registry.py", "src/certify/registry.py", "src/lit.py", "src/mondeq/splitting.py"} <= run
    assert not {"src/bounds/compute.py", "src/bounds/lipsdp.py", "src/certify/local.py", "src/bound.py",
                "src/figures/canvas.py", "src/plot.py"} & run
    assert "conf/config.yaml" in run and not any(p.startswith("conf/experiment/") for p in run)


def test_the_certificates_imported_by_name_are_robustness_sources():
    """src.robustness imports src/certify/<name>.py by a computed name: the whole subpackage counts."""
    certificates = _relative((sources.SRC / "certify").glob("*.py"))
    assert certificates <= _relative(sources.sources("robustness"))
    assert "src/certify/local.py" not in _relative(sources.sources("bound"))
    assert sources.imported_by_name(sources.SRC / "robustness.py") == {"src.certify"}
    assert sources.imported_by_name(sources.SRC / "run.py") == set()  # its followers: apps


def test_a_name_it_cannot_read_is_an_error_and_hydras_targets_are_sources(tmp_path, monkeypatch):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "conf").mkdir()
    for name in ("src/__init__.py", "src/pkg/__init__.py", "src/pkg/a.py", "src/pkg/b.py", "src/made.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "conf" / "config.yaml").write_text("logger:\n  _target_: src.made.factory\n")
    monkeypatch.setattr(sources, "ROOT", tmp_path)
    monkeypatch.setattr(sources, "SRC", tmp_path / "src")
    monkeypatch.setattr(sources, "CONF", tmp_path / "conf")
    (tmp_path / "src" / "run.py").write_text(
        "import importlib\n"
        "def f(name):\n"
        "    importlib.import_module(f'{__package__}.pkg.{name}')\n"  # the whole subpackage
        "    importlib.import_module('src.made')\n"  # as it is
        "    importlib.import_module(f'{__package__}.{name}')\n"  # an app
        "    importlib.import_module(f'numpy.{name}')\n")  # not ours
    assert _relative(sources.sources("run")) >= {"src/pkg/a.py", "src/pkg/b.py", "src/made.py", "conf/config.yaml"}
    assert _relative(sources.sources("run")) - {"conf/config.yaml"} == \
        {"src/__init__.py", "src/run.py", "src/made.py", "src/pkg/__init__.py", "src/pkg/a.py", "src/pkg/b.py"}
    (tmp_path / "src" / "plot.py").write_text("")
    assert "src/made.py" not in _relative(sources.sources("plot"))  # Hydra instantiates for Hydra apps only
    (tmp_path / "src" / "bound.py").write_text("import importlib\nname = 'src.made'\nimportlib.import_module(name)\n")
    with pytest.raises(ValueError, match=r"src/bound.py:3: src.sources cannot tell which module"):
        sources.sources("bound")


def test_a_manifest_changes_exactly_when_one_of_its_sources_does(tmp_path, monkeypatch):
    for part in ("src", "conf"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "ROOT", tmp_path)
    monkeypatch.setattr(sources, "SRC", tmp_path / "src")
    monkeypatch.setattr(sources, "CONF", tmp_path / "conf")
    before = {app: sources.manifest(app) for app in sources.APPS}

    def edited(path: str) -> set[str]:
        with open(tmp_path / path, "a") as f:
            f.write("\n# edited\n")
        after = {app: sources.manifest(app) for app in sources.APPS}
        changed = {app for app in sources.APPS if after[app] != before[app]}
        before.update(after)
        return changed

    assert edited("src/figures/canvas.py") == {"plot"}
    assert edited("src/mondeq/fc.py") == {"run", "bound", "robustness"}
    assert edited("src/certify/local.py") == {"robustness"}
    assert edited("src/bounds/lipsdp.py") == {"bound", "robustness"}
    assert edited("conf/experiment/fig1b.yaml") == set()  # each stage names its own overlay
    assert edited("conf/model/mon_fc.yaml") == set(sources.APPS)
    assert edited("src/attack.py") == {"robustness"}


def test_every_app_stage_depends_on_its_manifest_and_lists_no_source():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert pipeline["sources"]["outs"] == [f"outputs/sources/{app}.json" for app in sources.APPS]
    assert pipeline["sources"]["cmd"].split()[-len(sources.APPS):] == list(sources.APPS)
    for name, stage in pipeline.items():
        if name == "sources":
            continue
        stage = stage.get("do", stage)
        app = re.search(r"python -m src\.(\w+)", stage["cmd"]).group(1)
        assert f"outputs/sources/{app}.json" in stage["deps"], name
        assert not [d for d in stage["deps"] if d.startswith("src") or
                    (d.startswith("conf") and not d.startswith("conf/experiment/"))], name


def test_the_command_writes_one_file_per_app_and_refuses_an_unknown_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "src.sources", "--out", str(tmp_path), "plot", "run"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "plot.json").read_text())
    assert written == sources.manifest("plot") and sorted(p.name for p in tmp_path.iterdir()) == ["plot.json", "run.json"]
    refused = subprocess.run([sys.executable, "-m", "src.sources", "--out", str(tmp_path), "train"],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.strip() == \
        "error: no app 'train'; allowed: run, bound, robustness, plot"
