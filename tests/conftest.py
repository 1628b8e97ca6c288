"""Shared test set-up: quiet, offline tools; composing conf/; running an app as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tests never talk to wandb's servers or DVC's analytics, and draw no windows.
os.environ["WANDB_MODE"] = "disabled"
os.environ["MPLBACKEND"] = "Agg"
os.environ["DVC_NO_ANALYTICS"] = "1"
# Tests use small tensors: one BLAS/OpenMP thread (set before torch is imported). On two
# cores, threaded MKL runs small batched (complex) inverses and SVDs 10-100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny() -> list[str]:
    """Overrides that keep a training run to seconds: synthetic data, one epoch of two batches."""
    return ["dataset=synthetic", "profile=tiny", "trainer.enable_progress_bar=false"]


@pytest.fixture
def compose():
    """compose(overrides, hydra=False) -> the config an app would get (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from src.cli import CONF_DIR  # also registers the run_name resolver

    def _compose(overrides=(), hydra: bool = False, config_name: str = "config"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=hydra)

    return _compose


@pytest.fixture
def foreign_checkpoint(tmp_path):
    """foreign_checkpoint(m) -> the path of a bare state dict (the original code's kind of file: no recorded
    settings) of an untrained FC monDEQ of width 8 on 1 x 28 x 28 inputs."""

    def _make(m: float) -> Path:
        import torch

        from src.models import build_model

        torch.manual_seed(0)
        model = build_model({"name": "mon_fc", "width": 8}, m, {}, (1, 28, 28), 10)
        path = tmp_path / "foreign.pt"
        torch.save(model.state_dict(), path)
        return path

    return _make


@pytest.fixture
def run_app(tmp_path):
    """run_app(app, *argv, env=None) -> CompletedProcess of `python -m src.<app> argv` in tmp_path.

    `env` adds variables to the environment; a value of None removes one.
    """

    def _run(app: str, *argv: str, env: dict | None = None, timeout: float = 300):
        merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        full_env = {k: v for k, v in merged.items() if v is not None}
        return subprocess.run([sys.executable, "-m", f"src.{app}", *argv], cwd=tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    return _run
