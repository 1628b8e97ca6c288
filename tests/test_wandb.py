"""wandb end to end, offline: train -> bound -> robustness -> plot, read back from the offline run files."""
from __future__ import annotations

import json

import pytest

from tests.wandb_offline import runs

pytestmark = pytest.mark.slow

OFFLINE_BY_DEFAULT = {"WANDB_MODE": None, "WANDB_API_KEY": None}


def test_every_app_logs_into_the_run_of_its_run_dir(run_app, tmp_path, tiny):
    args = [*tiny, "+experiment=fig1b", "m=20", "trainer.max_epochs=2", "then=[]"]  # each app by its own command
    for app, extra in (("run", []), ("bound", ["bound.methods=[theorem1]"]),
                       ("robustness", ["robustness.n_test=32", "robustness.pgd.steps=2", "robustness.progress=false"]),
                       # the same commands again: the run holds their results, nothing is logged again
                       ("run", []), ("bound", ["bound.methods=[theorem1]"]),
                       ("run", ["trainer.max_epochs=3"])):  # a longer run: its new epoch is logged
        proc = run_app(app, *args, *extra, env=OFFLINE_BY_DEFAULT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir, = (tmp_path / "outputs" / "fig1b").iterdir()
    ident = json.loads((run_dir / "wandb_run.json").read_text())
    logged = runs(run_dir)
    assert [r["job_type"] for r in logged] == ["train", "bound", "robustness", "train"]
    assert {r["id"] for r in logged} == {ident["id"]} and all(r["group"] == "fig1b" for r in logged[:1])
    assert {"fig1b", "profile=tiny", "model=mon_fc", "dataset=synthetic"} <= set(logged[0]["tags"])

    train = logged[0]
    for key in ("epoch/train_loss", "epoch/train_error", "epoch/test_error", "epoch/test_loss", "epoch/lr"):
        assert key in train["history"], sorted(train["history"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and "final/test_error" in train["summary"]
    assert "epoch/train_loss" in logged[3]["history"] and logged[3]["summary"]["final/test_error"] == metrics["test_error"]

    bounds = json.loads((run_dir / "bounds.json").read_text())
    assert logged[1]["summary"]["bound/upper/theorem1"] == bounds["upper"]["theorem1"]
    assert logged[1]["summary"]["bound/seconds/theorem1"] > 0  # the first run's: bounds.json has the re-run's
    assert logged[1]["history"]["bound/table/_type"] == "table-file"

    rob = json.loads((run_dir / "robustness.json").read_text())
    summary = logged[2]["summary"]
    curve = rob["certified_curves"]["theorem1/paper"]
    for eps, accuracy in zip(curve["eps"], curve["accuracy"]):  # every radius, not a sample
        assert summary[f"robustness/certified/theorem1/paper@{eps:g}"] == accuracy
    for eps, accuracy in zip(rob["pgd"]["eps"], rob["pgd"]["accuracy"]):
        assert summary[f"robustness/pgd@{eps:g}"] == accuracy
    assert logged[2]["history"]["robustness/curves/_type"] == "table-file"

    for _ in range(2):  # the same figure again: one plot run
        proc = run_app("plot", "--runs", "outputs", "--out", "report", "--figure", "fig1b", env=OFFLINE_BY_DEFAULT)
        assert proc.returncode == 0, proc.stderr[-3000:]
    plot, = runs(tmp_path / "report")
    assert (plot["job_type"], plot["group"]) == ("plot", "fig1b")
    assert {"fig1b", "figure", "profile:tiny", "dataset:synthetic"} <= set(plot["tags"])  # what it was drawn from
    assert plot["history"]["figures/fig1b/_type"] == "image-file"
