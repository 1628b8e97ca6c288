"""`python -m src.bound`: every Lipschitz estimate that applies to a checkpoint.

Writes <run dir>/bounds.json (keys in DESIGN.md): `upper` and `lower`
values, `details` per method (solver reports, intermediate norms),
`seconds` per method and `solver` for each SDP.  A method that fails is
reported with its status under `failed`, never as a number.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .bounds import generalization as gen
from .bounds.registry import compute_bounds, jsonable


def generalization_bounds(model, cfg: DictConfig, train, ckpt: str) -> dict:
    """PAC-Bayes bounds on the training subset the run's protocol used."""
    from .checkpoints import read_checkpoint
    from .data import normalise, training_subset

    start = time.perf_counter()
    train_x, train_y = normalise(train, cfg.dataset.mean, cfg.dataset.std), train.labels
    idx = training_subset(len(train_y), cfg.protocol.n_train, cfg.seed)
    if idx is not None:
        train_x, train_y = train_x[idx], train_y[idx]
    checkpoint = read_checkpoint(ckpt)
    reference = checkpoint.get("initial_state_dict") if isinstance(checkpoint, dict) else None
    out = gen.generalization(model, train_x, train_y, cfg.generalization, reference=reference)
    out["seconds"] = time.perf_counter() - start
    print(f"  generalization: {out.get('pac_bayes')}  ({out['seconds']:.1f} s)", flush=True)
    return out


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from .checkpoints import load_model
    from .data import load_splits, normalise

    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model, ckpt = load_model(cfg, run_dir)
    train, test = load_splits(cfg.dataset)
    test_x = normalise(test, cfg.dataset.mean, cfg.dataset.std)
    record = compute_bounds(model, cfg, test_x, test.labels)
    if cfg.generalization.enabled and gen.applies(model):
        record["generalization"] = jsonable(generalization_bounds(model, cfg, train, ckpt))
    record.update(model=OmegaConf.to_container(cfg.model), m=cfg.m, dataset=cfg.dataset.name,
                  profile=cfg.get("profile"), ckpt=ckpt)
    (run_dir / "bounds.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {run_dir / 'bounds.json'}", flush=True)
    return record


def main() -> None:
    from .cli import hydra_app

    hydra_app("bound")(run)()


if __name__ == "__main__":
    main()
