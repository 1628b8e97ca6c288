"""Figures over width: DNN and monDEQ Lipschitz bounds (6)."""
from __future__ import annotations

from . import canvas
from .paper import compare, fmt, fmt_x
from .result import Result, Row
from .runs import Run, by_key, one_group, pick


FIG6_M = 1.0  # conf/experiment/fig6.yaml


def fig6(runs: list[Run]) -> Result:
    res = Result("fig6", "Figure 6: Lipschitz bounds vs width, (a) DNNs of depth 5, "
                         f"(b) monDEQs (m = {fmt_x(FIG6_M)})")
    dnn_runs = pick(runs, kind="dnn", data="mnist", protocol="standard", need="bounds",
                    where=lambda r: r.field("depth") == 5)
    mon_runs = pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                    where=lambda r: r.m == FIG6_M)
    sel, res.ignored = one_group(dnn_runs + mon_runs)
    res.runs = sel
    if not sel:
        return res
    res.about()
    dnn = by_key([r for r in sel if r.kind == "dnn"], lambda r: r.field("width"), res.notes)
    mon = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.field("width"), res.notes)
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    canvas.series(ax, {w: r.upper("lipsdp_neuron") for w, r in dnn.items()}, "LipSDP-Neuron ub")
    canvas.series(ax, {w: r.upper("naive") for w, r in dnn.items()}, "naive ub", "-", "^")
    canvas.series(ax, {w: r.lower() for w, r in dnn.items()}, "lower bound", "--", "s")
    canvas.series(bx, {w: r.upper("theorem1") for w, r in mon.items()}, "Theorem 1 ub")
    canvas.series(bx, {w: r.lower() for w, r in mon.items()}, "lower bound", "--", "s")
    ax.set(xlabel="width", ylabel="Lipschitz constant", yscale="log", title="(a) DNN, depth 5")
    bx.set(xlabel="width", ylabel="Lipschitz constant", title=f"(b) monDEQ, m = {fmt_x(FIG6_M)}")
    canvas.legend(ax)
    canvas.legend(bx)
    res.figure = canvas.finish(fig, sel)
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
