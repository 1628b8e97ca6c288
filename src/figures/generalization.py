"""Figures of the margin protocol: generalization bounds (3) and test error with the unrolled-FB bound (8)."""
from __future__ import annotations

from collections.abc import Callable

from . import canvas
from .paper import PAPER, check, fmt, fmt_x, monotone
from .result import Result, Row
from .runs import Run, by_key, one_group, pick, pow10


def _margin_runs(runs: list[Run], res: Result, where: Callable[[Run], bool], need=None):
    """The margin-protocol MNIST runs of Figures 3 and 8: (selected, DNNs by depth, FC monDEQs by m)."""
    sel, res.ignored = one_group(pick(runs, kind="dnn", data="mnist", protocol="margin", need=need, where=where)
                                 + pick(runs, kind="mon_fc", data="mnist", protocol="margin", need=need, where=where))
    res.runs = sel
    if sel:
        res.about("margin protocol")
    dnn = by_key([r for r in sel if r.kind == "dnn"], lambda r: r.field("depth"), res.notes)
    mon = by_key([r for r in sel if r.kind == "mon_fc"], lambda r: r.m, res.notes)
    return sel, dnn, mon


def fig3(runs: list[Run]) -> Result:
    res = Result("fig3", "Figure 3: generalization bounds, (a) DNNs vs depth, (b) monDEQs vs m")
    sel, dnn, mon = _margin_runs(runs, res, lambda r: bool(r.generalization), need="bounds")
    if not sel:
        return res
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    canvas.series(ax, {d: r.gen_bound() for d, r in dnn.items()}, "DNN (Neyshabur et al. 2018)")
    canvas.series(bx, {m: r.gen_bound() for m, r in mon.items()}, "monDEQ (Theorem 3)")
    canvas.depth_axis(ax)
    canvas.m_axis(bx)
    ax.set(ylabel="generalization bound", yscale="log", title="(a) DNN")
    bx.set(ylabel="generalization bound", yscale="log", title="(b) monDEQ")
    canvas.legend(ax)
    canvas.legend(bx)
    res.figure = canvas.finish(fig, sel)
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


def fig8(runs: list[Run]) -> Result:
    res = Result("fig8", "Figure 8: (a) DNN and (b) monDEQ test error, (c) unrolled-FB generalization bound")
    sel, dnn, mon = _margin_runs(runs, res, lambda r: r.test_error is not None)
    if not sel:
        return res
    fig, (ax, bx, cx) = canvas.new_figure(3, res.title)
    canvas.series(ax, {d: 100 * r.test_error for d, r in dnn.items()}, "DNNs", "", "o")
    if 20.0 in mon:
        canvas.hline(ax, 100 * mon[20.0].test_error, "monDEQ, m=20", "--")
    canvas.series(bx, {m: 100 * r.test_error for m, r in mon.items()}, "monDEQ")
    unrolled = {}
    for m, run in mon.items():
        per = ((run.generalization.get("details") or {}).get("unrolled_fb") or {}).get("per_alpha") or []
        pts = {float(p["alpha"]): pow10(p.get("log10_complexity")) for p in per if p.get("log10_complexity") is not None}
        if pts:
            unrolled[m] = pts
            line = canvas.series(cx, pts, f"unrolled FB, m={fmt_x(m)}")
            canvas.hline(cx, run.gen_complexity(), f"Theorem 3, m={fmt_x(m)}", ":", line.get_color() if line else None)
    canvas.depth_axis(ax)
    canvas.m_axis(bx)
    ax.set(ylabel="test error (%)", title="(a) DNN")
    bx.set(ylabel="test error (%)", title="(b) monDEQ")
    cx.set(xlabel="alpha", ylabel="complexity term", xscale="log", yscale="log", title="(c) unrolled FB")
    for a in (ax, bx, cx):
        canvas.legend(a)
    res.figure = canvas.finish(fig, sel)
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
