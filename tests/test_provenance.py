"""What a run dir guarantees: a lock, earlier entries kept per checkpoint, data read only when needed,
foreign checkpoints (no recorded settings) checked for m and a sane test error."""
from __future__ import annotations

import json

import pytest

from src import provenance
from src.bound import bound, merge
from src.errors import CheckpointError


def test_a_second_process_on_a_locked_run_dir_refuses_at_once(run_app, tmp_path, tiny):
    run_dir = tmp_path / "busy"
    saved = run_dir / ".hydra" / "run" / "config.yaml"  # the record of the run that holds the dir
    saved.parent.mkdir(parents=True)
    saved.write_text("m: 7.0\n")
    with provenance.locked(run_dir):
        proc = run_app("run", *tiny, "logger=none", f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: run dir {run_dir} is in use by another process" in proc.stderr
    assert not (run_dir / "metrics.json").exists()
    assert saved.read_text() == "m: 7.0\n" and [p.name for p in saved.parent.iterdir()] == ["config.yaml"]


def test_merge_keeps_earlier_entries_of_the_same_checkpoint_only():
    def record(sha, **upper):
        return {"ckpt_sha256": sha, "upper": dict(upper), "lower": {}, "details": {k: {} for k in upper},
                "seconds": {k: 1.0 for k in upper}, "solver": {}, "failed": {},
                "provenance": {k: {"ckpt_sha256": sha, "settings": {}} for k in upper}}

    previous = record("a", theorem1=3.0, sdp_diag=2.0)
    previous["provenance"]["naive"] = {"ckpt_sha256": "b"}
    previous["upper"]["naive"] = 9.0
    now = merge(previous, record("a", theorem1=2.5), lambda name: {})
    assert now["upper"] == {"theorem1": 2.5, "sdp_diag": 2.0}  # recomputed, kept, dropped (other checkpoint)
    assert set(now["provenance"]) == {"theorem1", "sdp_diag"} and now["seconds"]["sdp_diag"] == 1.0
    # an entry of other settings is dropped too (m, as an original-layout checkpoint records none)
    previous["provenance"]["sdp_diag"]["settings"] = {"m": 5.0}
    now = merge(previous, record("a", theorem1=2.5), lambda name: {"m": 20.0})
    assert now["upper"] == {"theorem1": 2.5}


def test_data_free_bounds_run_without_the_dataset(compose, tmp_path, foreign_checkpoint):
    ckpt = foreign_checkpoint(5.0)
    cfg = compose(["dataset=mnist", f"dataset.root={tmp_path}/nowhere", "dataset.download=false", "model.width=8",
                   "m=5", f"ckpt={ckpt}", "bound.methods=[theorem1]"], config_name="bound")
    record = bound(cfg, tmp_path / "run")
    assert record["upper"]["theorem1"] > 0 and "test_error" not in record
    assert "files not found" in record["skipped"]["test_error"]
    assert json.loads((tmp_path / "run" / "bounds.json").read_text())["provenance"]["theorem1"]["ckpt_sha256"] \
        == provenance.sha256(ckpt)
    needs_data = compose(["dataset=mnist", f"dataset.root={tmp_path}/nowhere", "dataset.download=false",
                          "model.width=8", "m=5", f"ckpt={ckpt}", "bound.methods=[grad_norm]"], config_name="bound")
    with pytest.raises(FileNotFoundError, match=r"bound.methods \['grad_norm'\] need the test split"):
        bound(needs_data, tmp_path / "run")


def test_a_foreign_checkpoint_needs_m_and_a_sane_test_error(compose, tmp_path, foreign_checkpoint):
    ckpt = foreign_checkpoint(5.0)
    args = ["dataset=synthetic", "model.width=8", "m=5", f"ckpt={ckpt}", "bound.methods=[theorem1]",
            "generalization.enabled=false"]
    with pytest.raises(CheckpointError, match=r"does not record the m .* give it on the command line \(m=VALUE\)"):
        bound(compose(args, config_name="bound"), tmp_path / "run", m_given=False)
    # untrained: about 90% test error on 10 classes, above the 50% rule
    with pytest.raises(CheckpointError, match=r"misclassifies .* \(more than 50%\): check m .*accept_poor_model"):
        bound(compose(args, config_name="bound"), tmp_path / "run")
    record = bound(compose([*args, "bound.accept_poor_model=true"], config_name="bound"), tmp_path / "run")
    assert record["test_error"] > 0.5 and record["upper"]["theorem1"] > 0


def test_a_lock_file_that_cannot_be_opened_refuses_in_one_line(tmp_path):
    (tmp_path / provenance.LOCK_FILE).mkdir(parents=True)
    with pytest.raises(provenance.RunDirBusyError, match="cannot be opened"):
        with provenance.locked(tmp_path):
            pass
