"""Train one model: `python -m src.run [overrides]` (Hydra; conf/config.yaml).

Writes into the run dir: last.ckpt (every epoch, for resuming), model.ckpt
(the final Lightning checkpoint) and metrics.json. Rerunning the same command
resumes from last.ckpt; a finished run then only re-evaluates, and keeps its model.ckpt as it is.

`protocol=margin` (paper 5.2) trains on `protocol.n_train` examples until the training
margin error at `margin_gamma` is below `protocol.threshold` (Lightning callbacks of
src/lit.py, checked after every epoch; `trainer.max_epochs` caps it).
"""
from __future__ import annotations

import importlib
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import files, loggers, provenance, schema, summary
from .cli import follower_config, hydra_app, keep_config
from .evaluation import warn_unconverged
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def resumable(path: Path, hparams: Mapping, explicit: bool = False) -> str | None:
    """`path` if it holds a checkpoint of the same settings; None if a run dir's last.ckpt does not exist.

    The settings are the checkpoint's hyperparameters (model, m, splitting, dataset, optim,
    margin, seed, protocol, training length); any difference is refused, naming the keys.
    """
    if not path.is_file() and not explicit:
        return None
    from .checkpoints import read_checkpoint

    saved = read_checkpoint(path).get("hyper_parameters")
    if not saved:
        raise CheckpointError(f"{path} holds no hyperparameters (not written by src.run); "
                              f"delete it to train anew, or give ckpt= a checkpoint of src.run")
    now, before = _settings(hparams), _settings(saved)
    changed = provenance.differing(now, before)
    if changed:
        raise ConfigError(f"{path} was trained with other settings ({provenance.describe(changed, now, before)}); "
                          f"delete its run dir, or choose another with hydra.run.dir=DIR")
    return str(path)


def _holds(path: Path, lit, global_step: int) -> bool:
    """Whether the checkpoint at `path` already holds `lit` after `global_step` steps: a finished run given
    again trains nothing, and a new model.ckpt would differ in its bytes (random and loop states), so in the
    sha256 that src.bound and src.robustness key their results by."""
    import torch

    from .checkpoints import read_checkpoint

    if not path.is_file():
        return False
    try:
        saved = read_checkpoint(path)
    except CheckpointError:
        return False  # damaged (by a writer before this one was atomic): replaced
    weights = saved.get("state_dict") or {}
    now = lit.state_dict()
    return (saved.get("global_step") == global_step and weights.keys() == now.keys()
            and all(torch.equal(weights[k], v.cpu()) for k, v in now.items()))


def finished_step(resume: str | None, trainer: Mapping) -> int | None:
    """The global step of the checkpoint `resume` if its training is over under `trainer` (the loop's
    max_epochs and max_steps, as Lightning's fit loop tests them, or MarginStop reached): fit then trains
    nothing. None when there is none or it would train on (a larger trainer.max_epochs extends a run)."""
    if resume is None:
        return None
    import torch
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    saved = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
    loop = (saved.get("loops") or {}).get("fit_loop") or {}
    epochs = ((loop.get("epoch_progress") or {}).get("current") or {}).get("processed")
    step = saved.get("global_step")
    if epochs is None or step is None:
        return None  # not a checkpoint of Lightning's fit loop: it cannot tell, so the run is logged
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    margin_reached = any(name.startswith("MarginStop") and isinstance(state, Mapping) and state.get("stopping_reason")
                         == EarlyStoppingReason.STOPPING_THRESHOLD.value
                         for name, state in (saved.get("callbacks") or {}).items())
    over = ((max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs)
            or (max_steps is not None and max_steps >= 0 and step >= max_steps) or margin_reached)
    return int(step) if over else None


def _settings(hparams: Mapping) -> dict:
    """What of a run's recorded settings changes its result (src/schema.py's declarations)."""
    return schema.values(dict(hparams), schema.RUN)


def _restrict(loaders, indices):
    """The training loaders on the examples `indices` only (same batch sizes and workers)."""
    from torch.utils.data import DataLoader, Subset

    def subset(loader, shuffle: bool):
        return DataLoader(Subset(loader.dataset, indices.tolist()), batch_size=loader.batch_size,
                          shuffle=shuffle, num_workers=loader.num_workers)

    return loaders._replace(train=subset(loaders.train, True), train_eval=subset(loaders.train_eval, False))


LOCAL_LAUNCHERS = ("basic", "joblib")


def _processes(trainer: Mapping) -> int:
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else (
        devices if isinstance(devices, int) else 1)
    return count * int(trainer.get("num_nodes", 1))


def _unpadded(loader, trainer):
    """`loader` on this rank's share of its examples, each example on exactly one rank.

    Lightning's own sampler for test loaders pads the shards with repeated examples; a
    DistributedSampler of our own is left in place.
    """
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=trainer.world_size,
                                           rank=trainer.global_rank, shuffle=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers)


def train(cfg: DictConfig, run_dir: Path, group: str = "default") -> dict:
    """Train `cfg` in `run_dir` (resuming from its last.ckpt) and return what metrics.json holds.

    Under DDP every rank runs this; rank zero holds the run dir's lock and writes metrics.json.
    """
    if not provenance.rank_zero():
        return _train(cfg, run_dir, group)
    with provenance.locked(run_dir):
        return _train(cfg, run_dir, group)


def _train(cfg: DictConfig, run_dir: Path, group: str) -> dict:
    import lightning as L
    from hydra.utils import instantiate

    from .data import make_loaders, training_subset
    from .lit import AtomicCheckpointIO, EpochLine, LitClassifier, MarginStop, TrainMarginError

    # lightning gives its logger a console handler at import; the app's handlers (Hydra's job_logging:
    # console and <app>.log) already show its lines
    logging.getLogger("lightning").handlers.clear()
    # Lightning's rank-zero notes (tips, "GPU available", batch limits): not this app's results
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # lightning 2.6's own use of a torch 2.14 deprecation, once per fit
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    protocol = dict(cfg.protocol)
    # The run dir also holds Hydra's and the loggers' files; Lightning warns about any such dir.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    plain = OmegaConf.to_container(cfg, resolve=True)
    lit = LitClassifier(model=plain["model"], m=float(cfg.m), splitting=plain["splitting"],
                        dataset=plain["dataset"], optim=plain["optim"], margin_gamma=cfg.margin_gamma,
                        seed=cfg.seed, protocol=plain["protocol"], trainer=schema.values(plain["trainer"], schema.RUN, prefix="trainer."))
    resume = resumable(Path(cfg.ckpt) if cfg.ckpt else run_dir / "last.ckpt", lit.hparams, explicit=bool(cfg.ckpt))
    files.check_json(run_dir / loggers.RUN_FILE)
    keep_config(cfg, run_dir, "run")
    loaders = make_loaders(plain["dataset"])
    subset = training_subset(len(loaders.train.dataset), protocol.get("n_train"), cfg.seed)
    if subset is not None:
        loaders = _restrict(loaders, subset)
    done = finished_step(resume, cfg.trainer)
    if loggers.holds_training(cfg.logger, run_dir, done):
        log.info(f"training finished at step {done}, and its wandb run holds it: re-evaluated, not logged again")
        logger = False
    else:
        logger = instantiate(cfg.logger, run_dir=run_dir, group=group, run_config=plain,
                             _convert_="all", _recursive_=False)  # run_config holds _target_ keys: data here
    try:
        callbacks = [instantiate(spec, **({"dirpath": str(run_dir)} if spec.get("dirpath", 0) is None else {}))
                     for spec in cfg.callbacks.values()]
        if protocol["name"] == "margin":
            margin_check = TrainMarginError(loaders.train_eval, cfg.margin_gamma)
            callbacks += [margin_check, MarginStop(protocol["threshold"])]
        if not cfg.trainer.get("enable_progress_bar", True):
            callbacks.append(EpochLine())
        trainer = L.Trainer(**plain["trainer"], default_root_dir=str(run_dir), logger=logger,
                            callbacks=callbacks, plugins=[AtomicCheckpointIO()])
        # weights_only: our checkpoints hold only tensors and plain values, so torch's safe loader reads them
        trainer.fit(lit, loaders.train, loaders.test, ckpt_path=resume, weights_only=True)
        if done is not None and trainer.global_step != done:
            raise RuntimeError(f"{resume}: finished_step said training was over at step {done}, and Lightning "
                               f"trained on to step {trainer.global_step}")
        final = run_dir / "model.ckpt"
        if not trainer.strategy.broadcast(_holds(final, lit, trainer.global_step)):
            # a full checkpoint (optimizer and loop states too), like last.ckpt
            trainer.save_checkpoint(str(final), weights_only=False)
        evaluated = [loaders.test, loaders.train_eval]
        if trainer.world_size > 1:
            evaluated = [_unpadded(loader, trainer) for loader in evaluated]
        trainer.test(lit, evaluated, verbose=False)
        metrics = {**lit.evaluation(), "epochs": trainer.current_epoch, **lit.training_summary(),
                   "m": float(cfg.m), "model": plain["model"], "dataset": cfg.dataset.name,
                   "profile": cfg.profile, "experiment": group, "seed": cfg.seed,
                   "protocol": protocol["name"], "n_train": len(loaders.train.dataset),
                   "convergence": lit.convergence()}
        for stage, record in (metrics["convergence"] or {}).items():
            if trainer.is_global_zero:
                warn_unconverged(record, f"src.run {stage}")
        if protocol["name"] == "margin":
            # on the whole training set (margin_error follows trainer.limit_test_batches), as the stop rule saw it
            reached = margin_check.margin_error(lit)
            metrics.update(margin_threshold=float(protocol["threshold"]), margin_error_reached=reached,
                           reached=reached < float(protocol["threshold"]))
        if logger:
            logger.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, float)})
            logger.save()  # the trainer has already flushed its own logs
            loggers.note_training(cfg.logger, run_dir, trainer.global_step)
    finally:
        loggers.close(logger)
    if trainer.is_global_zero:
        files.write_json(run_dir / "metrics.json", metrics)
        summary.write(run_dir, "run", summary.training(metrics))
    return metrics


@hydra_app("config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    group = hc.runtime.choices.get("experiment") or "default"
    launcher = hc.runtime.choices.get("hydra/launcher")
    if hc.mode == RunMode.MULTIRUN and launcher in LOCAL_LAUNCHERS and _processes(cfg.trainer) > 1:
        # Lightning starts the other ranks by re-running the command line, which would sweep again
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} with -m and hydra/launcher={launcher}: allowed: "
                          f"one multi-device run at a time (without -m), or hydra/launcher=submitit_slurm")
    run_dir = Path(hc.runtime.output_dir)
    metrics = train(cfg, run_dir, group)
    if not provenance.rank_zero():
        return
    log.info(json.dumps({k: metrics[k] for k in ("m", "test_error", "train_error", "margin_error", "epochs",
                                                 "protocol", "margin_error_reached", "reached") if k in metrics}))
    for app in cfg.then:
        log.info(f"then: python -m src.{app} on {run_dir}")
        follower = importlib.import_module(f"{__package__}.{app}")
        follower.run_on(follower_config(app, hc.overrides.task), run_dir)


if __name__ == "__main__":
    main()
