"""Figure 7: the naive bounds of the unrolled monDEQ iteration vs alpha."""
from __future__ import annotations

from . import canvas
from .paper import PAPER, check, fmt
from .result import Result, Row
from .runs import Run, one_group, pick, pow10


def _unrolled(run: Run, method: str) -> dict:
    d = ((run.bounds or {}).get("details") or {}).get(f"unrolled_{method}") or {}
    return {float(a): pow10(lg) for a, lg in zip(d.get("alphas") or [], d.get("log10") or []) if lg is not None}


def fig7(runs: list[Run]) -> Result:
    res = Result("fig7", "Figure 7: bounds of the unrolled monDEQ (m = 1, h = 40) vs alpha, (a) FB, (b) PR")
    sel, res.ignored = one_group(pick(runs, kind="mon_fc", data="mnist", protocol="standard", need="bounds",
                                      where=lambda r: r.field("width") == 40 and r.m == 1.0
                                      and bool(_unrolled(r, "fb") or _unrolled(r, "pr"))))
    sel = sel[:1]
    res.runs = sel
    if not sel:
        return res
    res.about()
    run = sel[0]
    fig, axes = canvas.new_figure(2, res.title)
    for ax, method, name in zip(axes, ("fb", "pr"), ("forward-backward", "Peaceman-Rachford")):
        canvas.series(ax, _unrolled(run, method), f"unrolled {method.upper()}, naive bound")
        canvas.hline(ax, run.upper("theorem1"), "monDEQ Theorem 1", ":", "black")
        canvas.hline(ax, run.lower(), "monDEQ lower bound", "--", "gray")
        ax.set(xlabel="alpha", ylabel="Lipschitz bound", xscale="log", yscale="log", title=f"({'ab'[method == 'pr']}) {name}")
        canvas.legend(ax)
    res.figure = canvas.finish(fig, sel)
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
