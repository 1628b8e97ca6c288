"""What the paper prints, and the checks of the trends it claims."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .runs import sortable


HOLDING, NOT_HOLDING, NOT_RUN = "holding", "not holding", "not run"


# What the paper prints (or, where marked, the authors' lipschitz_mondeq notebooks print for the
# models behind a figure).  Never our numbers: those come from the JSON files.
SRC_FIG4 = "Fig. 4 legend"


SRC_FIG9 = "Fig. 9 legend"


PAPER = {
    # Figure 1a's networks are Figure 4's DNNs ("just as in Figure 1a ... LipSDP").
    "dnn_lipsdp": {3: 14.15, 4: 23.46, 5: 51.59, 6: 82.41, 7: 199.19, 8: 557.46},
    "dnn_test_error_range": (0.028, 0.032),            # App. F: "between 2.8% and 3.2%"
    "fc_theorem1": {0.1: 47.38, 20.0: 3.83},           # Fig. 4 legend (h = 40)
    "fc_test_error": {0.5: 0.024, 20.0: 0.042},        # App. F, Figure 5 text
    "conv_theorem1_m20": {"mon_conv": 48.55, "mon_multiconv": 198.22},  # notebook, m = 20 models
    "conv_test_error_range": (0.0065, 0.0322),         # section 5.1
    "cifar_mon": {0.1: (806.56, 0.2665), 0.5: (250.64, 0.263), 1.0: (159.96, 0.2644),
                  2.0: (109.23, 0.2729), 10.0: (78.90, 0.3046), 20.0: (51.19, 0.3334)},  # Fig. 9 legend
    "cifar_cnn": {"sm": (42.41, 0.3446), "med": (1554.01, 0.306), "lg": (5.79e7, 0.2694)},  # Fig. 9 legend
    "gen_dnn_d3": 1e4, "gen_dnn_max": 1e8,             # section 5.2: "from 1e4 for depth 3 ... to 1e8"
    "gen_mon_range": (1e4, 1e6),                       # section 5.2
    "gen_mon_m20_complexity": 37761.9,                 # generalization notebook, m = 20
    "cert_at_0.2": {"mon_m20": 0.51, "dnn_best": 0.04},  # section 5.3 (best DNN: d = 3)
    "unrolled_range": (1e5, 1e13), "unrolled_true_L": 10.0,  # section 5.1 "Unrolling monDEQs"
    "gen_unrolled": 1e6, "gen_theorem3": 1e5,          # App. G: "on the order of 1e6 ... 1e5"
    "cifar_multitier": (1996.86, 0.1025),              # section 5.1
}


def fmt(v, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if pct:
        return f"{100 * v:.2f}%"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.4g}"
    return f"{v:.4g}"


def fmt_x(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def fmt_values(xs) -> str:
    """The distinct values among `xs`, ascending: "40, 60"."""
    return ", ".join(fmt_x(x) for x in sorted(set(xs), key=sortable))


@dataclass
class Trend:
    claim: str
    verdict: str
    evidence: str


def monotone(claim: str, points: dict, direction: str, pct: bool = False, xname: str = "") -> Trend:
    """`points` {x: y} sorted by x; direction 'up' or 'down'."""
    pts = [(x, y) for x, y in sorted(points.items(), key=lambda kv: sortable(kv[0])) if y is not None]
    if len(pts) < 2:
        return Trend(claim, NOT_RUN, f"{len(pts)} point(s)")
    sign = 1 if direction == "up" else -1
    bad = [(a, b) for a, b in zip(pts, pts[1:]) if not sign * (b[1] - a[1]) > 0]
    symbol = " < " if direction == "up" else " > "
    evidence = ", ".join(f"{fmt(y, pct)} ({xname}{fmt_x(x)})" for x, y in pts)
    if bad:
        evidence += f"; {len(bad)} of {len(pts) - 1} steps go the other way or are flat"
    else:
        evidence = symbol.join(f"{fmt(y, pct)} ({xname}{fmt_x(x)})" for x, y in pts)
    return Trend(claim, NOT_HOLDING if bad else HOLDING, evidence)


def compare(claim: str, ok: bool | None, evidence: str) -> Trend:
    if ok is None:
        return Trend(claim, NOT_RUN, evidence)
    return Trend(claim, HOLDING if ok else NOT_HOLDING, evidence)


def check(claim: str, ready: bool, needs: str, judge: Callable[[], tuple[bool | None, str]]) -> Trend:
    """`claim` judged by judge() -> (holds, evidence) once its runs are there; else not run, `needs` saying why."""
    return compare(claim, *judge()) if ready else Trend(claim, NOT_RUN, needs)
