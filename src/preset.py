"""`python -m src.preset NAME`: make presets/NAME.yaml the pipeline's params.yaml (the knobs of dvc.yaml).

    python -m src.preset paper     # params.yaml := the header below + presets/paper.yaml, verbatim
    python -m src.preset           # which preset params.yaml holds, and whether it was edited since

params.yaml holds the active values flat: no YAML anchors, aliases or merge keys, because
`dvc exp run -S key=value` rewrites the file and keeps plain values only (an anchored preset
selected by a merge line lost its anchor there, and the next switch failed on an undefined
alias). So a preset is a file of its own, and switching copies it; `dvc exp run -S` edits last
until the next switch. tests/test_experiments.py checks that params.yaml is what this writes
for the preset it names, so a lasting change goes into presets/NAME.yaml and then through here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import files
from .errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PARAMS = "params.yaml"
PRESETS = "presets"

HEADER = """\
# The knobs `dvc repro` and `dvc exp run` track (dvc.yaml): the values of one preset, flat.
# Written by `python -m src.preset <name>` from presets/<name>.yaml (key `preset` names it);
# switch presets with that command, never with YAML anchors or merge keys, which
# `dvc exp run -S key=value` does not keep when it rewrites this file. One experiment:
# `dvc exp run -S 'grids.dnn.depth=[3,4]'` (the change lasts until the next switch); for good:
# edit presets/<name>.yaml, then `python -m src.preset <name>` (a test checks the two agree).
#
#   preset      which presets/ file these values are (smoke: CPU minutes; cpu_full, fashion_full: the
#               paper's length on this CPU's data; paper: the paper's runs), and the tree its results go to,
#               outputs/<preset>/ (figures/, series/, report.md there too)
#   profile     the Hydra profile every app gets (conf/profile/): paper = the paper's epochs on whole
#               datasets; smoke = 10 short epochs, minutes per model on 2 CPU cores
#   logger      training logger (wandb: offline runs grouped by experiment; csv; none)
#   data        the dataset overrides standing for MNIST and for CIFAR-10
#   grids       per family of runs, the values its matrix stages sweep (dvc.yaml: train_<family>@...,
#               bound_<family>@...); run dirs are outputs/<preset>/<family>/<values>/
#   robust      the runs of each family that also get src.robustness (a subset of `grids`);
#               outputs/<preset>/robustness/<family>/<values>/
#   args        overrides per family given to all its apps (train, bound, robustness): its seed,
#               and (smoke) narrower convolutional models.  Never empty: an empty value leaves a
#               double space in the command, which dvc.lock's YAML line folding does not round-trip
#   bound_args  extra src.bound overrides per family (shell words; quote brackets); src.bound adds
#               the generalization bounds of FC monDEQs and DNNs unless generalization.enabled=false:
#               only the margin-protocol families (gen_*) keep them
#   robust_args extra src.robustness overrides per dataset
#
# Changing one value of one grid adds/removes only that family's branches (the values are in the
# stage commands, the grids themselves are params only of the plot stages).  Run dirs of removed
# values stay on disk; `python -m src.plot --params params.yaml` ignores them.

"""


def names(root: Path = ROOT) -> list[str]:
    return sorted(p.stem for p in (root / PRESETS).glob("*.yaml"))


def plain(text: str) -> bool:
    """True when the YAML has no anchors, aliases or merge keys (what `dvc exp run -S` keeps)."""
    for event in yaml.parse(text):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            return False
        if isinstance(event, yaml.ScalarEvent) and event.value == "<<" and event.style is None:
            return False
    return True


def render(name: str, root: Path = ROOT) -> str:
    """The params.yaml of preset `name`: HEADER, then presets/<name>.yaml as written (its comments too)."""
    path = root / PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}: presets/ holds {', '.join(names(root)) or 'none'}")
    text = path.read_text()
    if not plain(text):
        raise ConfigError(f"{path}: YAML anchors, aliases or merge keys; a preset holds plain values only")
    named = (yaml.safe_load(text) or {}).get("preset")
    if named != name:
        raise ConfigError(f"{path}: its key `preset` is {named!r}, not {name!r}")
    return HEADER + text


def switch(name: str, root: Path = ROOT) -> Path:
    return files.write_text(root / PARAMS, render(name, root))


def describe(root: Path = ROOT) -> str:
    """Which preset params.yaml holds, and whether it is still exactly that preset."""
    text = (root / PARAMS).read_text()
    name = (yaml.safe_load(text) or {}).get("preset")
    if name not in names(root):
        return f"{PARAMS}: names no preset of {PRESETS}/ (preset: {name!r}); choose one: {', '.join(names(root))}"
    same = text == render(name, root)
    return f"{PARAMS}: preset {name}" + ("" if same else f", edited since (`python -m src.preset {name}` resets it)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.preset", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help=f"the preset to make params.yaml ({', '.join(names())})")
    args = parser.parse_args(argv)
    try:
        print(describe() if args.name is None else f"wrote {switch(args.name).name} from {PRESETS}/{args.name}.yaml")
    except ConfigError as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
