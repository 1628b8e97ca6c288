"""The figures' data series for `dvc plots`, beside the PNGs: one CSV per curve, of the runs a figure drew.

`python -m src.plot` writes OUT/series/<figure>/<curve>/<quantity>.csv, two columns: the figure's x
(X below; dvc.yaml's top-level `plots:` names the same field) and the quantity. A curve is
- in a robustness figure, one run: its certified and its PGD accuracy vs eps;
- in a sweep, the runs of one family dir whose model differs only in x: each of their upper and
  lower bounds (src.summary's keys) or their test error, vs x.
One file per curve because DVC's templates draw a file's field as one line coloured by revision:
`dvc plots diff` then overlays each curve's experiments. The figures over two axes at once
(generalization, unrolled, multi-tier) have no series: their folder stays empty.
"""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from .. import files, summary
from .runs import Run

ROBUSTNESS = ("fig4", "fig9")
CURVES = ("certified", "pgd")  # the curves of robustness.json the robustness figures draw
BOUNDS = ("upper/", "lower/")
SWEEPS = {  # figure: (x, the quantities it draws, as prefixes of src.summary's keys)
    "fig1a": ("depth", BOUNDS),
    "fig1b": ("m", BOUNDS),
    "fig1c": ("depth", BOUNDS),
    "fig1d": ("m", BOUNDS),
    "fig2": ("m", BOUNDS + ("test_error",)),
    "fig5": ("m", ("test_error",)),
    "fig6": ("width", BOUNDS),
}
X = {**dict.fromkeys(ROBUSTNESS, "eps"), **{name: x for name, (x, _) in SWEEPS.items()}}
BASELINES = ("dnn", "cnn")  # they ignore m (src/baselines.py): no point of a sweep over m


def _word(value) -> str:
    if isinstance(value, list):
        return "-".join(_word(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _write(path: Path, x: str, y: str, points: dict) -> None:
    text = io.StringIO(newline="")
    out = csv.writer(text)
    out.writerow([x, y])
    out.writerows(sorted(points.items()))
    files.write_text(path, text.getvalue())


def _robustness(runs: list[Run], folder: Path) -> None:
    for run in runs:
        for which in CURVES:
            curve = (run.robustness or {}).get(which) or {}
            points = {e: a for e, a in zip(curve.get("eps") or [], curve.get("accuracy") or []) if a is not None}
            if points:  # a run dir is <family>/<values>/, and its name says which run
                _write(folder / f"{run.path.parent.name}_{run.path.name}" / f"{which}.csv", "eps",
                       f"{which}_accuracy", points)


def _sweep(runs: list[Run], x: str, quantities: tuple[str, ...], folder: Path) -> None:
    curves: dict[tuple[str, str], dict] = {}
    for run in runs:
        at = run.m if x == "m" else run.field(x)
        if at is None or (x == "m" and run.kind in BASELINES):
            continue
        fixed = [f"{k}{_word(v)}" for k, v in sorted(run.model.items()) if k not in ("name", x) and v is not None]
        values = summary.bounds(run.bounds or {})
        if run.test_error is not None:
            values["test_error"] = run.test_error
        for key, value in values.items():
            if key.startswith(quantities):  # the first run of a point wins, as in the figures (by_key)
                curves.setdefault(("_".join([run.path.parent.name, *fixed]), key), {}).setdefault(at, value)
    for (curve, key), points in curves.items():
        _write(folder / curve / f"{key.replace('/', '_')}.csv", x, key, points)


def write(name: str, runs: list[Run], out: Path) -> Path:
    """OUT/series/<name>/, afresh: the series of figure `name` from the runs it drew (Result.runs)."""
    folder = out / "series" / name
    shutil.rmtree(folder, ignore_errors=True)  # no curve of a run that has gone since
    folder.mkdir(parents=True)
    if name in ROBUSTNESS:
        _robustness(runs, folder)
    elif name in SWEEPS:
        _sweep(runs, *SWEEPS[name], folder)
    return folder
