"""Run dirs as the figures see them: reading, merging the dirs of one checkpoint, selecting.

A run is a directory holding any of metrics.json (src.run), bounds.json (src.bound) and
robustness.json (src.robustness); nothing else is read, except the dataset's shape from the
run's saved Hydra config when the dataset is `synthetic` (1 channel: an MNIST stand-in,
3 channels: a CIFAR-10 stand-in).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..files import read_json


RUN_FILES = ("metrics.json", "bounds.json", "robustness.json")


MNIST_LIKE = {"mnist", "mnist5k", "fashion_mnist"}


CIFAR_LIKE = {"cifar10"}


PROFILE_RANK = {"paper": 0, "smoke": 1, "tiny": 2}


# How a title names a dataset: a stand-in never by the name of the paper's dataset alone.
DATASET_TITLES = {"mnist": "MNIST", "mnist5k": "MNIST 5k subset", "fashion_mnist": "Fashion-MNIST",
                  "cifar10": "CIFAR-10"}


def _in_channels(path: Path) -> int | None:
    """The dataset's channel count from the run's saved Hydra config (.hydra/<app>/config.yaml)."""
    import yaml

    for cfg in sorted(path.glob(".hydra/*/config.yaml")) + sorted(path.glob(".hydra/config.yaml")):
        try:
            shape = (yaml.safe_load(cfg.read_text()) or {}).get("dataset", {}).get("in_shape")
        except (OSError, yaml.YAMLError):
            continue
        if shape:
            return int(shape[0])
    return None


@dataclass
class Run:
    path: Path
    metrics: dict | None = None
    bounds: dict | None = None
    robustness: dict | None = None
    family: str | None = None  # the DVC family dir it sits in, if any

    def _first(self, key):
        for record in (self.metrics, self.bounds, self.robustness):
            if record and record.get(key) is not None:
                return record[key]
        return None

    @property
    def model(self) -> dict:
        return self._first("model") or {}

    @property
    def kind(self) -> str | None:
        return self.model.get("name")

    def field(self, key):
        return self.model.get(key)

    @property
    def m(self) -> float | None:
        m = self._first("m")
        return None if m is None else float(m)

    @property
    def dataset(self) -> str:
        return str(self._first("dataset") or "?")

    @property
    def dataset_title(self) -> str:
        """The dataset as a figure's title names it; synthetic data by the shape they mimic."""
        if self.dataset == "synthetic":
            return f"synthetic {'CIFAR-10' if self.data == 'cifar' else 'MNIST'}-shaped data"
        return DATASET_TITLES.get(self.dataset, self.dataset)

    @property
    def profile(self) -> str:
        return str(self._first("profile") or "?")

    @property
    def protocol(self) -> str:
        return (self.metrics or {}).get("protocol") or "standard"

    @property
    def data(self) -> str:
        """mnist or cifar: which of the paper's datasets this run stands for."""
        if self.dataset in MNIST_LIKE:
            return "mnist"
        if self.dataset in CIFAR_LIKE:
            return "cifar"
        return "cifar" if _in_channels(self.path) == 3 else "mnist"

    @property
    def test_error(self) -> float | None:
        if self.metrics and self.metrics.get("test_error") is not None:
            return float(self.metrics["test_error"])
        if self.bounds and self.bounds.get("test_error") is not None:
            return float(self.bounds["test_error"])
        if self.robustness and self.robustness.get("clean_accuracy") is not None:
            return 1.0 - float(self.robustness["clean_accuracy"])
        return None

    def upper(self, key) -> float | None:
        value = ((self.bounds or {}).get("upper") or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    def lower(self, key="grad_norm") -> float | None:
        value = ((self.bounds or {}).get("lower") or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def generalization(self) -> dict:
        return (self.bounds or {}).get("generalization") or {}

    def gen_bound(self) -> float | None:
        """The generalization bound (empirical margin loss + complexity term)."""
        g = self.generalization
        for key in ("pac_bayes", "neyshabur"):
            if isinstance(g.get(key), (int, float)):
                return float(g[key])
        return pow10(g.get("log10_complexity"))

    def gen_complexity(self) -> float | None:
        g = self.generalization
        if isinstance(g.get("complexity_term"), (int, float)):
            return float(g["complexity_term"])
        return pow10(g.get("log10_complexity"))


def pow10(log10) -> float | None:
    if isinstance(log10, (int, float)) and log10 < 300:
        return 10.0 ** log10
    return None


def load_runs(roots: Iterable[Path]) -> list[Run]:
    """Every run dir under `roots` (a dir with any of RUN_FILES), in path order; dirs holding
    results of the same checkpoint (a training run dir and the robustness dir of its model) are
    merged into one run."""
    found: dict[Path, Run] = {}
    for root in roots:
        root = Path(root)
        for name in RUN_FILES:
            for path in root.rglob(name):
                run = found.setdefault(path.parent, Run(path.parent))
                setattr(run, name.split(".")[0], read_json(path))
    return _merge_same_checkpoint([found[p] for p in sorted(found)])


def _checkpoint(run: Run) -> str | None:
    """The checkpoint a run's JSON files describe (resolved path), when it can be told."""
    for record in (run.bounds, run.robustness):
        ckpt = (record or {}).get("ckpt")
        if ckpt:
            path = Path(ckpt)
            return str(path.resolve()) if path.is_absolute() or path.exists() else None
    own = run.path / "model.ckpt"
    return str(own.resolve()) if own.is_file() else None


def _merge_same_checkpoint(runs: list[Run]) -> list[Run]:
    groups: dict[str, list[Run]] = {}
    order: list = []  # runs, and checkpoint keys standing for their group
    for run in runs:
        key = _checkpoint(run)
        if key is None:
            order.append(run)
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(run)
    out = []
    for item in order:
        if isinstance(item, Run):
            out.append(item)
            continue
        # the run dir of the checkpoint itself first (the training run), then path order
        group = sorted(groups[item], key=lambda r: (str(r.path.resolve()) != str(Path(item).parent), str(r.path)))
        primary = group[0]
        for other in group[1:]:
            for name in ("metrics", "bounds", "robustness"):
                if getattr(primary, name) is None:
                    setattr(primary, name, getattr(other, name))
        out.append(primary)
    return out


def _matches(run: Run, grid: dict) -> bool:
    for key, values in (grid or {}).items():
        values = values if isinstance(values, list) else [values]
        have = run.m if key == "m" else (run.kind if key == "model" else run.field(key))
        if have is None:
            return False
        if isinstance(have, (int, float)) and not isinstance(have, bool):
            if not any(isinstance(v, (int, float)) and math.isclose(float(v), float(have), rel_tol=1e-9)
                       for v in values):
                return False
        elif str(have) not in [str(v) for v in values]:
            return False
    return True


def filter_by_params(runs: list[Run], params: dict) -> list[Run]:
    """The runs of the pipeline's current grids: run dirs <family>/<values>/ whose family is in
    params' `grids` (robustness/<family>/<values>/: in `robust`) and whose model fields and m
    are in that family's grid (see the module docstring)."""
    grids, robust = params.get("grids") or {}, params.get("robust") or {}
    kept = []
    for run in runs:
        family = run.path.parent.name
        table = robust if run.path.parent.parent.name == "robustness" else grids
        if family in table and _matches(run, table[family]):
            run.family = family
            kept.append(run)
    return kept


def pick(runs: list[Run], *, kind=None, data=None, protocol=None, where: Callable[[Run], bool] | None = None,
         need: str | None = None) -> list[Run]:
    """Runs of model `kind` (a name or a set of names) on `data` (mnist/cifar) trained by `protocol`,
    with `need` (metrics, bounds or robustness) present."""
    kinds = {kind} if isinstance(kind, str) else kind
    out = []
    for run in runs:
        if kinds is not None and run.kind not in kinds:
            continue
        if data is not None and run.data != data:
            continue
        if protocol is not None and run.protocol != protocol:
            continue
        if need is not None and getattr(run, need) is None:
            continue
        if where is not None and not where(run):
            continue
        out.append(run)
    return out


def group_key(run: Run) -> tuple[str, str]:
    return run.dataset, run.profile


def one_group(runs: list[Run]) -> tuple[list[Run], list[tuple[str, str, int]]]:
    """Runs of a single (dataset, profile): the paper profile first, then the largest group."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    if len(groups) <= 1:
        return runs, []
    best = min(groups, key=lambda g: (PROFILE_RANK.get(g[1], 9), -len(groups[g]), g))
    ignored = [(ds, pr, len(rs)) for (ds, pr), rs in sorted(groups.items()) if (ds, pr) != best]
    return groups[best], ignored


def by_key(runs: list[Run], key: Callable[[Run], object], notes: list[str]) -> dict:
    """{key(run): run}, one run per key (the first by path); duplicates are noted."""
    table: dict = {}
    for run in runs:
        k = key(run)
        if k is None:
            continue
        if k in table:
            notes.append(f"duplicate runs for {k}: using `{table[k].path}`, ignoring `{run.path}`")
            continue
        table[k] = run
    return dict(sorted(table.items(), key=lambda kv: sortable(kv[0])))


def sortable(k):
    if isinstance(k, tuple):
        return tuple(sortable(v) for v in k)
    return (0, float(k), "") if isinstance(k, (int, float)) else (1, 0.0, str(k))


CNN_SIZES = {"sm": 2, "med": 4, "lg": 6}  # Appendix F: 2, 4, 6 convolutions


def cnn_key(run: Run):
    size = run.field("size")
    if size:
        return str(size)
    return {d: s for s, d in CNN_SIZES.items()}.get(run.field("depth"))


def by_size(table: dict) -> dict:
    return dict(sorted(table.items(), key=lambda kv: CNN_SIZES.get(kv[0], 99)))
