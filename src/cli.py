"""What every Hydra app of the project shares: entry point, run-dir naming, validation.

Each app is `python -m src.<app>` with a task function wrapped by `hydra_app`:

    @hydra_app("config")
    def main(cfg): ...

The configs live in conf/ (see conf/config.yaml).
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, ProjectError

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _run_name(override_dirname: str) -> str:
    # A run with no overrides would otherwise get the experiment dir itself, and the
    # runs of its sweeps would nest inside it.
    return override_dirname or "defaults"


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


def given_keys() -> set[str]:
    """The keys set on this app's command line (what the user typed, not what a config file holds)."""
    from hydra.core.hydra_config import HydraConfig

    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def validate(cfg: DictConfig) -> None:
    """Reject what would fail later, before any data or training: every key (src/schema.py), and the model.

    Normalises in place (m a float, a bare value of a list key a list of one). Wrong group
    values never get here: Hydra rejects them while composing.
    """
    from . import schema
    from .models import build_model  # the one place that knows the fields of each model

    schema.check(cfg)
    try:
        build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], object]], Callable[[], None]]:
    """Turn a task function into a console entry point over conf/<config_name>.yaml."""

    def wrap(task: Callable[[DictConfig], object]) -> Callable[[], None]:
        @functools.wraps(task)
        def checked(cfg: DictConfig):
            try:
                validate(cfg)
                return task(cfg)
            except ProjectError as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                # A plain message and exit status 1, instead of Hydra's stack trace.
                sys.exit(f"error: {err}")

        hydra_main = hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(checked)

        def entry() -> None:
            sys.argv[1:] = reorder_argv(sys.argv[1:])
            hydra_main()

        return entry

    return wrap
