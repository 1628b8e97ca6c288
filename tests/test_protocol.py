"""Training protocols: protocol=margin stops at the first epoch below the threshold; initial weights kept."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from src.cli import validate
from src.errors import ConfigError
from src.lit import LitClassifier
from src.data import training_subset
from src.run import finished_step, train

# A task on which the training margin error (at margin 1) falls over a few epochs of two batches.
MARGIN = ["protocol=margin", "protocol.n_train=200", "margin_gamma=1", "optim.lr=1e-2", "logger=csv",
          "trainer.max_epochs=6"]


def train_in(compose, run_dir: Path, *overrides: str) -> dict:
    cfg = compose(list(overrides))
    validate(cfg)
    return train(cfg, run_dir)


def logged(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per CSV-logger version (one per invocation): (epoch, train/margin_error) as logged, and epochs trained."""
    out = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        out[path.parent.name] = {
            "margin": [(int(r["epoch"]), float(r["train/margin_error"])) for r in rows if r.get("train/margin_error")],
            "trained": sorted({int(r["epoch"]) for r in rows if r.get("train/loss")}),
        }
    return out


def test_margin_protocol_stops_at_the_first_epoch_below_the_threshold(compose, tmp_path, tiny):
    # 1. Never stopping (no margin error is < 0): the margin error of every epoch, and the epoch cap.
    free = train_in(compose, tmp_path / "free", *tiny, *MARGIN, "trainer.log_every_n_steps=1",
                    "protocol.threshold=0")
    errors = [e for _, e in logged(tmp_path / "free")["version_0"]["margin"]]
    assert len(errors) == 6 and free["epochs"] == 6 and free["reached"] is False
    assert free["margin_error_reached"] == pytest.approx(errors[-1], abs=1e-6)
    # 2. The threshold: for the last epoch k before the cap that sets a new minimum, the smallest
    #    error before it; so epoch k is the first below it, and an earlier one sits exactly at it
    #    (not below: no stop there).
    k = max(i for i in range(1, len(errors) - 1) if errors[i] < min(errors[:i]))
    threshold = min(errors[:k])
    assert k >= 2, errors  # the task must take a few epochs, or the test shows little
    stopped = train_in(compose, tmp_path / "stop", *tiny, *MARGIN, "trainer.log_every_n_steps=1",
                       f"protocol.threshold={threshold!r}")
    seen = [e for _, e in logged(tmp_path / "stop")["version_0"]["margin"]]
    assert seen == errors[:k + 1]  # the same training, stopped after epoch k (0-based)
    assert stopped["epochs"] == k + 1 < 6  # before the cap
    assert stopped["reached"] is True and stopped["margin_error_reached"] == pytest.approx(errors[k], abs=1e-6)
    assert stopped["protocol"] == "margin" and stopped["margin_threshold"] == threshold
    assert stopped["n_train"] == 200
    assert all(0 <= stopped[key] <= 1 for key in ("train_error", "test_error", "margin_error"))
    # 3. The same command again resumes a stopped run: nothing more is trained (and finished_step knows it).
    last = str(tmp_path / "stop" / "last.ckpt")
    assert finished_step(last, {"max_epochs": 6}) == torch.load(last, weights_only=True)["global_step"]
    assert finished_step(str(tmp_path / "free" / "last.ckpt"), {"max_epochs": 7}) is None
    again = train_in(compose, tmp_path / "stop", *tiny, *MARGIN, "trainer.log_every_n_steps=1",
                     f"protocol.threshold={threshold!r}")
    assert logged(tmp_path / "stop")["version_1"]["trained"] == []
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in stopped.items() if k != "seconds"}


def test_standard_protocol_is_unchanged(compose, tmp_path, tiny):
    metrics = train_in(compose, tmp_path, *tiny, "logger=csv")
    assert metrics["protocol"] == "standard" and metrics["n_train"] == 256 and metrics["epochs"] == 1
    assert "reached" not in metrics and "margin_threshold" not in metrics
    assert all(not v["margin"] for v in logged(tmp_path).values())


def test_checkpoint_keeps_the_initial_weights(compose, tmp_path, tiny):
    cfg = compose([*tiny, "logger=none", "m=5"])
    validate(cfg)
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=True)
    initial, final = ckpt["initial_state_dict"], ckpt["state_dict"]
    # the initialisation of the same seed
    torch.manual_seed(cfg.seed)
    fresh = LitClassifier(model={"name": "mon_fc", "width": 40}, m=5.0, splitting=dict(cfg.splitting),
                          dataset=dict(cfg.dataset), optim=dict(cfg.optim))
    assert set(initial) == set(fresh.model.state_dict()) == {k[len("model."):] for k in final}
    assert all(torch.equal(initial[k], v) for k, v in fresh.model.state_dict().items())
    assert not torch.equal(initial["Wout.weight"], final["model.Wout.weight"])  # it trained
    lit = LitClassifier.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(lit.initial_state[k], v) for k, v in initial.items())


def test_training_subset_is_drawn_with_the_seed():
    a = training_subset(1000, 100, seed=3)
    assert torch.equal(a, training_subset(1000, 100, seed=3)) and not torch.equal(a, training_subset(1000, 100, 4))
    assert len(a) == 100 and len(set(a.tolist())) == 100 and torch.equal(a, a.sort().values)
    assert training_subset(4096, 4096, seed=0) is None and training_subset(4096, None, seed=0) is None
    with pytest.raises(ConfigError, match="n_train=5000"):
        training_subset(4096, 5000, seed=0)


def test_margin_protocol_config(compose):
    cfg = compose(["protocol=margin"])
    assert dict(cfg.protocol) == {"name": "margin", "n_train": 4096, "threshold": 0.1}
    assert cfg.margin_gamma == 10.0
    assert cfg.trainer.max_epochs == cfg.optim.epochs  # the cap: the profile's
    standard = compose([])
    assert standard.protocol.name == "standard" and standard.protocol.n_train is None
    assert {k: v for k, v in standard.items() if k != "protocol"} == {k: v for k, v in cfg.items() if k != "protocol"}
    with pytest.raises(Exception, match="protocol/nope"):
        compose(["protocol=nope"])


def test_metrics_file_records_the_protocol(compose, tmp_path, tiny):
    train_in(compose, tmp_path, *tiny, *MARGIN, "protocol.threshold=0.5", "trainer.max_epochs=2")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"protocol", "epochs", "margin_error_reached", "reached", "margin_threshold", "train_error",
            "test_error", "n_train"} <= set(metrics)
