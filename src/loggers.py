"""The training loggers of the `logger` config group, each built by `hydra.utils.instantiate`.

Every factory takes the run's place and identity (run_dir, group, run_config) and its group's
settings, so src.run builds any of them the same way; a new logger is one factory here
and one file in conf/logger/ naming it as `_target_`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from . import files
from .errors import ConfigError

log = logging.getLogger(__name__)


def none(run_dir: Path, group: str, run_config: dict):
    return False


def csv(run_dir: Path, group: str, run_config: dict, name: str = "csv"):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(run_dir), name=name)


RUN_FILE = "wandb_run.json"  # the run dir's wandb run: id, project, entity, group, tags


WANDB_TARGET = f"{__name__}.wandb"  # the `_target_` of conf/logger/wandb.yaml
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # wandb's Settings.mode
ONLINE = ("online", "shared", "run")
WANDB_HOST = "https://api.wandb.ai"


def check_wandb(mode: str | None = None) -> None:
    """Refuse, before any work, the wandb settings that would fail (or stop at a login prompt) when the run
    starts: a WANDB_MODE wandb does not know, an online run with no API key to log in with."""
    env = os.environ.get("WANDB_MODE") or None
    if env is not None and env not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={env!r}: allowed: one of {', '.join(WANDB_MODES)} (or unset: offline)")
    if (mode or env) in ONLINE and not _has_api_key():
        raise ConfigError(f"wandb mode {mode or env!r} needs an API key, and none is set: set WANDB_API_KEY or run "
                          f"`wandb login`; or log offline (WANDB_MODE=offline; `wandb sync` uploads later)")


def _has_api_key() -> bool:
    """Whether wandb finds a key without asking: WANDB_API_KEY, an identity token, or ~/.netrc (`wandb login`)."""
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(
            urlsplit(os.environ.get("WANDB_BASE_URL", WANDB_HOST)).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return found is not None


def check_logger(logger_cfg: Mapping) -> None:
    """The environment checks of the `logger` group's choice (wandb: check_wandb)."""
    if logger_cfg.get("_target_") == WANDB_TARGET:
        check_wandb(logger_cfg.get("mode"))


def _mode(mode: str | None) -> dict:
    """wandb's keywords: `mode` offline unless asked otherwise (none when WANDB_MODE or a key decides), and
    no console output of its own (30 lines per run and job; the README says where the runs are and how
    `wandb sync` uploads them)."""
    import wandb as wandb_module

    quiet = {"settings": wandb_module.Settings(silent=True)}
    if mode is None and not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
        return {"mode": "offline", **quiet}  # nothing leaves the machine unless the user asks for it
    return quiet if mode is None else {"mode": mode, **quiet}


def tags(group: str, run_config: dict) -> list[str]:
    model, dataset = run_config.get("model", {}), run_config.get("dataset", {})
    return [group, f"profile={run_config.get('profile')}", f"model={model.get('name')}",
            f"dataset={dataset.get('name')}"]


def identity(id_file: Path, name: str, project: str, entity: str | None, group: str, tags: list[str]) -> dict:
    """The wandb run whose id `id_file` keeps: made once, then continued by every app and every re-run.

    A run dir's file makes src.run, src.bound and src.robustness one run: one row per model on a
    dashboard, its config (m, depth, width) beside its bounds and certified accuracies.
    """
    ident = files.read_json(id_file)
    if ident is not None:
        return ident
    import uuid

    ident = {"id": uuid.uuid4().hex[:12], "project": project, "entity": entity, "group": group, "tags": tags, "name": name}
    files.write_json(id_file, ident)
    return ident


def already_logged(id_file: Path, job: str, content: str) -> bool:
    """Whether the wandb run of `id_file` holds `content` of `job` (a training state, a digest of results):
    a re-run of a finished command then logs nothing, where wandb would add one more segment to the run."""
    ident = files.read_json(id_file) or {}
    return (ident.get("logged") or {}).get(job) == content


def note_logged(id_file: Path, job: str, content: str) -> None:
    """Record in `id_file` that its wandb run now holds `content` of `job` (see already_logged)."""
    ident = files.read_json(id_file)
    if ident is not None:
        files.write_json(id_file, {**ident, "logged": {**(ident.get("logged") or {}), job: content}})


def holds_training(logger_cfg: Mapping, run_dir: Path, step: int | None) -> bool:
    """Whether the run dir's wandb run holds the training that ended at `step` (finished: None otherwise)."""
    return (step is not None and logger_cfg.get("_target_") == WANDB_TARGET
            and already_logged(run_dir / RUN_FILE, "train", f"global_step={step}"))


def note_training(logger_cfg: Mapping, run_dir: Path, step: int) -> None:
    """Record that the run dir's wandb run holds the training up to `step` (see holds_training)."""
    if logger_cfg.get("_target_") == WANDB_TARGET:
        note_logged(run_dir / RUN_FILE, "train", f"global_step={step}")


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def run_dir_identity(run_dir: Path, group: str, run_config: dict, project: str, entity: str | None) -> dict:
    """The wandb run of a run dir, shared by every app on it."""
    return identity(run_dir / RUN_FILE, f"{group}/{run_dir.name}", project, entity, group, tags(group, run_config))


def wandb(run_dir: Path, group: str, run_config: dict, project: str, entity: str | None = None,
          mode: str | None = None):
    from lightning.pytorch.loggers import WandbLogger

    ident = run_dir_identity(run_dir, group, run_config, project, entity)
    logger = WandbLogger(project=ident["project"], entity=ident["entity"], save_dir=str(run_dir), name=ident["name"],
                         group=ident["group"], id=ident["id"], resume="allow", job_type="train", tags=ident["tags"],
                         config=run_config, **_mode(mode))
    # Lightning 2.6 always passes `anonymous`, which wandb 0.31 answers with a warning on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


class Results:
    """What src.bound, src.robustness and src.plot give a wandb run: summary scalars, tables, images."""

    def __init__(self, run):
        self.run = run

    def summary(self, prefix: str, flat: dict[str, float]) -> None:
        self.run.summary.update({f"{prefix}/{k}": v for k, v in flat.items()})

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def images(self, paths: dict[str, Path]) -> None:
        import wandb

        self.run.log({f"figures/{name}": wandb.Image(str(path)) for name, path in paths.items()})

    def close(self) -> None:
        self.run.finish()


def open_run(ident: dict, directory: Path, job: str, config: dict, mode: str | None = None) -> Results:
    """Continue (or start) the wandb run `ident` for `job`, its files under `directory`."""
    import wandb as wandb_module

    run = wandb_module.init(project=ident["project"], entity=ident["entity"], dir=str(directory), id=ident["id"],
                            name=ident["name"], group=ident["group"], resume="allow", job_type=job,
                            tags=sorted({*ident["tags"], job}), config=config, **_mode(mode))
    return Results(run)


def _wandb_results(run_dir: Path, group: str, run_config: dict, job: str, project: str,
                   entity: str | None = None, mode: str | None = None) -> Results:
    return open_run(run_dir_identity(run_dir, group, run_config, project, entity), run_dir, job, run_config, mode)


# The logger factories that also take the other apps' results (the others: those apps log to files only)
RESULTS = {WANDB_TARGET: _wandb_results}


def results(logger_cfg: dict, run_dir: Path, group: str, run_config: dict, job: str) -> Results | None:
    """The run that `job` (bound, robustness, plot) logs its results into; None for a file-only logger or
    WANDB_MODE=disabled."""
    settings = dict(logger_cfg)
    factory = _results_factory(settings.pop("_target_", None))
    return None if factory is None else factory(run_dir, group, run_config, job, **settings)


def _results_factory(target: str | None):
    return None if os.environ.get("WANDB_MODE") == "disabled" else RESULTS.get(target)


def close(logger) -> None:
    """End the logger's run: each job of a multirun is its own wandb run."""
    if logger and type(logger).__name__ == "WandbLogger" and "wandb" in sys.modules:
        sys.modules["wandb"].finish()


def report(cfg, run_dir: Path, job: str, flat: dict[str, float], tables: list[tuple[str, list[str], list[list]]]) -> None:
    """Log the results of `job` (an app on a run dir, under Hydra) into the run dir's run of cfg.logger:
    `flat` to the summary under `<job>/`, each (key, columns, rows) as a table."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    group = HydraConfig.get().runtime.choices.get("experiment") or "default"
    plain = OmegaConf.to_container(cfg, resolve=True)
    if _results_factory(plain["logger"].get("_target_")) is None:
        return
    # the same results again (only their seconds differ): the run has them
    content = digest({k: v for k, v in flat.items() if not k.startswith("seconds/")}, tables)
    if already_logged(run_dir / RUN_FILE, job, content):
        log.info(f"wandb: the run already holds these {job} results; not logged again")
        return
    out = results(plain["logger"], run_dir, group, plain, job)
    try:
        out.summary(job, flat)
        for key, columns, rows in tables:
            out.table(key, columns, rows)
    finally:
        out.close()
    note_logged(run_dir / RUN_FILE, job, content)
