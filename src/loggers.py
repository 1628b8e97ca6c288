"""The training loggers of the `logger` config group, each built by `hydra.utils.instantiate`.

Every factory takes the run's place and identity (run_dir, group, run_config) and its group's
settings, so src.run builds any of them the same way; a new logger is one factory here
and one file in conf/logger/ naming it as `_target_`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def none(run_dir: Path, group: str, run_config: dict):
    return False


def csv(run_dir: Path, group: str, run_config: dict, name: str = "csv"):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(run_dir), name=name)


def wandb(run_dir: Path, group: str, run_config: dict, project: str, entity: str | None = None,
          mode: str | None = None):
    from lightning.pytorch.loggers import WandbLogger

    if mode is None and not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
        mode = "offline"  # nothing leaves the machine unless the user asks for it
    kwargs = {"mode": mode} if mode is not None else {}  # None: wandb follows WANDB_MODE / the key
    return WandbLogger(project=project, entity=entity, save_dir=str(run_dir), name=f"{group}/{run_dir.name}",
                       group=group, config=run_config, **kwargs)


def close(logger) -> None:
    """End the logger's run: each job of a multirun is its own wandb run."""
    if logger and type(logger).__name__ == "WandbLogger" and "wandb" in sys.modules:
        sys.modules["wandb"].finish()
