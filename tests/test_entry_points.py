"""The apps as console scripts (pyproject's [project.scripts], installed by `make venv`) and Hydra's
shell completion for them."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
BIN = Path(sys.executable).parent


def test_every_app_has_a_console_script():
    assert set(SCRIPTS) == {"mondeq-train", "mondeq-bound", "mondeq-robustness", "mondeq-bench", "mondeq-plot"}
    for name in SCRIPTS:
        assert (BIN / name).is_file(), f"{name} is not installed: run make venv (pip install -e .)"


@pytest.mark.parametrize("script,line,expected", [
    ("mondeq-train", "mondeq-train model=", "model=mon_fc"),
    ("mondeq-bound", "mondeq-bound bound.me", "bound.methods="),
    ("mondeq-robustness", "mondeq-robustness certify.ru", "certify.rule="),
])
def test_hydra_shell_completion_of_the_scripts(tmp_path, script, line, expected):
    proc = subprocess.run([str(BIN / script), "-sc", "query=bash"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "COMP_LINE": line}, timeout=120)
    assert proc.returncode == 0 and expected in proc.stdout.split(), proc.stdout + proc.stderr[-2000:]


def test_the_plot_script_runs_the_plot_app(tmp_path):
    proc = subprocess.run([str(BIN / "mondeq-plot"), "--runs", str(tmp_path / "nowhere")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "error: --runs: no such directory" in proc.stderr


@pytest.mark.parametrize("command", ["train", "bound", "robustness", "bench"])
def test_completion_answers_from_the_configs_without_importing_the_app(tmp_path, command):
    # a TAB must not wait for torch and the registries (seconds); Hydra completes from conf/ alone
    code = (f"import sys; sys.argv = ['mondeq-{command}', '-sc', 'query=bash']\n"
            f"from src import entry; entry.{command}()\n"
            "print(sorted(m for m in ('torch', 'src.schema', 'src.run', 'src.bound') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COMP_LINE": f"mondeq-{command} splitting.an"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "[]" and "splitting.anderson=" in proc.stdout.split(), proc.stdout


def test_the_commands_compose_the_apps_configs():
    from src import cli, entry

    assert entry.CONF_DIR == Path(cli.CONF_DIR)  # entry keeps its own copy: importing cli would cost a TAB
    assert {f"mondeq-{name}" for name in entry.APPS} | {"mondeq-plot"} == set(SCRIPTS)
    assert all(SCRIPTS[f"mondeq-{name}"] == f"src.entry:{name}" for name in entry.APPS)
