"""Robustness figures: certified and l2 PGD accuracy curves on MNIST (4) and CIFAR-10 (9)."""
from __future__ import annotations

import math

from . import canvas
from .paper import PAPER, SRC_FIG4, SRC_FIG9, check, fmt, fmt_values, fmt_x
from .result import Result, Row
from .runs import Run, by_key, by_size, cnn_key, one_group, pick


def _curve(run: Run, which: str):
    """(eps, accuracy) of robustness.json's `which` (certified, pgd), or of a certified_curves entry."""
    rob = run.robustness or {}
    rec = rob.get(which) or (rob.get("certified_curves") or {}).get(which) or {}
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


LOCAL = "local/local"  # the certified_curves entry of certify.bound=local: per-input radii
EXACT = "exact/{norm}"  # the entries of certify.bound=exact, l2 or l_inf ball with the pixel box
# certified_curves drawn beside a run's main certified curve when robustness.json has them:
# the local radii, the exact robust accuracy, and the pooled Theorem 1 of conv monDEQs
BESIDE = {LOCAL: ("local radii", "^"), EXACT.format(norm="l2"): ("exact", "*"),
          "theorem1_pooled/paper": ("Theorem 1 pooled", "v")}
# the ladder's certificates, in the order of their strength, as robustness.json names their curves
LADDER = {"theorem1/paper": "Theorem 1, margin > 2 L eps", "theorem1/tight": "Theorem 1, margin > sqrt(2) L eps",
          "sdp_diag/paper": "diagonal SDP, margin > 2 L eps", "sdp_diag/tight": "diagonal SDP, margin > sqrt(2) L eps",
          "sdp_pairwise/pairwise": "class-pair SDP", LOCAL: "local radii"}
NORM_NAMES = {"l2": "l2", "linf": "l_inf"}


def _lipschitz(run: Run):
    L = ((run.robustness or {}).get("certified") or {}).get("lipschitz")
    return float(L) if isinstance(L, (int, float)) else None


def _robust_figure(res: Result, entries, runs: list[Run]):
    """Both panels of a robustness figure; entries: [(label, run, style)]: certified in (a), PGD in (b)."""
    fig, (ax, bx) = canvas.new_figure(2, res.title)
    for label, run, style in entries:
        cert, pgd = _curve(run, "certified"), _curve(run, "pgd")
        if cert:
            ax.plot(*cert, style, label=f"{label}, L={fmt(_lipschitz(run))}", markersize=3)
        main = (run.robustness or {}).get("certified", {})
        for name, (what, marker) in BESIDE.items():
            curve = _curve(run, name)
            if curve and name != f"{main.get('bound')}/{main.get('rule')}":
                ax.plot(*curve, style[:-1] + marker, label=f"{label}, {what}", markersize=3)
        if pgd:
            bx.plot(*pgd, style, label=label, markersize=3)
    ax.set(xlabel="l2 radius eps (pixels in [0, 1])", ylabel="certified accuracy", title="(a) certified")
    bx.set(xlabel="l2 radius eps (pixels in [0, 1])", ylabel="accuracy under PGD", title="(b) PGD")
    canvas.legend(ax)
    canvas.legend(bx)
    return canvas.finish(fig, runs)


def fig4(runs: list[Run]) -> Result:
    res = Result("fig4", "Figure 4: robustness of DNNs and FC monDEQs, (a) certified, (b) l2 PGD")
    cand = pick(runs, kind={"dnn", "mon_fc"}, data="mnist", need="robustness",
                where=lambda r: r.field("width") == 40 and r.protocol == "standard")
    sel, res.ignored = one_group(cand)
    res.runs = sel
    if not sel:
        return res
    res.about(f"width {fmt_values(r.field('width') for r in sel)}")
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
    local_m20 = _acc_at(_curve(m20, LOCAL), 0.2) if m20 else None
    pair_m20 = _acc_at(_curve(m20, "sdp_pairwise/pairwise"), 0.2) if m20 else None
    res.rows.append(Row("certified accuracy at eps = 0.2, monDEQ m = 20, local radii (class-pair SDP: "
                        f"{fmt(pair_m20, True)})", "—", fmt(local_m20, True), run=m20 if local_m20 is not None else None,
                        source="not in the paper (certify.bound=local)"))
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


def fig9(runs: list[Run]) -> Result:
    res = Result("fig9", "Figure 9: robustness of conv monDEQs and CNNs, (a) certified, (b) l2 PGD")
    sel, res.ignored = one_group(pick(runs, kind={"mon_conv", "cnn"}, data="cifar", need="robustness",
                                      where=lambda r: r.protocol == "standard"))
    res.runs = sel
    if not sel:
        return res
    res.about()
    mon = by_key([r for r in sel if r.kind == "mon_conv"], lambda r: r.m, res.notes)
    cnn = by_size(by_key([r for r in sel if r.kind == "cnn"], cnn_key, res.notes))
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


def _exact_curve(run: Run, norm: str) -> dict | None:
    return ((run.robustness or {}).get("certified_curves") or {}).get(EXACT.format(norm=norm))


def _share(part, whole):
    return None if part is None or not whole else part / whole


def ladder(runs: list[Run]) -> Result:
    """Every certificate of an FC monDEQ against its exact robust accuracy (certify.bound=exact), per ball:
    the band between the proved robust accuracy and the accuracy not shown non-robust is what stays
    undecided; PGD (l2) and each certificate must lie on their side of it."""
    res = Result("ladder", "Certificates against the exact robust accuracy of an FC monDEQ")
    cand = pick(runs, kind="mon_fc", need="robustness",
                where=lambda r: any(_exact_curve(r, n) for n in NORM_NAMES))
    sel, res.ignored = one_group(cand)
    if not sel:
        return res
    mon = by_key(sel, lambda r: r.m, res.notes)
    m = max(mon)  # the most robust model, the paper's m = 20 when it was run
    run = mon[m]
    res.runs = [run]
    res.notes += [f"m = {fmt_x(other)} has exact curves too (`{r.path}`); the ladder shows m = {fmt_x(m)}"
                  for other, r in mon.items() if other != m]
    norms = [n for n in NORM_NAMES if _exact_curve(run, n)]
    what = (f"m = {fmt_x(m)}, width {run.field('width')}, {run.dataset_title}, "
            f"{(run.robustness or {}).get('n_test')} test points")
    fig, axes = canvas.new_figure(len(norms), f"{res.title}\n{what}")
    res.title += f" ({what})"
    pgd = _curve(run, "pgd")
    for ax, norm in zip(axes, norms):
        exact = _exact_curve(run, norm)
        eps, lower, upper = exact["eps"], exact["accuracy"], exact["accuracy_upper"]
        ax.fill_between(eps, lower, upper, color="0.85", label="undecided")
        ax.plot(eps, lower, "k-", linewidth=2, label="exact: proved robust")
        ax.plot(eps, upper, "k--", linewidth=1, label="exact: not shown non-robust")
        others = {name: label for name, label in LADDER.items()
                  if _curve(run, name) and ((run.robustness or {}).get("certified_curves") or {})[name].get("norm", "l2") == norm}
        for name, label in others.items():
            ax.plot(*_curve(run, name), "-o", markersize=3, label=label)
        if norm == "l2" and pgd:
            inside = [(e, a) for e, a in zip(*pgd) if e <= max(eps) * (1 + 1e-9)]
            if inside:
                ax.plot(*zip(*inside), "rx", markersize=7, label="l2 PGD (foolbox)")
        box = "pixel box [0, 1]" if exact.get("box") else "no box"
        ax.set(xlabel=f"{NORM_NAMES[norm]} radius eps (pixels in [0, 1]; {box})", ylabel="robust accuracy",
               title=f"({'ab'[norms.index(norm)]}) {NORM_NAMES[norm]}")
        canvas.legend(ax)
        top = eps[-1]
        undecided = exact["status"]["undecided"][-1]
        res.rows.append(Row(f"{NORM_NAMES[norm]}, eps = {fmt(top)}: exact robust accuracy ({undecided} of "
                            f"{exact['status']['robust'][-1] + exact['status']['not_robust'][-1] + undecided} "
                            "points undecided)", "—", fmt(lower[-1], True), run=run,
                            source="not in the paper (certify.bound=exact)"))
        for name, label in others.items():
            res.rows.append(Row(f"{NORM_NAMES[norm]}, eps = {fmt(top)}: {label}, share of the exact robust accuracy",
                                "—", fmt(_share(_acc_at(_curve(run, name), top), lower[-1]), True), run=run,
                                source="not in the paper"))
        res.trends.append(check(
            f"{NORM_NAMES[norm]}: no certificate above the exact robust accuracy (not shown non-robust)", True, "",
            lambda others=others, eps=eps, upper=upper: (
                all(_acc_at(_curve(run, n), e) is None or _acc_at(_curve(run, n), e) <= u + 1e-12
                    for n in others for e, u in zip(eps, upper)),
                f"{len(others)} certificates at {len(eps)} radii")))
        if norm == "l2" and pgd:
            common = [(e, a, _acc_at(pgd, e)) for e, a in zip(eps, lower) if _acc_at(pgd, e) is not None]
            for e, a, p in common:
                res.rows.append(Row(f"l2, eps = {fmt(e)}: PGD accuracy above the exact robust accuracy "
                                    "(PGD's misses, when none is undecided)", "—",
                                    fmt(p - a, True), run=run, source="not in the paper"))
            res.trends.append(check(
                "l2: PGD never below the proved robust accuracy", bool(common), "needs PGD at the exact curve's radii",
                lambda common=common: (all(p >= a - 1e-12 for _, a, p in common),
                                       ", ".join(f"eps {fmt(e)}: PGD {fmt(p, True)} vs {fmt(a, True)}"
                                                 for e, a, p in common))))
    res.figure = canvas.finish(fig, [run])
    return res
