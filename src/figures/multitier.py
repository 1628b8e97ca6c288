"""Section 5.1's large multi-tier monDEQ on CIFAR-10: its bound and test error beside the paper's."""
from __future__ import annotations

from . import canvas
from .paper import PAPER, fmt
from .result import Result, Row
from .runs import Run, one_group, pick


def cifar_multitier(runs: list[Run]) -> Result:
    res = Result("cifar_multitier", "Section 5.1: large multi-tier monDEQ")
    sel, res.ignored = one_group(pick(runs, kind="mon_multiconv", data="cifar", protocol="standard",
                                      where=lambda r: r.bounds is not None or r.metrics is not None))
    sel = sel[:1]
    res.runs = sel
    if not sel:
        return res
    run = sel[0]
    ch = run.field("channels")
    res.about(*([f"channels {ch}"] if ch is not None else []))
    L_paper, err_paper = PAPER["cifar_multitier"]
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    for a, label, paper, ours, scale in ((ax, "Lipschitz bound (Theorem 1)", L_paper, run.upper("theorem1"), "log"),
                                         (bx, "test error (%)", 100 * err_paper,
                                          None if run.test_error is None else 100 * run.test_error, "linear")):
        bars = [("paper", paper)] + ([("ours", ours)] if ours is not None else [])
        a.bar([b[0] for b in bars], [b[1] for b in bars], color=["lightgray", "tab:blue"][:len(bars)])
        a.set(ylabel=label, yscale=scale)
    res.figure = canvas.finish(fig, sel)
    res.rows.append(Row("Lipschitz upper bound", fmt(L_paper), fmt(run.upper("theorem1")), run=run, source="section 5.1"))
    res.rows.append(Row("test error", fmt(err_paper, True), fmt(run.test_error, True), run=run, source="section 5.1"))
    if ch is not None and list(ch) != [64, 128, 128]:
        res.notes.append(f"channels {list(ch)}, not the paper's [64, 128, 128]")
    return res
