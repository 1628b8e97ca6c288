"""What every Hydra app of the project shares: entry point, run-dir naming, validation.

Each app is `python -m src.<app>` with a task function wrapped by `hydra_app`:

    @hydra_app("config")
    def main(cfg): ...

The configs live in conf/ (see conf/config.yaml).  Before Hydra starts the first job, `Checks`
(a Hydra callback, conf/config.yaml's hydra.callbacks) checks every job of the command: a sweep
with one bad value runs none.  Each app saves Hydra's record of the job (.hydra/<app>/) itself, with
`keep_config`, once the run dir is its own and its files fit the command.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import files
from .errors import ConfigError, ProjectError, one_line_errors

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _run_name(task) -> str:
    """A run dir's name: the job's overrides (hydra.overrides.task) that change src.run's result, sorted,
    as Hydra's override_dirname joins them (schema.names_the_run says which, from each key's declaration)."""
    from .schema import names_the_run

    # A run with no such overrides would otherwise get the experiment dir itself, and the
    # runs of its sweeps would nest inside it.
    return ",".join(sorted(o for o in task if names_the_run(o))) or "defaults"


# Registered at import, so that the compose API (tests, other tools) resolves
# hydra.run.dir exactly as the apps do.
if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", _run_name)


def reorder_argv(argv: Sequence[str]) -> list[str]:
    """Move Hydra's flags (and their values) before the overrides.

    hydra-core 1.3's argparse reads the overrides as one positional list, so
    `+experiment=fig1b -m m=0.5,1` fails with "unrecognized arguments"
    (facebookresearch/hydra issue 3053). Flags first makes it parse as typed.
    """
    from hydra._internal.utils import get_args_parser

    actions = get_args_parser()._option_string_actions
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        action = actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
        i += 1
        if action is None:
            overrides.append(token)
            continue
        flags.append(token)
        if "=" in token or action.nargs == 0:
            continue
        takes_value = action.nargs is None or (
            action.nargs == "?" and i < len(argv) and not argv[i].startswith("-")
            and (action.choices is None or argv[i] in action.choices))
        if takes_value and i < len(argv):
            flags.append(argv[i])
            i += 1
    return flags + overrides


def check_group_choices(overrides: Sequence[str]) -> None:
    """Refuse a choice of a config group that conf/ does not hold (`dataset=nope`) in one line, before Hydra
    composes (its own message lists the options over a dozen lines). Hydra's groups (hydra/...) and what
    Hydra cannot parse are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return
    for override in parsed:
        group = Path(CONF_DIR) / override.key_or_group
        if override.is_delete() or override.key_or_group.startswith("hydra/") or not group.is_dir():
            continue
        if override.value_type in (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP):
            chosen = list(override.sweep_string_iterator())
        elif override.value_type == ValueType.ELEMENT:
            value = override.value()
            chosen = [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]
        else:
            continue  # a range or glob: Hydra expands it
        options = sorted(p.relative_to(group).with_suffix("").as_posix() for p in group.rglob("*.yaml"))
        for name in chosen:
            if "${" not in name and name not in options:
                raise ConfigError(f"{override.input_line}: conf/{override.key_or_group}/ holds no {name!r}; "
                                  f"allowed: {', '.join(options)}")


def given_keys() -> set[str]:
    """The keys set on this app's command line (what the user typed, not what a config file holds)."""
    from hydra.core.hydra_config import HydraConfig

    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


FOLLOWERS = ("bound", "robustness")  # the apps src.run can run after training (key `then`), in this order


def follower_config(app: str, overrides: Sequence[str]) -> DictConfig:
    """The config of `app` (conf/<app>.yaml) under a src.run job's overrides, checked: the app src.run runs
    after training on the same run dir (`then`). Called inside a Hydra job or callback."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        cfg = compose(config_name=app, overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(f"then=[{app}]: src.{app}'s config does not take these overrides "
                          f"({str(err).splitlines()[0]}); give a key of src.{app} as ++KEY=VALUE") from None
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Reject what would fail later, before any data or training: every key (src/schema.py), the model,
    the logger's environment (WANDB_MODE).

    Normalises in place (m a float, a bare value of a list key a list of one). Wrong group
    values never get here: check_group_choices refuses them before Hydra composes.
    """
    from . import loggers, schema
    from .models import build_model  # the one place that knows the fields of each model

    schema.check(cfg)
    try:
        build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    loggers.check_logger(cfg.logger)


def _typed(config: DictConfig) -> list[str]:
    """The overrides as typed: `m=${seed}` read from the config would be resolved (or fail, for a missing key)."""
    return OmegaConf.to_container(config.hydra.overrides.task, resolve=False)


def refuse_deletions(overrides: Sequence[str]) -> None:
    """Every key of an app's config is read (src/schema.py has a rule for each), so `~key` only moves the
    failure to where the app reads it."""
    deleted = [o for o in overrides if o.startswith("~")]
    if deleted:
        key = deleted[0][1:].split("=", 1)[0]
        raise ConfigError(f"{deleted[0]}: a key cannot be deleted (every app reads {key}); set it instead: {key}=VALUE")


def check_job(config: DictConfig) -> None:
    """Everything about one job that can be checked before Hydra starts it: its overrides, every key of its
    config, the run dir it will write. `config` is the job's whole config (its `hydra` section too)."""
    from hydra.types import RunMode

    refuse_deletions(_typed(config))
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    validate(task)  # first: the run dir's name holds the overrides' values, which it checks
    if config.hydra.job.name == "run":  # src.run's followers (the other apps ignore `then`): checked before training
        for app in task.get("then") or ():
            follower_config(app, _typed(config))
    hc = config.hydra
    files.check_run_dir(Path(hc.sweep.dir) / hc.sweep.subdir if hc.mode == RunMode.MULTIRUN else hc.run.dir)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The overrides of each job of a multirun, as Hydra's basic sweeper will launch them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(params + _typed(config)), None)
            for job in batch]


class Checks(Callback):
    """Hydra callback (hydra.callbacks in conf/config.yaml): every job checked before the first one starts,
    and before Hydra makes the run dir and opens the app's log in it.

    Hydra turns what a callback raises into a warning and goes on, so a refusal exits here."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        with one_line_errors():
            check_job(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException

        loader = GlobalHydra.instance().config_loader()
        with one_line_errors():
            for overrides in sweep_jobs(config):
                try:
                    job = loader.load_sweep_config(config, overrides)
                except HydraException:
                    return  # a job Hydra cannot compose: its sweeper refuses the sweep next, with its own message
                check_job(job)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # submitit makes its executor's folder as named, `%j` and all, before the jobs' own folders
        folder = OmegaConf.select(config, "hydra.launcher.submitit_folder")
        if folder and "%j" in folder and Path(folder).is_dir() and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


SAVED_CONFIG = ".hydra"  # <run dir>/.hydra/<app>/: Hydra's record of the app's last run on the dir


def keep_config(cfg: DictConfig, run_dir: Path, app: str) -> None:
    """Save Hydra's record of this job into <run_dir>/.hydra/<app>/ (config.yaml, hydra.yaml, overrides.yaml):
    `app` names the app whose config `cfg` is (src.run's followers are other apps in its job).

    An app calls it once it holds the run dir's lock and has checked the dir's files against the command,
    so a refused run leaves the record of the run that made the files. Outside a Hydra job (tests, other
    tools) and in the other processes of a DDP run, nothing is written.
    """
    from hydra.core.hydra_config import HydraConfig

    from .provenance import rank_zero

    if not (HydraConfig.initialized() and rank_zero()):
        return
    hc = HydraConfig.get()
    where = run_dir / SAVED_CONFIG / app
    for name, node in (("config.yaml", cfg), ("hydra.yaml", HydraConfig.instance().cfg),
                       ("overrides.yaml", hc.overrides.task)):
        files.write_text(where / name, OmegaConf.to_yaml(node))


@contextlib.contextmanager
def removed_when_refused(run_dir: Path, app: str) -> Iterator[None]:
    """Remove `run_dir` when the job that Hydra made it for is refused (a ProjectError) before writing
    anything into it but its bookkeeping (log, lock, saved config): a refused command leaves no run dir."""
    from .provenance import LOCK_FILE, RunDirBusyError

    bookkeeping = {f"{app}.log", LOCK_FILE, SAVED_CONFIG}
    made_for_this_job = run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {f"{app}.log"}
    try:
        yield
    except ProjectError as err:
        # a busy dir is another process's, whatever it holds yet
        if (made_for_this_job and not isinstance(err, RunDirBusyError)
                and {p.name for p in run_dir.iterdir()} <= bookkeeping):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """Turn a task function into a console entry point over conf/<config_name>.yaml."""

    def wrap(task: Callable[[DictConfig], object]) -> Callable[[], None]:
        @functools.wraps(task)
        def checked(cfg: DictConfig):
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            with one_line_errors(), removed_when_refused(Path(hc.runtime.output_dir), hc.job.name):
                validate(cfg)  # again, in the job's own process: it normalises the job's config
                return task(cfg)

        hydra_main = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(checked)

        def entry() -> None:
            sys.argv[1:] = reorder_argv(sys.argv[1:])
            with one_line_errors():
                check_group_choices([a for a in sys.argv[1:] if not a.startswith("-") and "=" in a])
            hydra_main()

        return entry

    return wrap
