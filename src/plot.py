"""`python -m src.plot`: the paper's figures, and outputs/report.md, from finished runs' JSON files.

    python -m src.plot                         # every figure from the runs under outputs/, and the report
    python -m src.plot --figure fig1b          # one figure: outputs/figures/fig1b.png and its report
                                               # section outputs/figures/fig1b.md
    python -m src.plot --assemble              # outputs/report.md from the sections already written
    python -m src.plot --runs outputs/smoke --params params.yaml --figure fig4   # as dvc.yaml does

A run is a directory holding any of metrics.json (src.run), bounds.json (src.bound) and
robustness.json (src.robustness); nothing else is read, except the dataset's shape from the
run's saved Hydra config when the dataset is `synthetic` (1 channel: an MNIST stand-in,
3 channels: a CIFAR-10 stand-in).  Each figure picks its runs by what the JSON files say
(model, its fields, m, dataset, training protocol); a figure without runs is drawn as an
empty placeholder that says so and is reported as "not run" -- never from made-up numbers.

Every figure and every report row is stamped with the dataset and profile of the runs it
comes from; runs of profiles other than `paper` are pipeline checks, not reproductions.
When one figure's runs span several (dataset, profile) groups, the `paper` profile wins,
then the group with most runs; the others are listed as ignored.

The report puts our numbers beside the values the paper prints (PAPER below; the source of
each is given), and checks the trends the paper claims ("monDEQ bound falls with m", ...):
holding, not holding, or not run (fewer than two points).  A trend "falls/grows with x"
holds when every step between neighbouring x values goes that way (ties count as neither);
the evidence column shows the values.

`--params params.yaml` (the DVC pipeline) keeps only the runs of the pipeline's current grids:
a run dir <family>/<values>/ (or robustness/<family>/<values>/) counts when its model fields
and m are in params' `grids.<family>` (`robust.<family>`); run dirs left behind by a grid
value since removed are ignored, and so are run dirs outside the pipeline's families.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

RUN_FILES = ("metrics.json", "bounds.json", "robustness.json")
MNIST_LIKE = {"mnist", "mnist5k", "fashion_mnist"}
CIFAR_LIKE = {"cifar10"}
PROFILE_RANK = {"paper": 0, "smoke": 1, "tiny": 2}
HOLDING, NOT_HOLDING, NOT_RUN = "holding", "not holding", "not run"


# --------------------------------------------------------------------------- the paper's numbers
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


# --------------------------------------------------------------------------- runs

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"warning: cannot read {path}: {err}", file=sys.stderr)
        return None


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
        return _pow10(g.get("log10_complexity"))

    def gen_complexity(self) -> float | None:
        g = self.generalization
        if isinstance(g.get("complexity_term"), (int, float)):
            return float(g["complexity_term"])
        return _pow10(g.get("log10_complexity"))


def _pow10(log10) -> float | None:
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
        if not root.exists():
            continue
        for name in RUN_FILES:
            for path in root.rglob(name):
                run = found.setdefault(path.parent, Run(path.parent))
                setattr(run, name.split(".")[0], _read_json(path))
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


# --------------------------------------------------------------------------- the pipeline's grids

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


# --------------------------------------------------------------------------- selection helpers

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


def _group_key(run: Run) -> tuple[str, str]:
    return run.dataset, run.profile


def one_group(runs: list[Run]) -> tuple[list[Run], list[tuple[str, str, int]]]:
    """Runs of a single (dataset, profile): the paper profile first, then the largest group."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
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
    return dict(sorted(table.items(), key=lambda kv: _sortable(kv[0])))


def _sortable(k):
    if isinstance(k, tuple):
        return tuple(_sortable(v) for v in k)
    return (0, float(k), "") if isinstance(k, (int, float)) else (1, 0.0, str(k))


# --------------------------------------------------------------------------- trends

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


@dataclass
class Trend:
    claim: str
    verdict: str
    evidence: str


def monotone(claim: str, points: dict, direction: str, pct: bool = False, xname: str = "") -> Trend:
    """`points` {x: y} sorted by x; direction 'up' or 'down'."""
    pts = [(x, y) for x, y in sorted(points.items(), key=lambda kv: _sortable(kv[0])) if y is not None]
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


# --------------------------------------------------------------------------- a figure's result

@dataclass
class Row:
    quantity: str
    paper: str
    ours: str
    run: Run | None = None
    runs: list[Run] | None = None
    source: str = ""

    def stamp(self) -> tuple[str, str]:
        runs = [self.run] if self.run is not None else (self.runs or [])
        if not runs:
            return "—", "—"
        return (", ".join(sorted({r.dataset for r in runs})), ", ".join(sorted({r.profile for r in runs})))


@dataclass
class Result:
    name: str
    title: str
    runs: list[Run] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str, int]] = field(default_factory=list)
    figure: object = None  # matplotlib Figure, None when not run

    @property
    def ran(self) -> bool:
        return bool(self.runs)


def _stamp_text(runs: list[Run]) -> str:
    datasets = ", ".join(sorted({r.dataset for r in runs})) or "—"
    profiles = sorted({r.profile for r in runs})
    text = f"dataset: {datasets}   profile: {', '.join(profiles) or '—'}   runs: {len(runs)}"
    if any(p != "paper" for p in profiles):
        text += "\n(not the paper profile: a pipeline check, not a reproduction)"
    return text


def _new_figure(ncols: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(max(6.4, 4.8 * ncols), 4.2), squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes[0])


def _finish(fig, runs: list[Run]):
    for ax in fig.axes:
        _fit_hlines(ax)
    fig.text(0.5, 0.01, _stamp_text(runs), ha="center", va="bottom", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return fig


def _series(ax, points: dict, label: str, style: str = "-", marker: str = "o", color=None):
    pts = [(x, y) for x, y in points.items() if y is not None]
    if not pts:
        return None
    xs, ys = zip(*pts)
    (line,) = ax.plot(xs, ys, style, marker=marker, label=label, color=color, markersize=4)
    return line


def _theorem1_series(ax, table: dict, name: str, second: str, second_label: str) -> None:
    """One family over m in one colour: Theorem 1, a second upper bound (`second`), the lower bound."""
    first = {m: r.upper("theorem1") for m, r in table.items()}
    other = {m: r.upper(second) for m, r in table.items()}
    line = _series(ax, first, f"{name} Theorem 1 ub")
    color = line.get_color() if line else None
    same = all(v is None or first[m] is not None and abs(v - first[m]) <= 1e-9 * abs(first[m])
               for m, v in other.items())
    _series(ax, other, f"{name} {second_label}" + (" (= Theorem 1)" if same else ""), ":", "^", color)
    _series(ax, {m: r.lower() for m, r in table.items()}, f"{name} lower bound", "--", "s", color)


def _hline(ax, y, label, style="-", color=None):
    if y is not None:
        ax.axhline(y, linestyle=style, label=label, color=color, linewidth=1.2).reference = True


def _fit_hlines(ax):
    """Widen the y range to every reference line (axhline leaves the autoscaled range alone)."""
    ys = [line.get_ydata()[0] for line in ax.get_lines() if getattr(line, "reference", False)]
    if not ys:
        return
    low, high = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(min(low, min(ys) / 1.5), max(high, max(ys) * 1.5))
    else:
        margin = 0.05 * (max(high, *ys) - min(low, *ys))
        ax.set_ylim(min(low, min(ys) - margin), max(high, max(ys) + margin))


def _legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


# --------------------------------------------------------------------------- the figures

def fig1a(runs: list[Run]) -> Result:
    res = Result("fig1a", "Figure 1a: DNN Lipschitz bounds vs depth (MNIST, width 40)")
    sel, res.ignored = one_group(pick(runs, kind="dnn", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") == 40))
    res.runs = sel
    if not sel:
        return res
    table = by_key(sel, lambda r: r.field("depth"), res.notes)
    series = {"LipSDP-Neuron ub": "lipsdp_neuron", "LipSDP-Layer ub": "lipsdp_layer", "naive ub": "naive"}
    fig, (ax,) = _new_figure(1, res.title)
    for label, key in series.items():
        _series(ax, {d: r.upper(key) for d, r in table.items()}, label)
    _series(ax, {d: r.lower() for d, r in table.items()}, "lower bound (grad norm)", "--", "s")
    ax.set(xlabel="depth", ylabel="Lipschitz constant", yscale="log")
    _legend(ax)
    res.figure = _finish(fig, sel)
    for d, value in PAPER["dnn_lipsdp"].items():
        run = table.get(d)
        res.rows.append(Row(f"LipSDP-Neuron bound, d = {d}", fmt(value), fmt(run.upper("lipsdp_neuron") if run else None),
                            run=run, source=SRC_FIG4))
    errors = [r.test_error for r in table.values() if r.test_error is not None]
    lo, hi = PAPER["dnn_test_error_range"]
    res.rows.append(Row("test error, range over depths", f"{fmt(lo, True)} – {fmt(hi, True)}",
                        f"{fmt(min(errors), True)} – {fmt(max(errors), True)}" if errors else "—",
                        runs=list(table.values()), source="App. F"))
    for label, key in series.items():
        res.trends.append(monotone(f"{label.replace(' ub', '')} bound grows with depth",
                                   {d: r.upper(key) for d, r in table.items()}, "up", xname="d="))
    res.trends.append(monotone("empirical lower bound grows with depth",
                               {d: r.lower() for d, r in table.items()}, "up", xname="d="))
    return res


def fig1b(runs: list[Run]) -> Result:
    res = Result("fig1b", "Figure 1b: FC monDEQ Lipschitz bounds vs m (MNIST, h = 40, 60)")
    sel, res.ignored = one_group(pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") in (40, 60)))
    res.runs = sel
    if not sel:
        return res
    fig, (ax,) = _new_figure(1, res.title)
    tables = {}
    for width in sorted({r.field("width") for r in sel}):
        table = by_key([r for r in sel if r.field("width") == width], lambda r: r.m, res.notes)
        tables[width] = table
        _theorem1_series(ax, table, f"h={width}", "sdp_diag", "diagonal SDP ub")
    ax.set(xlabel="strong-monotonicity parameter m", ylabel="Lipschitz constant", yscale="log")
    _legend(ax)
    res.figure = _finish(fig, sel)
    h40 = tables.get(40, {})
    for m, value in PAPER["fc_theorem1"].items():
        run = h40.get(m)
        res.rows.append(Row(f"Theorem 1 bound, h = 40, m = {fmt_x(m)}", fmt(value),
                            fmt(run.upper("theorem1") if run else None), run=run, source=SRC_FIG4))
    for width, table in tables.items():
        res.trends.append(monotone(f"monDEQ bound (Theorem 1) falls with m, h = {width}",
                                   {m: r.upper("theorem1") for m, r in table.items()}, "down", xname="m="))
    # "the Lipschitz constant of the monDEQ is much smaller" than the DNNs' of Figure 1a
    dnns = one_group(pick(runs, kind="dnn", data="mnist", protocol="standard", need="bounds",
                          where=lambda r: r.field("width") == 40))[0]
    dnn_bounds = [r.upper("lipsdp_neuron") for r in dnns if r.upper("lipsdp_neuron") is not None]

    def below_dnns():
        ours = max(h40.items())[1].upper("theorem1")
        return (None if ours is None else ours < min(dnn_bounds)), f"{fmt(ours)} vs smallest DNN {fmt(min(dnn_bounds))}"

    m_max = fmt_x(max(h40)) if h40 else "largest m"
    res.trends.append(check(f"monDEQ bound (h = 40, m = {m_max}) below every DNN's LipSDP bound (Fig. 1a)",
                            bool(h40 and dnn_bounds), "needs the runs of Figures 1a and 1b", below_dnns))
    return res


def fig1c(runs: list[Run]) -> Result:
    res = Result("fig1c", "Figure 1c: CNN Lipschitz bounds vs depth (MNIST)")
    sel, res.ignored = one_group(pick(runs, kind="cnn", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("depth") is not None))
    res.runs = sel
    if not sel:
        return res
    table = by_key(sel, lambda r: r.field("depth"), res.notes)
    series = {"AutoLip ub": "autolip", "greedy SeqLip ub": "seqlip_greedy"}
    fig, (ax,) = _new_figure(1, res.title)
    for label, key in series.items():
        _series(ax, {d: r.upper(key) for d, r in table.items()}, label)
    _series(ax, {d: r.lower() for d, r in table.items()}, "lower bound (grad norm)", "--", "s")
    conv = [r for r in pick(runs, kind="mon_conv", data="mnist", protocol="standard", need="bounds")
            if r.m == 20.0 and _group_key(r) == _group_key(sel[0])]
    if conv:
        _hline(ax, conv[0].upper("theorem1"), "single-conv monDEQ, m=20 (Theorem 1)", ":", "black")
    ax.set(xlabel="depth", ylabel="Lipschitz constant", yscale="log")
    _legend(ax)
    res.figure = _finish(fig, sel + conv[:1])
    for d, run in table.items():
        res.rows.append(Row(f"greedy SeqLip bound, d = {d}", "— (transcribed from Virmaux & Scaman)",
                            fmt(run.upper("seqlip_greedy")), run=run))
    for label, key in series.items():
        res.trends.append(monotone(f"{label.replace(' ub', '')} bound grows with depth",
                                   {d: r.upper(key) for d, r in table.items()}, "up", xname="d="))
    return res


def fig1d(runs: list[Run]) -> Result:
    res = Result("fig1d", "Figure 1d: convolutional monDEQ Lipschitz bounds vs m (MNIST)")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "mon_multiconv"}, data="mnist", protocol="standard",
                                      need="bounds"))
    res.runs = sel
    if not sel:
        return res
    names = {"mon_conv": "single conv", "mon_multiconv": "multi-tier conv"}
    fig, (ax,) = _new_figure(1, res.title)
    tables = {}
    for kind, name in names.items():
        table = by_key([r for r in sel if r.kind == kind], lambda r: r.m, res.notes)
        if not table:
            continue
        tables[kind] = table
        _theorem1_series(ax, table, name, "theorem1_pooled", "pooled ub")
    ax.set(xlabel="strong-monotonicity parameter m", ylabel="Lipschitz constant", yscale="log")
    _legend(ax)
    res.figure = _finish(fig, sel)
    for kind, value in PAPER["conv_theorem1_m20"].items():
        run = tables.get(kind, {}).get(20.0)
        res.rows.append(Row(f"Theorem 1 bound, {names[kind]}, m = 20", fmt(value),
                            fmt(run.upper("theorem1") if run else None), run=run,
                            source="authors' notebook (the m = 20 model)"))
    for kind, name in names.items():
        res.trends.append(monotone(f"{name} monDEQ bound falls with m",
                                   {m: r.upper("theorem1") for m, r in tables.get(kind, {}).items()}, "down",
                                   xname="m="))
    return res


CNN_SIZES = {"sm": 2, "med": 4, "lg": 6}  # Appendix F: 2, 4, 6 convolutions


def _cnn_key(run: Run):
    size = run.field("size")
    if size:
        return str(size)
    return {d: s for s, d in CNN_SIZES.items()}.get(run.field("depth"))


def _by_size(table: dict) -> dict:
    return dict(sorted(table.items(), key=lambda kv: CNN_SIZES.get(kv[0], 99)))


def fig2(runs: list[Run]) -> Result:
    res = Result("fig2", "Figure 2: CIFAR-10 Lipschitz bounds (a) and test error (b)")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "cnn"}, data="cifar", protocol="standard",
                                      where=lambda r: r.bounds is not None or r.metrics is not None))
    res.runs = sel
    if not sel:
        return res
    mon = by_key([r for r in sel if r.kind == "mon_conv"], lambda r: r.m, res.notes)
    cnn = _by_size(by_key([r for r in sel if r.kind == "cnn"], _cnn_key, res.notes))
    fig, (ax, bx) = _new_figure(2, res.title)
    line = _series(ax, {m: r.upper("theorem1") for m, r in mon.items()}, "monDEQ ub (Theorem 1)")
    _series(ax, {m: r.lower() for m, r in mon.items()}, "monDEQ lb", "--", "s", line.get_color() if line else None)
    _series(bx, {m: r.test_error and 100 * r.test_error for m, r in mon.items()}, "monDEQ")
    colors = {"sm": "tab:green", "med": "tab:brown", "lg": "tab:red"}
    for size, run in cnn.items():
        _hline(ax, run.upper("seqlip_greedy"), f"CNN {size} ub (greedy SeqLip)", "-", colors.get(size))
        _hline(ax, run.lower(), f"CNN {size} lb", "--", colors.get(size))
        _hline(bx, run.test_error and 100 * run.test_error, f"CNN {size}", "-", colors.get(size))
    ax.set(xlabel="strong-monotonicity parameter m", ylabel="Lipschitz constant", yscale="log",
           title="(a) Lipschitz bounds")
    bx.set(xlabel="strong-monotonicity parameter m", ylabel="test error (%)", title="(b) test error")
    _legend(ax)
    _legend(bx)
    res.figure = _finish(fig, sel)
    for m, (L, err) in PAPER["cifar_mon"].items():
        run = mon.get(m)
        res.rows.append(Row(f"monDEQ m = {fmt_x(m)}: Lipschitz bound", fmt(L), fmt(run.upper("theorem1") if run else None),
                            run=run, source=SRC_FIG9))
        res.rows.append(Row(f"monDEQ m = {fmt_x(m)}: test error", fmt(err, True),
                            fmt(run.test_error if run else None, True), run=run, source=SRC_FIG9))
    for size, (L, err) in PAPER["cifar_cnn"].items():
        run = cnn.get(size)
        res.rows.append(Row(f"CNN {size}: greedy SeqLip bound", fmt(L), fmt(run.upper("seqlip_greedy") if run else None),
                            run=run, source=SRC_FIG9))
        res.rows.append(Row(f"CNN {size}: test error", fmt(err, True), fmt(run.test_error if run else None, True),
                            run=run, source=SRC_FIG9))
    res.trends.append(monotone("monDEQ bound falls with m", {m: r.upper("theorem1") for m, r in mon.items()},
                               "down", xname="m="))
    res.trends.append(monotone("monDEQ test error rises with m", {m: r.test_error for m, r in mon.items()},
                               "up", pct=True, xname="m="))
    mon_bounds = [r.upper("theorem1") for r in mon.values() if r.upper("theorem1") is not None]
    big = {s: cnn[s].upper("seqlip_greedy") for s in ("med", "lg") if s in cnn}
    res.trends.append(check(
        "CNN med and lg upper bounds above every monDEQ bound",
        bool(mon_bounds and big and all(v is not None for v in big.values())), "needs monDEQ and CNN med/lg bounds",
        lambda: (all(v > max(mon_bounds) for v in big.values()),
                 ", ".join(f"{s}: {fmt(v)}" for s, v in big.items()) + f" vs largest monDEQ {fmt(max(mon_bounds))}")))
    return res


def _margin_runs(runs: list[Run], res: Result, where: Callable[[Run], bool], need=None):
    """The margin-protocol MNIST runs of Figures 3 and 8: (selected, DNNs by depth, FC monDEQs by m)."""
    sel, res.ignored = one_group(pick(runs, kind="dnn", data="mnist", protocol="margin", need=need, where=where)
                                 + pick(runs, kind="mon_fc", data="mnist", protocol="margin", need=need, where=where))
    res.runs = sel
    dnn = by_key([r for r in sel if r.kind == "dnn"], lambda r: r.field("depth"), res.notes)
    mon = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.m, res.notes)
    return sel, dnn, mon


def fig3(runs: list[Run]) -> Result:
    res = Result("fig3", "Figure 3: generalization bounds, (a) DNNs vs depth, (b) monDEQs vs m (margin protocol)")
    sel, dnn, mon = _margin_runs(runs, res, lambda r: bool(r.generalization), need="bounds")
    if not sel:
        return res
    fig, (ax, bx) = _new_figure(2, res.title)
    _series(ax, {d: r.gen_bound() for d, r in dnn.items()}, "DNN (Neyshabur et al. 2018)")
    _series(bx, {m: r.gen_bound() for m, r in mon.items()}, "monDEQ (Theorem 3)")
    ax.set(xlabel="depth", ylabel="generalization bound", yscale="log", title="(a) DNN")
    bx.set(xlabel="strong-monotonicity parameter m", ylabel="generalization bound", yscale="log", title="(b) monDEQ")
    _legend(ax)
    _legend(bx)
    res.figure = _finish(fig, sel)
    run = dnn.get(3)
    res.rows.append(Row("DNN bound, d = 3", f"~{fmt(PAPER['gen_dnn_d3'])}", fmt(run.gen_bound() if run else None),
                        run=run, source="section 5.2"))
    vals = [r.gen_bound() for r in dnn.values() if r.gen_bound() is not None]
    res.rows.append(Row("DNN bound, largest over depths", f"~{fmt(PAPER['gen_dnn_max'])}", fmt(max(vals) if vals else None),
                        runs=list(dnn.values()), source="section 5.2"))
    vals = [r.gen_bound() for r in mon.values() if r.gen_bound() is not None]
    lo, hi = PAPER["gen_mon_range"]
    res.rows.append(Row("monDEQ bound, range over m", f"{fmt(lo)} – {fmt(hi)}",
                        f"{fmt(min(vals))} – {fmt(max(vals))}" if vals else "—", runs=list(mon.values()),
                        source="section 5.2"))
    run = mon.get(20.0)
    res.rows.append(Row("monDEQ m = 20, complexity term", fmt(PAPER["gen_mon_m20_complexity"]),
                        fmt(run.gen_complexity() if run else None), run=run, source="authors' notebook"))
    reached = [r for r in sel if r.metrics and r.metrics.get("reached") is not None]
    if reached:
        res.notes.append(f"margin protocol: {sum(bool(r.metrics['reached']) for r in reached)} of {len(reached)} "
                         f"runs reached the margin-error threshold (metrics.json `reached`)")
    res.trends.append(monotone("DNN generalization bound grows with depth", {d: r.gen_bound() for d, r in dnn.items()},
                               "up", xname="d="))
    res.trends.append(monotone("monDEQ generalization bound falls with m", {m: r.gen_bound() for m, r in mon.items()},
                               "down", xname="m="))
    return res


def _curve(run: Run, which: str):
    rec = (run.robustness or {}).get(which) or {}
    eps, acc = rec.get("eps"), rec.get("accuracy")
    if not eps or not acc:
        return None
    return [float(e) for e in eps], [float(a) for a in acc]


def _acc_at(curve, eps: float):
    if curve is None:
        return None
    for e, a in zip(*curve):
        if math.isclose(e, eps, rel_tol=1e-6, abs_tol=1e-12):
            return a
    return None


def _lipschitz(run: Run):
    L = ((run.robustness or {}).get("certified") or {}).get("lipschitz")
    return float(L) if isinstance(L, (int, float)) else None


def _robust_figure(res: Result, entries, runs: list[Run]):
    """Both panels of a robustness figure; entries: [(label, run, style)]: certified in (a), PGD in (b)."""
    fig, (ax, bx) = _new_figure(2, res.title)
    for label, run, style in entries:
        cert, pgd = _curve(run, "certified"), _curve(run, "pgd")
        if cert:
            ax.plot(*cert, style, label=f"{label}, L={fmt(_lipschitz(run))}", markersize=3)
        if pgd:
            bx.plot(*pgd, style, label=label, markersize=3)
    ax.set(xlabel="l2 radius eps (pixels in [0, 1])", ylabel="certified accuracy", title="(a) certified")
    bx.set(xlabel="l2 radius eps (pixels in [0, 1])", ylabel="accuracy under PGD", title="(b) PGD")
    _legend(ax)
    _legend(bx)
    return _finish(fig, runs)


def fig4(runs: list[Run]) -> Result:
    res = Result("fig4", "Figure 4: MNIST robustness, (a) certified, (b) l2 PGD")
    cand = pick(runs, kind={"dnn", "mon_fc"}, data="mnist", need="robustness",
                where=lambda r: r.field("width") == 40 and r.protocol == "standard")
    sel, res.ignored = one_group(cand)
    res.runs = sel
    if not sel:
        return res
    dnn = by_key([r for r in sel if r.kind == "dnn"], lambda r: r.field("depth"), res.notes)
    mon = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.m, res.notes)
    res.figure = _robust_figure(res, [(f"DNN d={d}", r, "-o") for d, r in dnn.items()]
                                + [(f"monDEQ m={fmt_x(m)}", r, "--s") for m, r in mon.items()], sel)
    m20 = mon.get(20.0)
    cert = {d: _acc_at(_curve(r, "certified"), 0.2) for d, r in dnn.items()}
    best_d = max((d for d in cert if cert[d] is not None), key=lambda d: cert[d], default=None)
    res.rows.append(Row("certified accuracy at eps = 0.2, monDEQ m = 20", fmt(PAPER["cert_at_0.2"]["mon_m20"], True),
                        fmt(_acc_at(_curve(m20, "certified"), 0.2) if m20 else None, True), run=m20,
                        source="section 5.3"))
    res.rows.append(Row(f"certified accuracy at eps = 0.2, best DNN (paper: d = 3; ours: d = {best_d})",
                        fmt(PAPER["cert_at_0.2"]["dnn_best"], True),
                        fmt(cert[best_d] if best_d is not None else None, True),
                        run=dnn.get(best_d), source="section 5.3"))
    for d, value in PAPER["dnn_lipsdp"].items():
        run = dnn.get(d)
        res.rows.append(Row(f"L of DNN d = {d} (LipSDP-Neuron)", fmt(value), fmt(_lipschitz(run) if run else None),
                            run=run, source=SRC_FIG4))
    for m, value in PAPER["fc_theorem1"].items():
        run = mon.get(m)
        res.rows.append(Row(f"L of monDEQ m = {fmt_x(m)} (Theorem 1)", fmt(value), fmt(_lipschitz(run) if run else None),
                            run=run, source=SRC_FIG4))
    mine = _acc_at(_curve(m20, "certified"), 0.2) if m20 else None
    others = {d: a for d, a in cert.items() if a is not None}
    res.trends.append(check(
        "monDEQ m = 20 certifies more at eps = 0.2 than every DNN",
        mine is not None and bool(others), "needs certified curves at eps = 0.2 of the monDEQ m = 20 and of DNNs",
        lambda: (all(mine > a for a in others.values()),
                 f"{fmt(mine, True)} vs " + ", ".join(f"d={d}: {fmt(a, True)}" for d, a in others.items()))))
    pgd = _curve(m20, "pgd") if m20 else None
    dnn_pgd = {d: _curve(r, "pgd") for d, r in dnn.items() if _curve(r, "pgd")}

    def ahead_of_dnns():
        wins = [all(a > (_acc_at(c, e) if _acc_at(c, e) is not None else -1) for c in dnn_pgd.values())
                for e, a in zip(*pgd)]
        return sum(wins) > len(wins) / 2, f"ahead of every DNN at {sum(wins)} of {len(wins)} radii"

    res.trends.append(check("monDEQ m = 20 more accurate under PGD than every DNN at most radii",
                            pgd is not None and bool(dnn_pgd), "needs PGD curves of the monDEQ m = 20 and of DNNs",
                            ahead_of_dnns))
    return res


def fig5(runs: list[Run]) -> Result:
    res = Result("fig5", "Figure 5: MNIST test error vs m, (a) FC monDEQs (h = 40), (b) conv monDEQs")
    has_err = lambda r: r.test_error is not None  # noqa: E731
    fc = pick(runs, kind="mon_fc", data="mnist", protocol="standard", where=lambda r: r.field("width") == 40 and has_err(r))
    conv = pick(runs, kind={"mon_conv", "mon_multiconv"}, data="mnist", protocol="standard", where=has_err)
    sel, res.ignored = one_group(fc + conv)
    res.runs = sel
    if not sel:
        return res
    fc_t = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.m, res.notes)
    single = by_key([r for r in sel if r.kind == "mon_conv"], lambda r: r.m, res.notes)
    multi = by_key([r for r in sel if r.kind == "mon_multiconv"], lambda r: r.m, res.notes)
    fig, (ax, bx) = _new_figure(2, res.title)
    _series(ax, {m: 100 * r.test_error for m, r in fc_t.items()}, "FC monDEQ, h=40")
    _series(bx, {m: 100 * r.test_error for m, r in single.items()}, "single conv")
    _series(bx, {m: 100 * r.test_error for m, r in multi.items()}, "multi-tier conv", "-", "s")
    for a, t in ((ax, "(a) width 40 monDEQs (Fig. 1b)"), (bx, "(b) convolutional monDEQs (Fig. 1d)")):
        a.set(xlabel="strong-monotonicity parameter m", ylabel="test error (%)", title=t)
        _legend(a)
    res.figure = _finish(fig, sel)
    for m, err in PAPER["fc_test_error"].items():
        run = fc_t.get(m)
        res.rows.append(Row(f"FC monDEQ test error, m = {fmt_x(m)}", fmt(err, True),
                            fmt(run.test_error if run else None, True), run=run, source="App. F"))
    errs = [r.test_error for r in list(single.values()) + list(multi.values())]
    lo, hi = PAPER["conv_test_error_range"]
    res.rows.append(Row("conv monDEQ test error, range over m and models", f"{fmt(lo, True)} – {fmt(hi, True)}",
                        f"{fmt(min(errs), True)} – {fmt(max(errs), True)}" if errs else "—",
                        runs=list(single.values()) + list(multi.values()), source="section 5.1"))
    res.trends.append(monotone("FC monDEQ test error rises with m", {m: r.test_error for m, r in fc_t.items()}, "up",
                               pct=True, xname="m="))
    res.trends.append(monotone("single-conv monDEQ test error rises with m",
                               {m: r.test_error for m, r in single.items()}, "up", pct=True, xname="m="))
    res.trends.append(monotone("multi-tier monDEQ test error rises with m",
                               {m: r.test_error for m, r in multi.items()}, "up", pct=True, xname="m="))
    return res


FIG6_M = 1.0  # conf/experiment/fig6.yaml


def fig6(runs: list[Run]) -> Result:
    res = Result("fig6", "Figure 6: Lipschitz bounds vs width (MNIST), (a) DNNs of depth 5, (b) monDEQs (m = 1)")
    dnn_runs = pick(runs, kind="dnn", data="mnist", protocol="standard", need="bounds",
                    where=lambda r: r.field("depth") == 5)
    mon_runs = pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                    where=lambda r: r.m == FIG6_M)
    sel, res.ignored = one_group(dnn_runs + mon_runs)
    res.runs = sel
    if not sel:
        return res
    dnn = by_key([r for r in sel if r.kind == "dnn"], lambda r: r.field("width"), res.notes)
    mon = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.field("width"), res.notes)
    fig, (ax, bx) = _new_figure(2, res.title)
    _series(ax, {w: r.upper("lipsdp_neuron") for w, r in dnn.items()}, "LipSDP-Neuron ub")
    _series(ax, {w: r.upper("naive") for w, r in dnn.items()}, "naive ub", "-", "^")
    _series(ax, {w: r.lower() for w, r in dnn.items()}, "lower bound", "--", "s")
    _series(bx, {w: r.upper("theorem1") for w, r in mon.items()}, "Theorem 1 ub")
    _series(bx, {w: r.lower() for w, r in mon.items()}, "lower bound", "--", "s")
    ax.set(xlabel="width", ylabel="Lipschitz constant", yscale="log", title="(a) DNN, depth 5")
    bx.set(xlabel="width", ylabel="Lipschitz constant", title=f"(b) monDEQ, m = {fmt_x(FIG6_M)}")
    _legend(ax)
    _legend(bx)
    res.figure = _finish(fig, sel)
    for w, run in dnn.items():
        res.rows.append(Row(f"DNN d = 5, width {w}: LipSDP-Neuron bound", "— (transcribed from Fazlyab et al.)",
                            fmt(run.upper("lipsdp_neuron")), run=run))
    for w, run in mon.items():
        res.rows.append(Row(f"monDEQ width {w}: Theorem 1 bound", "— (figure only)", fmt(run.upper("theorem1")), run=run))
    common = sorted(set(dnn) & set(mon))
    pairs = {w: (mon[w].upper("theorem1"), dnn[w].upper("lipsdp_neuron")) for w in common}
    pairs = {w: p for w, p in pairs.items() if None not in p}
    res.trends.append(compare("monDEQ bound below the DNN bound at every width", all(a < b for a, b in pairs.values())
                              if pairs else None,
                              "; ".join(f"h={w}: {fmt(a)} vs {fmt(b)}" for w, (a, b) in pairs.items())
                              or "needs both families at a common width"))
    return res


def _unrolled(run: Run, method: str) -> dict:
    d = ((run.bounds or {}).get("details") or {}).get(f"unrolled_{method}") or {}
    return {float(a): _pow10(lg) for a, lg in zip(d.get("alphas") or [], d.get("log10") or []) if lg is not None}


def fig7(runs: list[Run]) -> Result:
    res = Result("fig7", "Figure 7: bounds of the unrolled monDEQ (m = 1, h = 40) vs alpha, (a) FB, (b) PR")
    sel, res.ignored = one_group(pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") == 40 and r.m == 1.0
                                      and bool(_unrolled(r, "fb") or _unrolled(r, "pr"))))
    sel = sel[:1]
    res.runs = sel
    if not sel:
        return res
    run = sel[0]
    fig, axes = _new_figure(2, res.title)
    for ax, method, name in zip(axes, ("fb", "pr"), ("forward-backward", "Peaceman-Rachford")):
        _series(ax, _unrolled(run, method), f"unrolled {method.upper()}, naive bound")
        _hline(ax, run.upper("theorem1"), "monDEQ Theorem 1", ":", "black")
        _hline(ax, run.lower(), "monDEQ lower bound", "--", "gray")
        ax.set(xlabel="alpha", ylabel="Lipschitz bound", xscale="log", yscale="log", title=f"({'ab'[method == 'pr']}) {name}")
        _legend(ax)
    res.figure = _finish(fig, sel)
    values = [v for m in ("fb", "pr") for v in _unrolled(run, m).values() if v is not None]
    lo, hi = PAPER["unrolled_range"]
    res.rows.append(Row("unrolled bounds, range over alpha (FB and PR)", f"{fmt(lo)} – {fmt(hi)}",
                        f"{fmt(min(values))} – {fmt(max(values))}" if values else "—", run=run, source="section 5.1"))
    res.rows.append(Row("Lipschitz constant of the monDEQ (Theorem 1)", f"~{fmt(PAPER['unrolled_true_L'])}",
                        fmt(run.upper("theorem1")), run=run, source="section 5.1"))
    t1 = run.upper("theorem1")
    for method in ("fb", "pr"):
        vals = {a: v for a, v in _unrolled(run, method).items() if v is not None}
        res.trends.append(check(f"every unrolled {method.upper()} bound above the monDEQ's Theorem 1 bound",
                                bool(vals) and t1 is not None, "no unrolled bounds or no Theorem 1 bound",
                                lambda: (all(v > t1 for v in vals.values()),
                                         f"smallest {fmt(min(vals.values()))} vs {fmt(t1)}")))
    return res


def fig8(runs: list[Run]) -> Result:
    res = Result("fig8", "Figure 8: (a) DNN and (b) monDEQ test error (margin protocol), (c) unrolled-FB generalization bound")
    sel, dnn, mon = _margin_runs(runs, res, lambda r: r.test_error is not None)
    if not sel:
        return res
    fig, (ax, bx, cx) = _new_figure(3, res.title)
    _series(ax, {d: 100 * r.test_error for d, r in dnn.items()}, "DNNs", "", "o")
    if 20.0 in mon:
        _hline(ax, 100 * mon[20.0].test_error, "monDEQ, m=20", "--")
    _series(bx, {m: 100 * r.test_error for m, r in mon.items()}, "monDEQ")
    unrolled = {}
    for m, run in mon.items():
        per = ((run.generalization.get("details") or {}).get("unrolled_fb") or {}).get("per_alpha") or []
        pts = {float(p["alpha"]): _pow10(p.get("log10_complexity")) for p in per if p.get("log10_complexity") is not None}
        if pts:
            unrolled[m] = pts
            line = _series(cx, pts, f"unrolled FB, m={fmt_x(m)}")
            _hline(cx, run.gen_complexity(), f"Theorem 3, m={fmt_x(m)}", ":", line.get_color() if line else None)
    ax.set(xlabel="depth", ylabel="test error (%)", title="(a) DNN")
    bx.set(xlabel="strong-monotonicity parameter m", ylabel="test error (%)", title="(b) monDEQ")
    cx.set(xlabel="alpha", ylabel="complexity term", xscale="log", yscale="log", title="(c) unrolled FB")
    for a in (ax, bx, cx):
        _legend(a)
    res.figure = _finish(fig, sel)
    best = {m: min(v for v in pts.values() if v is not None) for m, pts in unrolled.items()
            if any(v is not None for v in pts.values())}
    m_ref = 20.0 if 20.0 in best else (max(best) if best else None)
    run = mon.get(m_ref) if m_ref is not None else None
    res.rows.append(Row(f"unrolled-FB complexity term, best alpha (m = {fmt_x(m_ref) if m_ref else '—'})",
                        f"~{fmt(PAPER['gen_unrolled'])}", fmt(best.get(m_ref)), run=run, source="App. G"))
    res.rows.append(Row(f"Theorem 3 complexity term (m = {fmt_x(m_ref) if m_ref else '—'})",
                        f"~{fmt(PAPER['gen_theorem3'])}", fmt(run.gen_complexity() if run else None), run=run,
                        source="App. G"))
    for d, r in dnn.items():
        res.rows.append(Row(f"DNN d = {d}: test error", "— (figure only)", fmt(r.test_error, True), run=r))
    for m, r in mon.items():
        res.rows.append(Row(f"monDEQ m = {fmt_x(m)}: test error", "— (figure only)", fmt(r.test_error, True), run=r))
    pairs = {m: (pts, mon[m].gen_complexity()) for m, pts in unrolled.items() if mon[m].gen_complexity() is not None}
    res.trends.append(check(
        "unrolled-FB generalization bound above Theorem 3's at every alpha",
        bool(pairs), "no generalization records with unrolled FB bounds",
        lambda: (all(v > t3 for pts, t3 in pairs.values() for v in pts.values() if v is not None),
                 "; ".join(f"m={fmt_x(m)}: smallest {fmt(min(v for v in pts.values() if v is not None))}"
                           f" vs {fmt(t3)}" for m, (pts, t3) in pairs.items()))))
    return res


def fig9(runs: list[Run]) -> Result:
    res = Result("fig9", "Figure 9: CIFAR-10 robustness, (a) certified, (b) l2 PGD")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "cnn"}, data="cifar", need="robustness",
                                      where=lambda r: r.protocol == "standard"))
    res.runs = sel
    if not sel:
        return res
    mon = by_key([r for r in sel if r.kind == "mon_conv"], lambda r: r.m, res.notes)
    cnn = _by_size(by_key([r for r in sel if r.kind == "cnn"], _cnn_key, res.notes))
    res.figure = _robust_figure(res, [(f"CNN {s}", r, "-o") for s, r in cnn.items()]
                                + [(f"monDEQ m={fmt_x(m)}", r, "--s") for m, r in mon.items()], sel)
    for m, (L, err) in PAPER["cifar_mon"].items():
        run = mon.get(m)
        res.rows.append(Row(f"monDEQ m = {fmt_x(m)}: L", fmt(L), fmt(_lipschitz(run) if run else None), run=run,
                            source=SRC_FIG9))
        res.rows.append(Row(f"monDEQ m = {fmt_x(m)}: clean test error", fmt(err, True),
                            fmt(run.test_error if run else None, True), run=run, source=SRC_FIG9))
    for size, (L, err) in PAPER["cifar_cnn"].items():
        run = cnn.get(size)
        res.rows.append(Row(f"CNN {size}: L", fmt(L), fmt(_lipschitz(run) if run else None), run=run, source=SRC_FIG9))
        res.rows.append(Row(f"CNN {size}: clean test error", fmt(err, True), fmt(run.test_error if run else None, True),
                            run=run, source=SRC_FIG9))
    cnn_pgd = {s: _curve(r, "pgd") for s, r in cnn.items()}

    def beats_every_cnn(run) -> bool:
        pgd = _curve(run, "pgd")
        if pgd is None or run.test_error is None:
            return False
        clean = all(run.test_error < c.test_error for c in cnn.values() if c.test_error is not None)
        return clean and all(a > (_acc_at(c, e) if _acc_at(c, e) is not None else -1)
                             for e, a in zip(*pgd) for c in cnn_pgd.values())

    def winners():
        found = [m for m, run in mon.items() if beats_every_cnn(run)]
        return bool(found), f"m = {', '.join(fmt_x(m) for m in found)}" if found else "no such m"

    res.trends.append(check("some monDEQ beats every CNN in clean accuracy and at every PGD radius (paper: m = 1)",
                            bool(mon and cnn) and all(c is not None for c in cnn_pgd.values()),
                            "needs PGD curves of monDEQs and CNNs", winners))
    return res


def cifar_multitier(runs: list[Run]) -> Result:
    res = Result("cifar_multitier", "Section 5.1: large multi-tier monDEQ on CIFAR-10 (channels 64, 128, 128, augmented)")
    sel, res.ignored = one_group(pick(runs, kind="mon_multiconv", data="cifar", protocol="standard",
                                      where=lambda r: r.bounds is not None or r.metrics is not None))
    sel = sel[:1]
    res.runs = sel
    if not sel:
        return res
    run = sel[0]
    L_paper, err_paper = PAPER["cifar_multitier"]
    fig, (ax, bx) = _new_figure(2, res.title)
    for a, label, paper, ours, scale in ((ax, "Lipschitz bound (Theorem 1)", L_paper, run.upper("theorem1"), "log"),
                                         (bx, "test error (%)", 100 * err_paper,
                                          None if run.test_error is None else 100 * run.test_error, "linear")):
        bars = [("paper", paper)] + ([("ours", ours)] if ours is not None else [])
        a.bar([b[0] for b in bars], [b[1] for b in bars], color=["lightgray", "tab:blue"][:len(bars)])
        a.set(ylabel=label, yscale=scale)
    res.figure = _finish(fig, sel)
    res.rows.append(Row("Lipschitz upper bound", fmt(L_paper), fmt(run.upper("theorem1")), run=run, source="section 5.1"))
    res.rows.append(Row("test error", fmt(err_paper, True), fmt(run.test_error, True), run=run, source="section 5.1"))
    ch = run.field("channels")
    if ch is not None and list(ch) != [64, 128, 128]:
        res.notes.append(f"channels {list(ch)}, not the paper's [64, 128, 128]")
    return res


FIGURES: dict[str, Callable[[list[Run]], Result]] = {
    "fig1a": fig1a, "fig1b": fig1b, "fig1c": fig1c, "fig1d": fig1d, "fig2": fig2, "fig3": fig3, "fig4": fig4,
    "fig5": fig5, "fig6": fig6, "fig7": fig7, "fig8": fig8, "fig9": fig9, "cifar_multitier": cifar_multitier,
}


# --------------------------------------------------------------------------- output

def _placeholder(name: str, title: str):
    fig, (ax,) = _new_figure(1, title)
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name}: not run\n(no runs with the JSON files this figure needs)", ha="center",
            va="center", fontsize=11)
    return fig


def section(res: Result, image: str | None) -> str:
    """The report's markdown for one figure."""
    lines = [f'<a id="{res.name}"></a>', f"## {res.name}: {res.title}", ""]
    if not res.ran:
        lines += ["**not run**: no run dirs with the JSON files this figure needs.", ""]
        for t in res.trends:
            lines.append(f"- {t.claim}: {NOT_RUN}")
        return "\n".join(lines) + "\n"
    profiles = sorted({r.profile for r in res.runs})
    lines.append(f"Runs: {len(res.runs)}; dataset: {', '.join(sorted({r.dataset for r in res.runs}))}; "
                 f"profile: {', '.join(profiles)}"
                 + (" (not the paper profile: a pipeline check, not a reproduction)." if profiles != ["paper"] else "."))
    lines.append("")
    if image:
        lines += [f"![{res.name}]({image})", ""]
    if res.rows:
        lines += ["| quantity | paper | ours | dataset | profile | paper's source |", "|---|---|---|---|---|---|"]
        for row in res.rows:
            ds, pr = row.stamp()
            lines.append(f"| {row.quantity} | {row.paper} | {row.ours} | {ds} | {pr} | {row.source} |")
        lines.append("")
    if res.trends:
        lines += ["| trend the paper claims | ours | evidence |", "|---|---|---|"]
        for t in res.trends:
            lines.append(f"| {t.claim} | **{t.verdict}** | {t.evidence} |")
        lines.append("")
    for ds, pr, n in res.ignored:
        res.notes.append(f"ignored {n} run(s) of dataset {ds}, profile {pr} (another group was drawn)")
    if res.notes:
        lines += [f"- {n}" for n in res.notes] + [""]
    lines += ["<details><summary>run dirs</summary>", ""] + [f"- `{r.path}`" for r in res.runs] + ["", "</details>", ""]
    return "\n".join(lines)


def draw(name: str, runs: list[Run], out: Path) -> Result:
    """Draw figure `name` into out/figures/<name>.png and write its section out/figures/<name>.md."""
    import matplotlib.pyplot as plt

    res = FIGURES[name](runs)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    fig = res.figure if res.figure is not None else _placeholder(name, res.title)
    fig.savefig(figures / f"{name}.png", dpi=120)
    plt.close(fig)
    (figures / f"{name}.md").write_text(section(res, f"figures/{name}.png" if res.ran else None))
    return res


HEADER = """# Reproduction report

Pabbaraju, Winston, Kolter, "Estimating Lipschitz constants of monotone deep equilibrium models"
(ICLR 2021): each figure of the paper drawn from our runs' JSON files (`python -m src.plot`), our
numbers beside the values the paper prints, and the trends it claims checked. Every row names the
dataset and profile of the runs it comes from: the `smoke` profile trains for minutes on small
data (mnist5k, synthetic CIFAR-format images), so its numbers check the pipeline, not the paper.
"""


def assemble(out: Path, names: Iterable[str] = tuple(FIGURES)) -> Path:
    """outputs/report.md from the per-figure sections in out/figures/."""
    parts = [HEADER]
    summary = ["| figure | status | trends holding | not holding | not run |", "|---|---|---|---|---|"]
    bodies = []
    for name in names:
        path = out / "figures" / f"{name}.md"
        if not path.is_file():
            summary.append(f"| {name} | section missing (run `python -m src.plot --figure {name}`) | | | |")
            continue
        body = path.read_text()
        ran = "\n**not run**" not in body
        counts = [body.count(f"| **{v}** |") for v in (HOLDING, NOT_HOLDING, NOT_RUN)]
        summary.append(f"| [{name}](#{name}) | {'drawn' if ran else 'not run'} | {counts[0]} | {counts[1]} | {counts[2]} |")
        bodies.append(body)
    parts += ["## Summary", ""] + summary + [""] + bodies
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("outputs")],
                        help="directories searched for run dirs (default: outputs)")
    parser.add_argument("--out", type=Path, default=Path("outputs"),
                        help="figures go to OUT/figures/, the report to OUT/report.md (default: outputs)")
    parser.add_argument("--figure", nargs="+", choices=list(FIGURES), metavar="FIG",
                        help=f"draw only these ({', '.join(FIGURES)}); writes their sections, not report.md")
    parser.add_argument("--params", type=Path, help="keep only the runs of this params.yaml's grids (DVC)")
    parser.add_argument("--profile", help="keep only runs of this profile")
    parser.add_argument("--assemble", action="store_true", help="only write report.md from existing sections")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.assemble:
        print(f"wrote {assemble(args.out)}")
        return 0
    runs = load_runs(args.runs)
    if args.params is not None:
        import yaml

        runs = filter_by_params(runs, yaml.safe_load(args.params.read_text()) or {})
    if args.profile:
        runs = [r for r in runs if r.profile == args.profile]
    names = args.figure or list(FIGURES)
    for name in names:
        res = draw(name, runs, args.out)
        verdicts = ", ".join(f"{t.verdict}" for t in res.trends)
        print(f"{name}: {'drawn from ' + str(len(res.runs)) + ' runs' if res.ran else 'not run'}"
              + (f" (trends: {verdicts})" if res.ran and verdicts else ""))
    if not args.figure:
        print(f"wrote {assemble(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
