"""Training under DDP on the CPU (two processes, gloo): the test metrics are those of the whole split,
each example counted once, and equal to evaluating the trained checkpoint in one process."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from src.data import make_loaders
from src.lit import LitClassifier, margins

pytestmark = pytest.mark.slow


def counts(model, loader, gamma: float) -> tuple[int, int, int]:
    n = err = margin_err = 0
    with torch.no_grad():
        for x, y in loader:
            margin = margins(model(x), y)
            n, err, margin_err = n + len(y), err + int((margin <= 0).sum()), margin_err + int((margin < gamma).sum())
    return n, err, margin_err


def test_ddp_metrics_are_those_of_the_whole_split(run_app, tmp_path, tiny):
    # Odd split sizes and 50-example batches: the two shards differ in size and end in partial batches,
    # so padding (repeated examples) or a missing sum over processes would change every number below.
    args = [*tiny, "logger=none", "trainer=ddp", "trainer.accelerator=cpu", "dataset.n_train=255",
            "dataset.n_test=127", "dataset.test_batch_size=50", "trainer.limit_test_batches=1.0"]
    proc = run_app("run", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len([line for line in proc.stdout.splitlines() if line.startswith("{")]) == 1  # rank zero prints
    assert "sync_dist" not in proc.stderr  # Lightning's warning: an epoch metric of rank zero's batches only
    run_dir, = (tmp_path / "outputs" / "default").iterdir()
    assert "trainer=ddp" in run_dir.name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg = OmegaConf.load(run_dir / ".hydra" / "run" / "config.yaml")

    lit = LitClassifier.load_from_checkpoint(run_dir / "model.ckpt", map_location="cpu", weights_only=True).eval()
    loaders = make_loaders(OmegaConf.to_container(cfg.dataset, resolve=True))
    (n_test, err_test, _), (n_train, err_train, margin_train) = (
        counts(lit, loader, cfg.margin_gamma) for loader in (loaders.test, loaders.train_eval))
    assert metrics["evaluated"] == {"test": n_test, "train": n_train} == {"test": 127, "train": 255}
    assert (metrics["test_error"], metrics["train_error"], metrics["margin_error"]) == (
        err_test / n_test, err_train / n_train, margin_train / n_train)

    conv = metrics["convergence"]
    # batches of both processes: test 64 + 63 examples -> 2 + 2, train 128 + 127 -> 3 + 3 (one process: 3 + 6)
    assert conv["evaluation"]["forward"]["solves"] == 10
    # two training steps in each process, each one forward and one backward solve
    assert conv["training"]["forward"]["solves"] == conv["training"]["backward"]["solves"] == 4
    assert lit.hparams.trainer["devices"] == 2  # recorded: it sets the examples per optimizer step
