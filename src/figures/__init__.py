"""The paper's figures, drawn from finished runs' JSON files (`python -m src.plot`).

One module per figure family; each builder takes the runs (src/figures/runs.py) and returns a
Result (its figure, rows beside the paper's numbers, trend checks).  A new figure is a builder
in a module and one line in FIGURES; the report (src/figures/report.py) follows FIGURES' order.
"""
from __future__ import annotations

from collections.abc import Callable

from . import bounds_depth, bounds_m, bounds_width, generalization, multitier, robustness, unrolled
from .result import Result
from .runs import Run

FIGURES: dict[str, Callable[[list[Run]], Result]] = {
    "fig1a": bounds_depth.fig1a,
    "fig1b": bounds_m.fig1b,
    "fig1c": bounds_depth.fig1c,
    "fig1d": bounds_m.fig1d,
    "fig2": bounds_m.fig2,
    "fig3": generalization.fig3,
    "fig4": robustness.fig4,
    "fig5": bounds_m.fig5,
    "fig6": bounds_width.fig6,
    "fig7": unrolled.fig7,
    "fig8": generalization.fig8,
    "fig9": robustness.fig9,
    "ladder": robustness.ladder,
    "cifar_multitier": multitier.cifar_multitier,
}
