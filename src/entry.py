"""The console commands (pyproject.toml's scripts): `mondeq-train`, `mondeq-bound`, ...

Each runs its app's `main`; a shell-completion query (`-sc`, Hydra's) is answered from conf/ alone,
before the app's module is imported: Hydra completes config groups and keys from the YAML files,
and importing an app (torch, the registries) would make every TAB wait seconds.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # as src.cli's, which imports more than a TAB needs

# the app module of each command, and the config it composes
APPS = {"train": ("run", "config"), "bound": ("bound", "bound"), "robustness": ("robustness", "robustness"),
        "bench": ("bench", "bench")}


def completing(argv: Sequence[str]) -> bool:
    return any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv)


def _command(name: str) -> Callable[[], None]:
    module, config_name = APPS[name]

    def command() -> None:
        if completing(sys.argv[1:]):
            import hydra
            from omegaconf import OmegaConf

            # a completion makes no run dir: its name (src.cli's resolver, which reads the schema) is not needed
            OmegaConf.register_new_resolver("run_name", lambda task: "")
            hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(lambda cfg: None)()
            return
        importlib.import_module(f"src.{module}").main()

    command.__name__ = name
    return command


train, bound, robustness, bench = (_command(name) for name in APPS)
