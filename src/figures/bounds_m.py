"""Figures over m: monDEQ Lipschitz bounds (1b, 1d, CIFAR-10 2) and test error (5)."""
from __future__ import annotations

from . import canvas
from .paper import PAPER, SRC_FIG4, SRC_FIG9, check, fmt, fmt_values, fmt_x, monotone
from .result import Result, Row
from .runs import Run, by_key, by_size, cnn_key, one_group, pick


def fig1b(runs: list[Run]) -> Result:
    res = Result("fig1b", "Figure 1b: FC monDEQ Lipschitz bounds vs m")
    sel, res.ignored = one_group(pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") in (40, 60)))
    res.runs = sel
    if not sel:
        return res
    res.about(f"h = {fmt_values(r.field('width') for r in sel)}")
    fig, (ax,) = canvas.new_figure(1, res.title)
    tables = {}
    for width in sorted({r.field("width") for r in sel}):
        table = by_key([r for r in sel if r.field("width") == width], lambda r: r.m, res.notes)
        tables[width] = table
        canvas.theorem1_series(ax, table, f"h={width}", "sdp_diag", "diagonal SDP ub")
    canvas.m_axis(ax)
    ax.set(ylabel="Lipschitz constant", yscale="log")
    canvas.legend(ax)
    res.figure = canvas.finish(fig, sel)
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


def fig1d(runs: list[Run]) -> Result:
    res = Result("fig1d", "Figure 1d: convolutional monDEQ Lipschitz bounds vs m")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "mon_multiconv"}, data="mnist", protocol="standard",
                                      need="bounds"))
    res.runs = sel
    if not sel:
        return res
    res.about()
    names = {"mon_conv": "single conv", "mon_multiconv": "multi-tier conv"}
    fig, (ax,) = canvas.new_figure(1, res.title)
    tables = {}
    for kind, name in names.items():
        table = by_key([r for r in sel if r.kind == kind], lambda r: r.m, res.notes)
        if not table:
            continue
        tables[kind] = table
        canvas.theorem1_series(ax, table, name, "theorem1_pooled", "pooled ub")
    canvas.m_axis(ax)
    ax.set(ylabel="Lipschitz constant", yscale="log")
    canvas.legend(ax)
    res.figure = canvas.finish(fig, sel)
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


def fig2(runs: list[Run]) -> Result:
    res = Result("fig2", "Figure 2: Lipschitz bounds (a) and test error (b) of conv monDEQs and CNNs")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "cnn"}, data="cifar", protocol="standard",
                                      where=lambda r: r.bounds is not None or r.metrics is not None))
    res.runs = sel
    if not sel:
        return res
    res.about()
    mon = by_key([r for r in sel if r.kind == "mon_conv"], lambda r: r.m, res.notes)
    cnn = by_size(by_key([r for r in sel if r.kind == "cnn"], cnn_key, res.notes))
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    line = canvas.series(ax, {m: r.upper("theorem1") for m, r in mon.items()}, "monDEQ ub (Theorem 1)")
    canvas.series(ax, {m: r.lower() for m, r in mon.items()}, "monDEQ lb", "--", "s", line.get_color() if line else None)
    canvas.series(bx, {m: r.test_error and 100 * r.test_error for m, r in mon.items()}, "monDEQ")
    colors = {"sm": "tab:green", "med": "tab:brown", "lg": "tab:red"}
    for size, run in cnn.items():
        canvas.hline(ax, run.upper("seqlip_greedy"), f"CNN {size} ub (greedy SeqLip)", "-", colors.get(size))
        canvas.hline(ax, run.lower(), f"CNN {size} lb", "--", colors.get(size))
        canvas.hline(bx, run.test_error and 100 * run.test_error, f"CNN {size}", "-", colors.get(size))
    ax.set(ylabel="Lipschitz constant", yscale="log", title="(a) Lipschitz bounds")
    bx.set(ylabel="test error (%)", title="(b) test error")
    for a in (ax, bx):
        canvas.m_axis(a)
        canvas.legend(a)
    res.figure = canvas.finish(fig, sel)
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


def fig5(runs: list[Run]) -> Result:
    res = Result("fig5", "Figure 5: test error vs m, (a) FC monDEQs (h = 40), (b) conv monDEQs")
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
    res.about()
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    canvas.series(ax, {m: 100 * r.test_error for m, r in fc_t.items()}, "FC monDEQ, h=40")
    canvas.series(bx, {m: 100 * r.test_error for m, r in single.items()}, "single conv")
    canvas.series(bx, {m: 100 * r.test_error for m, r in multi.items()}, "multi-tier conv", "-", "s")
    for a, t in ((ax, "(a) width 40 monDEQs (Fig. 1b)"), (bx, "(b) convolutional monDEQs (Fig. 1d)")):
        canvas.m_axis(a)
        a.set(ylabel="test error (%)", title=t)
        canvas.legend(a)
    res.figure = canvas.finish(fig, sel)
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
