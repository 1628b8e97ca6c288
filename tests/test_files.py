"""Nothing half-written, nothing damaged read late: every file the apps write is swapped in whole
(src/files.py), and a damaged JSON file of a run dir refuses the app before its work, naming the file."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

import src.data
from src import files
from src.bound import bound
from src.cli import validate
from src.errors import DamagedFileError, RunDirError
from src.lit import AtomicCheckpointIO
from src.robustness import robustness
from src.run import train

TRUNCATED = '{"id": "0123'


@pytest.fixture
def swapped(monkeypatch) -> list[tuple[Path, Path]]:
    """Every (temporary, final) path that os.replace swaps while the test runs."""
    calls: list[tuple[Path, Path]] = []
    real = os.replace

    def record(src, dst):
        calls.append((Path(src), Path(dst)))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", record)
    return calls


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "bounds.json"
    files.write_json(path, {"upper": {"theorem1": 2.0}})

    def half(f):
        f.write(b'{"upper": {"theor')
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        files.replace(path, half)
    assert files.read_json(path) == {"upper": {"theorem1": 2.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["bounds.json"]


def test_a_nan_is_refused_naming_its_key_and_nothing_is_written(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics.json: convergence.training.0 is not finite"):
        files.write_json(path, {"m": 1.0, "convergence": {"training": [float("nan")]}})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content,problem", [
    (TRUNCATED, "not valid JSON"),
    ("", "empty"),
    ('{"upper": NaN}', "NaN"),
    ("[1, 2]", "a JSON list, not an object"),
])
def test_a_damaged_json_file_is_refused_naming_it_and_what_to_do(tmp_path, content, problem):
    path = tmp_path / "bounds.json"
    path.write_text(content)
    with pytest.raises(DamagedFileError) as err:
        files.read_json(path)
    assert str(path) in str(err.value) and problem in str(err.value) and f"mv {path} " in str(err.value)
    assert files.read_json(tmp_path / "absent.json") is None


def test_a_run_dir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.write_text("")
    for run_dir in (taken, taken / "sub"):
        with pytest.raises(RunDirError, match=f"run dir {run_dir}.* is a file, not a directory"):
            files.check_run_dir(run_dir)
    files.check_run_dir(tmp_path / "new" / "run")  # made later, in a writable dir
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: ask the mode bits instead of the kernel
        monkeypatch.setattr(files.os, "access", lambda path, mode: bool(os.stat(path).st_mode & stat.S_IWUSR))
    for run_dir in (locked, locked / "run"):
        with pytest.raises(RunDirError, match=f"run dir {run_dir}.* is not writable"):
            files.check_run_dir(run_dir)


def test_a_checkpoint_is_swapped_in_from_beside_it(tmp_path, swapped):
    """Lightning's own writer moves its file in from the system's temp dir: a copy when that is another
    file system, so a kill mid-copy would leave a truncated checkpoint."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    (temporary, final), = swapped
    assert final == path and temporary.parent == path.parent and not temporary.exists()
    assert AtomicCheckpointIO().load_checkpoint(path) == {"epoch": 1}


def test_every_file_of_a_training_run_is_swapped_in(compose, tmp_path, tiny, swapped):
    cfg = compose([*tiny, "logger=none"])
    validate(cfg)
    train(cfg, tmp_path)
    written = {p.name for p in tmp_path.iterdir()} - {".lock"}
    assert written == {"last.ckpt", "model.ckpt", "metrics.json", "summary_run.json"}
    assert {final.name for _, final in swapped} == written
    assert all(temporary.parent == final.parent == tmp_path for temporary, final in swapped)


def _app(compose, app: str, tmp_path: Path, tiny: list[str], ckpt: Path):
    """(function, config) of an app on a run dir, with foreign checkpoint `ckpt` for src.bound and src.robustness."""
    if app == "run":
        cfg = compose([*tiny, "logger=none"])
    else:
        cfg = compose(["dataset=synthetic", "model.width=8", "m=5", f"ckpt={ckpt}", "logger=none",
                       "bound.accept_poor_model=true"], config_name=app)
    validate(cfg)
    return {"run": train, "bound": bound, "robustness": robustness}[app], cfg


@pytest.mark.parametrize("app,name", [
    ("run", "wandb_run.json"),
    ("bound", "bounds.json"), ("bound", "wandb_run.json"),
    ("robustness", "robustness.json"), ("robustness", "bounds.json"), ("robustness", "wandb_run.json"),
])
def test_a_damaged_result_file_refuses_the_app_before_any_work(compose, tmp_path, tiny, foreign_checkpoint, monkeypatch,
                                                               app, name):
    def no_work(*args, **kwargs):
        pytest.fail("the app read its data before it checked the run dir's files")

    monkeypatch.setattr(src.data, "make_loaders", no_work)
    monkeypatch.setattr(src.data, "load_splits", no_work)
    task, cfg = _app(compose, app, tmp_path, tiny, foreign_checkpoint(5.0))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_text(TRUNCATED)
    with pytest.raises(DamagedFileError, match=f"{run_dir / name} is damaged"):
        task(cfg, run_dir)
    assert (run_dir / name).read_text() == TRUNCATED


def test_a_damaged_bounds_json_ends_src_bound_as_one_line(run_app, tmp_path, foreign_checkpoint):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "bounds.json").write_text(TRUNCATED)
    proc = run_app("bound", "dataset=synthetic", "model.width=8", "m=5", f"ckpt={foreign_checkpoint(5.0)}",
                   "logger=none", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{run_dir / 'bounds.json'} is damaged" in errors[0] and "move it away" in errors[0]
    assert (run_dir / "bounds.json").read_text() == TRUNCATED and not (run_dir / ".hydra").exists()


def test_a_damaged_metrics_json_ends_src_plot_as_one_line_before_drawing(run_app, tmp_path):
    run_dir = tmp_path / "runs" / "fig1b" / "m=1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(TRUNCATED)
    proc = run_app("plot", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-wandb", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {run_dir / 'metrics.json'} is damaged (not valid JSON: Unterminated string starting at: line 1 "
        f"column 8 (char 7)), perhaps by an interrupted write: move it away (mv {run_dir / 'metrics.json'} "
        f"{run_dir / 'metrics.json'}.damaged) and run the command again"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,record,where", [
    ("robustness.json", {"certified_curves": {"a/b": {"audit": None}}}, "certified_curves.a/b.audit"),
    ("robustness.json", {"certified_curves": [], "pgd": 3}, "certified_curves is a JSON list"),
    ("robustness.json", {"certified": "z"}, "certified is a JSON str"),
    ("bounds.json", {"provenance": {"grad_norm": "x"}}, "provenance.grad_norm is a JSON str"),
    ("bounds.json", {"upper": [1.0]}, "upper is a JSON list"),
])
def test_a_result_file_of_the_wrong_layout_is_damage_named_by_its_section(tmp_path, name, record, where):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    with pytest.raises(DamagedFileError, match=re.escape(where)):
        files.read_json(path)


def test_the_layouts_admit_what_the_apps_write(tmp_path):
    """A DNN's entries record convergence null: no damage."""
    path = tmp_path / "bounds.json"
    path.write_text(json.dumps({"upper": {"naive": 2.0}, "provenance": {"naive": {"settings": {}, "convergence": None}}}))
    assert files.read_json(path)["upper"] == {"naive": 2.0}
