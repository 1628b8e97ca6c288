"""Figures over depth: the Lipschitz bounds of DNNs (1a) and CNNs (1c) on MNIST."""
from __future__ import annotations

from . import canvas
from .paper import PAPER, SRC_FIG4, fmt, fmt_values, monotone
from .result import Result, Row
from .runs import Run, by_key, group_key, one_group, pick


def fig1a(runs: list[Run]) -> Result:
    res = Result("fig1a", "Figure 1a: DNN Lipschitz bounds vs depth")
    sel, res.ignored = one_group(pick(runs, kind="dnn", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") == 40))
    res.runs = sel
    if not sel:
        return res
    res.about(f"width {fmt_values(r.field('width') for r in sel)}")
    table = by_key(sel, lambda r: r.field("depth"), res.notes)
    series = {"LipSDP-Neuron ub": "lipsdp_neuron", "LipSDP-Layer ub": "lipsdp_layer", "naive ub": "naive"}
    fig, (ax,) = canvas.new_figure(1, res.title)
    for label, key in series.items():
        canvas.series(ax, {d: r.upper(key) for d, r in table.items()}, label)
    canvas.series(ax, {d: r.lower() for d, r in table.items()}, "lower bound (grad norm)", "--", "s")
    canvas.depth_axis(ax)
    ax.set(ylabel="Lipschitz constant", yscale="log")
    canvas.legend(ax)
    res.figure = canvas.finish(fig, sel)
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


def fig1c(runs: list[Run]) -> Result:
    res = Result("fig1c", "Figure 1c: CNN Lipschitz bounds vs depth")
    sel, res.ignored = one_group(pick(runs, kind="cnn", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("depth") is not None))
    res.runs = sel
    if not sel:
        return res
    res.about()
    table = by_key(sel, lambda r: r.field("depth"), res.notes)
    series = {"AutoLip ub": "autolip", "greedy SeqLip ub": "seqlip_greedy"}
    fig, (ax,) = canvas.new_figure(1, res.title)
    for label, key in series.items():
        canvas.series(ax, {d: r.upper(key) for d, r in table.items()}, label)
    canvas.series(ax, {d: r.lower() for d, r in table.items()}, "lower bound (grad norm)", "--", "s")
    conv = [r for r in pick(runs, kind="mon_conv", data="mnist", protocol="standard", need="bounds")
            if r.m == 20.0 and group_key(r) == group_key(sel[0])]
    if conv:
        canvas.hline(ax, conv[0].upper("theorem1"), "single-conv monDEQ, m=20 (Theorem 1)", ":", "black")
    canvas.depth_axis(ax)
    ax.set(ylabel="Lipschitz constant", yscale="log")
    canvas.legend(ax)
    res.figure = canvas.finish(fig, sel + conv[:1])
    for d, run in table.items():
        res.rows.append(Row(f"greedy SeqLip bound, d = {d}", "— (transcribed from Virmaux & Scaman)",
                            fmt(run.upper("seqlip_greedy")), run=run))
    for label, key in series.items():
        res.trends.append(monotone(f"{label.replace(' ub', '')} bound grows with depth",
                                   {d: r.upper(key) for d, r in table.items()}, "up", xname="d="))
    return res
