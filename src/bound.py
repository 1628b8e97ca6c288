"""`python -m src.bound`: every Lipschitz estimate that applies to a checkpoint.

Writes <run dir>/bounds.json (keys in DESIGN.md): `upper` and `lower`
values, `details` per method (solver reports, intermediate norms),
`seconds` per method and `solver` for each SDP.  A method that fails is
reported with its status under `failed`, never as a number.

`provenance` says, per entry, which checkpoint (its sha256) and settings produced
it and how its equilibrium solves converged; entries of earlier runs on the same
checkpoint that this run did not recompute are kept.  The dataset is read only
when something needs it (test error, lower and unrolled bounds, generalization):
the data-free methods run without it.
"""
from __future__ import annotations

import logging
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import files, loggers, provenance, summary
from .bounds import generalization as gen
from .bounds.compute import compute_bounds, jsonable
from .bounds.registry import METHODS, select_methods

log = logging.getLogger(__name__)

ENTRY_KEYS = ("upper", "lower", "details", "seconds", "solver", "failed")


def generalization_bounds(model, cfg: DictConfig, train, initial_state) -> dict:
    """PAC-Bayes bounds on the training subset the run's protocol used."""
    from .data import normalise, training_subset

    start = time.perf_counter()
    train_x, train_y = normalise(train, cfg.dataset.mean, cfg.dataset.std), train.labels
    idx = training_subset(len(train_y), cfg.protocol.n_train, cfg.seed)
    if idx is not None:
        train_x, train_y = train_x[idx], train_y[idx]
    out = gen.generalization(model, train_x, train_y, cfg.generalization,
                             reference=initial_state)
    out["seconds"] = time.perf_counter() - start
    log.info(f"  generalization: {out.get('pac_bayes')}  ({out['seconds']:.1f} s)")
    return out


def merge(previous: dict | None, record: dict, settings_of: Callable[[str], dict]) -> dict:
    """`record`, plus the entries of an earlier bounds.json that it did not recompute and that are of the
    same checkpoint and of the settings `settings_of(entry)` (provenance.bound_settings); the others are
    dropped with a line naming what differs."""
    if not previous:
        return record
    merged = json.loads(json.dumps(record))
    for name, origin in previous.get("provenance", {}).items():
        if name in record["provenance"]:
            continue
        why = provenance.why_not_same({"ckpt_sha256": record["ckpt_sha256"], "settings": settings_of(name)}, origin)
        if why:
            log.info(f"dropped {name} from the earlier bounds.json: {why}")
            continue
        merged["provenance"][name] = origin
        if name in ("test_error", "generalization"):
            merged[name] = previous.get(name)
            continue
        for key in ENTRY_KEYS:
            if name in previous.get(key, {}):
                merged[key][name] = previous[key][name]
    return merged


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    return run_on(cfg, Path(HydraConfig.get().runtime.output_dir))


def run_on(cfg: DictConfig, run_dir: Path) -> dict:
    """The app's job on `run_dir` (its own, or src.run's when it follows training): bounds.json and its logs."""
    from .cli import given_keys

    with provenance.locked(run_dir):
        record = bound(cfg, run_dir, m_given="m" in given_keys())
        flat = summary.bounds(record)
        rows = [key.split("/", 1) + [value] for key, value in flat.items() if "/" in key]
        loggers.report(cfg, run_dir, "bound", {**flat, **summary.seconds(record)},
                       [("bound/table", ["kind", "method", "value"], rows)])
        return record


def bound(cfg: DictConfig, run_dir: Path, m_given: bool = True) -> dict:
    """Compute the bounds of cfg's checkpoint and write <run_dir>/bounds.json; returns its record."""
    from .checkpoints import check_not_poor, load_model
    from .cli import keep_config
    from .data import DatasetMissingError, load_splits, normalise
    from .errors import ConfigError
    from .evaluation import convergence, reset_convergence, test_error, warn_unconverged

    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg, run_dir, m_given)
    path = run_dir / "bounds.json"
    previous = files.read_json(path)  # now: a damaged file refuses the run before its work, not after
    files.check_json(run_dir / loggers.RUN_FILE)
    keep_config(cfg, run_dir, "bound")
    model = loaded.model
    try:
        names = select_methods(cfg.model.name, cfg.bound.methods)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    needs_data = [n for n in names if METHODS[n].needs_data]
    with_generalization = bool(cfg.generalization.enabled and gen.applies(model))
    train = test = None
    skipped = None
    if needs_data or cfg.bound.test_error or with_generalization:
        try:
            train, test = load_splits(cfg.dataset)
        except DatasetMissingError as err:
            if needs_data:
                raise DatasetMissingError(f"bound.methods {needs_data} need the test split. {err}") from None
            skipped = str(err).splitlines()[0]
            log.warning(f"warning: {skipped}: test error and generalization bounds skipped, data-free bounds computed")
    reset_convergence(model)
    test_x = None if test is None else normalise(test, cfg.dataset.mean, cfg.dataset.std)
    found: dict = {}
    if test_x is not None and cfg.bound.test_error:
        found["test_error"] = test_error(model, test_x, test.labels)
        log.info(f"      test_error: {found['test_error']:.4f}")
        check_not_poor(loaded, found["test_error"], bool(cfg.bound.accept_poor_model))
    record = {**compute_bounds(model, cfg, test_x, None if test is None else test.labels), **found}
    if with_generalization and train is not None:
        record["generalization"] = jsonable(generalization_bounds(model, cfg, train, loaded.initial_state))
        if record["generalization"].get("complexity_term") is None:  # jsonable: a non-finite number is None
            record["failed"]["generalization"] = "non-finite value (an overflow of the bound's terms)"
    if skipped:
        record["skipped"] = {"test_error": skipped, "generalization": skipped}
    solves = convergence(model)
    warn_unconverged(solves, "src.bound")
    origin = {"ckpt_sha256": loaded.sha256, "convergence": solves}
    entries = names + [k for k in ("test_error", "generalization") if k in record]
    record.update(model=OmegaConf.to_container(cfg.model), m=cfg.m, dataset=cfg.dataset.name,
                  profile=cfg.get("profile"), ckpt=loaded.path, ckpt_sha256=loaded.sha256, convergence=solves,
                  provenance={name: {**origin, "settings": provenance.bound_settings(cfg, name)} for name in entries})
    record = merge(previous, record, lambda name: provenance.bound_settings(cfg, name))
    files.write_json(path, record)
    summary.write(run_dir, "bound", summary.bounds(record))
    log.info(f"wrote {path}")
    return record


def main() -> None:
    from .cli import hydra_app

    hydra_app("bound")(run)()


if __name__ == "__main__":
    main()
