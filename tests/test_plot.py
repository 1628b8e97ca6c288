"""src.plot draws every figure and writes the report from hand-made, well-formed run dirs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from src import plot
from src.figures import FIGURES, bounds_m, canvas, paper, report, runs as runs_mod

MNIST = ("mnist5k", "smoke")
CIFAR = ("cifar10", "smoke")


def write_run(root: Path, name: str, model: dict, *, m=None, data=MNIST, protocol="standard", test_error=None,
              upper=None, lower=None, details=None, generalization=None, robustness=None) -> Path:
    """A run dir as src.run / src.bound / src.robustness leave it (only the keys src.plot reads)."""
    path = root / name
    path.mkdir(parents=True)
    common = {"model": model, "m": m, "dataset": data[0], "profile": data[1]}
    if test_error is not None:
        (path / "metrics.json").write_text(json.dumps(
            {**common, "test_error": test_error, "protocol": protocol, "experiment": "test", "reached": True}))
    if upper is not None or lower is not None or generalization is not None:
        bounds = {**common, "upper": upper or {}, "lower": lower or {}, "details": details or {}, "seconds": {}}
        if generalization is not None:
            bounds["generalization"] = generalization
        (path / "bounds.json").write_text(json.dumps(bounds))
    if robustness is not None:
        (path / "robustness.json").write_text(json.dumps({**common, **robustness}))
    return path


def dnn(depth, width=40):
    return {"name": "dnn", "depth": depth, "width": width}


def mon_fc(width=40):
    return {"name": "mon_fc", "width": width}


def robust(L, cert_acc, pgd_acc, clean=0.97, cert_eps=(0.1, 0.2), pgd_eps=(0.5, 1.0)):
    return {"certified": {"eps": list(cert_eps), "accuracy": list(cert_acc), "lipschitz": L, "bound": "theorem1",
                          "rule": "paper"},
            "pgd": {"eps": list(pgd_eps), "accuracy": list(pgd_acc)}, "clean_accuracy": clean}


def exact(norm, eps, lower, upper, n=10):
    return {"eps": list(eps), "accuracy": list(lower), "accuracy_upper": list(upper), "norm": norm, "box": True,
            "status": {"robust": [round(n * a) for a in lower], "not_robust": [round(n * (1 - b)) for b in upper],
                       "undecided": [round(n * (b - a)) for a, b in zip(lower, upper)]}}


def ladder_curves(L, local=(0.8, 0.6), pgd=None):
    """The certified curves of a monDEQ run of the ladder: Theorem 1, local radii, exact l2 and l_inf, and
    PGD ({eps: accuracy}) at the l2 radii and beyond."""
    pgd = pgd or {0.1: 0.8, 0.2: 0.7, 0.5: 0.4}
    eps = (0.1, 0.2)
    curves = {"theorem1/paper": {"eps": list(eps), "accuracy": [0.5, 0.3], "lipschitz": L, "rule": "paper"},
              "local/local": {"eps": list(eps), "accuracy": list(local), "rule": "local", "radii": [0.3]},
              "exact/l2": exact("l2", eps, (0.8, 0.6), (0.8, 0.7)),
              "exact/linf": exact("linf", (0.01, 0.05), (0.9, 0.4), (0.9, 0.6))}
    return {"certified_curves": curves, "n_test": 10,
            "pgd": {"eps": list(pgd), "accuracy": list(pgd.values())}}


@pytest.fixture
def runs_root(tmp_path) -> Path:
    return write_runs(tmp_path / "runs")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict:
    """{figure: its Result}, every figure built once from write_runs' runs (building all takes seconds)."""
    import matplotlib.pyplot as plt

    runs = runs_mod.load_runs([write_runs(tmp_path_factory.mktemp("drawn"))])
    results = {}
    for name, build in FIGURES.items():
        results[name] = build(runs)
        plt.close(results[name].figure)  # out of pyplot's list of open figures; its axes stay readable
    return results


def write_runs(root: Path) -> Path:
    """Runs for every figure; the trends hold except fig1b's h = 60 curve (not falling with m)."""
    for d, L in ((3, 12.5), (5, 40.0), (8, 300.0)):
        write_run(root, f"dnn/d{d}", dnn(d), test_error=0.03 + d / 1000,
                  upper={"lipsdp_neuron": L, "lipsdp_layer": 1.2 * L, "naive": 3 * L}, lower={"grad_norm": L / 4},
                  robustness=robust(L, (0.5 / d, 0.02 / d), (0.5 / d, 0.1 / d)))
    for m, L in ((0.1, 40.0), (1.0, 9.5), (20.0, 3.5)):
        write_run(root, f"mon_fc/h40_m{m}", mon_fc(40), m=m, test_error=0.02 + m / 1000,
                  upper={"theorem1": L, "sdp_diag": 0.8 * L}, lower={"grad_norm": L / 3},
                  details={"unrolled_fb": {"alphas": [0.1, 1.0], "log10": [7.0, 5.5]},
                           "unrolled_pr": {"alphas": [0.1, 1.0], "log10": [9.0, None]}},
                  robustness=robust(L, (0.8, 0.6 if m == 20 else 0.01), (0.9, 0.7 if m == 20 else 0.05))
                  | (ladder_curves(L) if m == 20 else {}))
    for m, L in ((1.0, 5.0), (20.0, 6.0)):  # h = 60: rises with m, against the paper's claim
        write_run(root, f"mon_fc/h60_m{m}", mon_fc(60), m=m, test_error=0.03, upper={"theorem1": L})
    for w, L in ((20, 8.0), (60, 11.0)):
        write_run(root, f"mon_fc_width/h{w}", mon_fc(w), m=1.0, test_error=0.03, upper={"theorem1": L},
                  lower={"grad_norm": 2.0})
        write_run(root, f"dnn_width/h{w}", dnn(5, w), test_error=0.03, upper={"lipsdp_neuron": 10 * L},
                  lower={"grad_norm": 5.0})
    for d, L in ((4, 100.0), (6, 1000.0)):
        write_run(root, f"cnn/d{d}", {"name": "cnn", "depth": d, "size": None}, test_error=0.01,
                  upper={"autolip": 2 * L, "seqlip_greedy": L}, lower={"grad_norm": 3.0})
    for kind in ("mon_conv", "mon_multiconv"):
        for m, L in ((1.0, 200.0), (20.0, 50.0)):
            write_run(root, f"mon_conv/{kind}_m{m}", {"name": kind}, m=m, test_error=0.005 + m / 1000,
                      upper={"theorem1": L, "theorem1_pooled": L / 2}, lower={"grad_norm": 1.0})
    for d, g in ((3, 2e4), (6, 3e6)):
        write_run(root, f"gen_dnn/d{d}", dnn(d), protocol="margin", test_error=0.07,
                  upper={}, generalization={"pac_bayes": g, "complexity_term": g})
    for m, g in ((1.0, 9e5), (20.0, 4e4)):
        write_run(root, f"gen_mon_fc/m{m}", mon_fc(), m=m, protocol="margin", test_error=0.065,
                  upper={"theorem1": 5.0},
                  generalization={"pac_bayes": g, "complexity_term": g, "details": {"unrolled_fb": {
                      "per_alpha": [{"alpha": 0.1, "log10_complexity": 7.0}, {"alpha": 1.0, "log10_complexity": 6.2}]}}})
    for m, L, err in ((0.1, 800.0, 0.27), (1.0, 160.0, 0.26), (20.0, 50.0, 0.33)):
        write_run(root, f"cifar_mon_conv/m{m}", {"name": "mon_conv", "channels": 128}, m=m, data=CIFAR,
                  test_error=err, upper={"theorem1": L}, lower={"grad_norm": 5.0},
                  robustness=robust(L, (0.3, 0.1), (0.5, 0.3) if m == 1.0 else (0.2, 0.1), clean=1 - err))
    for size, L, err in (("sm", 40.0, 0.34), ("med", 1500.0, 0.30), ("lg", 5e7, 0.27)):
        write_run(root, f"cifar_cnn/{size}", {"name": "cnn", "depth": None, "size": size}, data=CIFAR,
                  test_error=err, upper={"seqlip_greedy": L}, lower={"grad_norm": 4.0},
                  robustness=robust(L, (0.1, 0.0), (0.3, 0.2), clean=1 - err))
    write_run(root, "cifar_multitier/m1.0", {"name": "mon_multiconv", "channels": [64, 128, 128]}, m=1.0,
              data=CIFAR, test_error=0.11, upper={"theorem1": 2000.0})
    return root


def table_row(report: str, quantity: str) -> list[str]:
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == quantity:
            return cells
    raise AssertionError(f"no row {quantity!r}")


def section_of(report: str, name: str) -> str:
    return report.split(f'<a id="{name}"></a>', 1)[1].split("<a id=", 1)[0]


def test_every_figure_is_drawn_and_the_report_has_our_numbers_beside_the_papers(runs_root, tmp_path):
    out = tmp_path / "out"
    assert plot.main(["--runs", str(runs_root), "--out", str(out)]) == 0
    for name in FIGURES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"## {name}:" in report
        assert "**not run**: no run dirs" not in section_of(report, name), name
    # our numbers come from the JSON files, the paper's from its text
    assert table_row(report, "Theorem 1 bound, h = 40, m = 20")[1:5] == ["3.83", "3.5", "mnist5k", "smoke"]
    assert table_row(report, "LipSDP-Neuron bound, d = 3")[1:3] == ["14.15", "12.5"]
    assert table_row(report, "LipSDP-Neuron bound, d = 4")[1:3] == ["23.46", "—"]  # not run: no number
    assert table_row(report, "monDEQ m = 0.1: Lipschitz bound")[1:5] == ["806.6", "800", "cifar10", "smoke"]
    assert table_row(report, "CNN lg: greedy SeqLip bound")[1:3] == ["5.79e+07", "5e+07"]
    assert table_row(report, "test error")[1:3] == ["10.25%", "11.00%"]
    assert table_row(report, "certified accuracy at eps = 0.2, monDEQ m = 20")[1:3] == ["51.00%", "60.00%"]
    assert table_row(report, "monDEQ m = 20, complexity term")[1:3] == ["3.776e+04", "4e+04"]


def test_each_figures_headline_is_its_first_row_with_both_numbers_and_its_trend_count(runs_root, tmp_path):
    """outputs/metrics/<figure>.json, the DVC metrics: the same few keys for every figure."""
    out, metrics = tmp_path / "out", tmp_path / "metrics"
    assert plot.main(["--runs", str(runs_root), "--out", str(out), "--metrics", str(metrics),
                      "--figure", "fig1b", "fig4"]) == 0
    fig1b, fig4 = (json.loads((metrics / f"{name}.json").read_text()) for name in ("fig1b", "fig4"))
    assert (fig1b["paper"], fig1b["ours"]) == (47.38, 40.0)  # the first row: Theorem 1 bound, h = 40, m = 0.1
    assert (fig4["paper"], fig4["ours"]) == (51.0, 60.0)  # "certified accuracy at eps = 0.2, monDEQ m = 20", in %
    report = (out / "figures" / "fig1b.md").read_text()
    assert fig1b["trends_holding"] == report.count("| **holding** |") and fig1b["runs"] > 0
    assert fig1b["trends_checked"] == fig1b["trends_holding"] + report.count("| **not holding** |")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot.main(["--runs", str(empty), "--out", str(out), "--metrics", str(metrics), "--figure", "fig1b"]) == 0
    assert json.loads((metrics / "fig1b.json").read_text()) == {
        "paper": None, "ours": None, "trends_holding": 0, "trends_checked": 0, "runs": 0}


def test_the_ladder_sets_each_certificate_against_the_exact_curve_and_judges_both_sides(tmp_path):
    """The ladder's rows are shares of the exact robust accuracy; a certificate above the exact curve's
    upper side, or PGD below its proved side, is a trend that does not hold."""
    from src.figures import robustness

    def rows_and_trends(**ladder):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        write_run(root, "mon_fc/h40_m20", mon_fc(40), m=20.0, test_error=0.1, upper={"theorem1": 3.0},
                  robustness={"clean_accuracy": 0.9, **ladder_curves(3.0, **ladder)})
        res = robustness.ladder(runs_mod.load_runs([root]))
        return ({r.quantity: r.ours for r in res.rows}, {t.claim: t.verdict for t in res.trends}, res)

    rows, trends, res = rows_and_trends()
    assert res.figure is not None and len(res.figure.axes) == 2
    assert rows["l2, eps = 0.2: exact robust accuracy (1 of 10 points undecided)"] == "60.00%"
    assert rows["l2, eps = 0.2: Theorem 1, margin > 2 L eps, share of the exact robust accuracy"] == "50.00%"
    assert rows["l2, eps = 0.2: local radii, share of the exact robust accuracy"] == "100.00%"
    assert rows["l2, eps = 0.1: PGD accuracy above the exact robust accuracy (PGD's misses, when none is undecided)"] \
        == "0.00%"
    assert rows["l_inf, eps = 0.05: exact robust accuracy (2 of 10 points undecided)"] == "40.00%"
    assert set(trends.values()) == {paper.HOLDING}
    _, trends, _ = rows_and_trends(local=(0.8, 0.75))  # above the exact upper side 0.7 at 0.2
    assert trends["l2: no certificate above the exact robust accuracy (not shown non-robust)"] == paper.NOT_HOLDING
    _, trends, _ = rows_and_trends(pgd={0.1: 0.8, 0.2: 0.55})  # PGD below the proved 0.6 at 0.2
    assert trends["l2: PGD never below the proved robust accuracy"] == paper.NOT_HOLDING


def test_trend_verdicts_include_one_that_does_not_hold(runs_root, tmp_path):
    out = tmp_path / "out"
    plot.main(["--runs", str(runs_root), "--out", str(out)])
    report = (out / "report.md").read_text()
    verdict = lambda claim: table_row(report, claim)[1]  # noqa: E731
    assert verdict("monDEQ bound (Theorem 1) falls with m, h = 40") == "**holding**"
    assert verdict("monDEQ bound (Theorem 1) falls with m, h = 60") == "**not holding**"
    assert "1 of 1 steps go the other way" in table_row(report, "monDEQ bound (Theorem 1) falls with m, h = 60")[2]
    assert verdict("LipSDP-Neuron bound grows with depth") == "**holding**"
    assert verdict("DNN generalization bound grows with depth") == "**holding**"
    assert verdict("monDEQ generalization bound falls with m") == "**holding**"
    assert verdict("monDEQ m = 20 certifies more at eps = 0.2 than every DNN") == "**holding**"
    assert verdict("monDEQ bound below the DNN bound at every width") == "**holding**"
    assert verdict("every unrolled FB bound above the monDEQ's Theorem 1 bound") == "**holding**"
    assert verdict("CNN med and lg upper bounds above every monDEQ bound") == "**holding**"
    assert verdict("monDEQ test error rises with m") == "**not holding**"  # 27%, 26%, 33%
    assert "m = 1" in table_row(report, "some monDEQ beats every CNN in clean accuracy and at every PGD radius "
                                        "(paper: m = 1)")[2]


def test_monotone_trends():
    assert paper.monotone("x", {1: 3.0, 2: 2.0, 5: 1.0}, "down").verdict == paper.HOLDING
    assert paper.monotone("x", {1: 3.0, 2: 3.0}, "down").verdict == paper.NOT_HOLDING  # flat is no fall
    assert paper.monotone("x", {1: 1.0, 2: 3.0, 3: 2.0}, "up").verdict == paper.NOT_HOLDING
    assert paper.monotone("x", {1: 1.0}, "up").verdict == paper.NOT_RUN
    assert paper.monotone("x", {1: 1.0, 2: None}, "up").verdict == paper.NOT_RUN


def test_missing_figures_are_not_run_and_never_drawn_from_data(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "a", mon_fc(), m=20.0, test_error=0.04, upper={"theorem1": 3.9})
    out = tmp_path / "out"
    plot.main(["--runs", str(root), "--out", str(out)])
    report = (out / "report.md").read_text()
    assert "**not run**: no run dirs" in section_of(report, "fig1a")
    assert "(figures/fig1a.png)" not in report  # a placeholder image, not linked as a figure
    assert (out / "figures" / "fig1a.png").is_file()
    assert "**not run**: no run dirs" not in section_of(report, "fig1b")
    summary = table_row(report, "[fig1a](#fig1a)")
    assert summary[1] == "not run"
    # one point is no trend
    assert table_row(report, "monDEQ bound (Theorem 1) falls with m, h = 40")[1] == "**not run**"


def test_figures_are_stamped_with_dataset_and_profile(runs_root):
    runs = runs_mod.load_runs([runs_root])
    res = bounds_m.fig1b(runs)
    texts = [t.get_text() for t in res.figure.texts]
    assert any("dataset: mnist5k" in t and "profile: smoke" in t and "not a reproduction" in t for t in texts)
    assert res.figure.axes[0].get_yscale() == "log"


@pytest.mark.parametrize("data, name", [(("mnist", "paper"), "MNIST"), (MNIST, "MNIST 5k subset"),
                                        (("fashion_mnist", "smoke"), "Fashion-MNIST"),
                                        (("synthetic", "tiny"), "synthetic MNIST-shaped data")])
def test_a_title_names_the_dataset_and_the_widths_of_the_runs_drawn(tmp_path, data, name):
    for m in (1.0, 20.0):
        write_run(tmp_path, f"mon_fc/h40_m{m}", mon_fc(40), m=m, data=data, upper={"theorem1": 5 / m})
    res = bounds_m.fig1b(runs_mod.load_runs([tmp_path]))
    assert res.title == f"Figure 1b: FC monDEQ Lipschitz bounds vs m — {name}, h = 40"  # not the paper's 40, 60
    assert res.figure.texts[0].get_text() == res.title  # the suptitle
    assert bounds_m.fig1b([]).title == "Figure 1b: FC monDEQ Lipschitz bounds vs m"  # not run: no claim


def test_every_drawn_figure_is_titled_by_its_runs_and_keeps_the_papers_figure_name(drawn, runs_root):
    titles = {name: res.title for name, res in drawn.items()}
    assert titles["fig1b"].endswith("— MNIST 5k subset, h = 40, 60")  # the fixture has both widths
    assert titles["fig2"].endswith("— CIFAR-10") and titles["fig9"].endswith("— CIFAR-10")
    for name, title in titles.items():
        if name.startswith("fig"):
            assert title.startswith(f"Figure {name[3:]}: "), title
    synthetic = [r for r in runs_mod.load_runs([runs_root]) if r.data == "cifar" and r.kind == "mon_conv"]
    for run in synthetic:  # a CIFAR-10 stand-in is not called CIFAR-10
        for record in (run.metrics, run.bounds, run.robustness):
            record["dataset"] = "synthetic"
        (run.path / ".hydra").mkdir()
        (run.path / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"dataset": {"in_shape": [3, 32, 32]}}))
    assert bounds_m.fig2(synthetic).title.endswith("— synthetic CIFAR-10-shaped data")


def axes_by_xlabel(drawn: dict, xlabel: str) -> dict:
    """{figure: its axes with that x label}."""
    found = {name: [ax for ax in res.figure.axes if ax.get_xlabel() == xlabel] for name, res in drawn.items()}
    return {name: axes for name, axes in found.items() if axes}


def test_m_is_on_a_log_axis_ticked_and_labelled_at_the_m_of_the_runs(drawn):
    found = axes_by_xlabel(drawn, "strong-monotonicity parameter m")
    assert set(found) == {"fig1b", "fig1d", "fig2", "fig3", "fig5", "fig8"}
    for name, axes in found.items():
        for ax in axes:
            drawn_m = sorted({float(x) for line in ax.get_lines() if not getattr(line, "reference", False)
                              for x in line.get_xdata()})
            assert ax.get_xscale() == "log", name
            assert list(ax.get_xticks()) == drawn_m, name
            assert [t.get_text() for t in ax.get_xticklabels()] == [f"{m:g}" for m in drawn_m], name
            assert not any(t.get_text() for t in ax.get_xticklabels(minor=True)), name
    assert [t.get_text() for t in found["fig1b"][0].get_xticklabels()] == ["0.1", "1", "20"]


def test_depth_axes_are_ticked_at_whole_numbers(drawn):
    found = axes_by_xlabel(drawn, "depth")
    assert set(found) == {"fig1a", "fig1c", "fig3", "fig8"}
    for name, axes in found.items():
        for ax in axes:
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, ticks)


def test_the_paper_profile_wins_over_smoke_and_the_other_group_is_listed(runs_root, tmp_path):
    write_run(runs_root, "paper/mon_fc/h40_m20", mon_fc(), m=20.0, data=("mnist", "paper"), test_error=0.042,
              upper={"theorem1": 3.9})
    res = bounds_m.fig1b(runs_mod.load_runs([runs_root]))
    assert {r.profile for r in res.runs} == {"paper"}
    assert res.ignored == [("mnist5k", "smoke", 6)]
    text = report.section(res, None)
    assert "ignored 6 run(s) of dataset mnist5k, profile smoke" in text
    assert "| Theorem 1 bound, h = 40, m = 20 | 3.83 | 3.9 | mnist | paper |" in text


def test_params_keep_only_the_pipelines_current_grid(runs_root, tmp_path):
    params = {"grids": {"dnn": {"depth": [3, 8]}, "mon_fc": {"width": [40], "m": [0.1, 20]}},
              "robust": {"dnn": {"depth": [3]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runs = runs_mod.filter_by_params(runs_mod.load_runs([runs_root]), params)
    names = sorted(str(r.path.relative_to(runs_root)) for r in runs)
    assert names == ["dnn/d3", "dnn/d8", "mon_fc/h40_m0.1", "mon_fc/h40_m20.0"]
    out = tmp_path / "out"
    plot.main(["--runs", str(runs_root), "--out", str(out), "--params", str(tmp_path / "params.yaml"),
               "--figure", "fig1a"])
    section = (out / "figures" / "fig1a.md").read_text()
    assert table_row(section, "LipSDP-Neuron bound, d = 5")[2] == "—"
    assert table_row(section, "LipSDP-Neuron bound, d = 8")[2] == "300"
    assert str(runs_root / "dnn" / "d5") not in section and str(runs_root / "dnn" / "d8") in section
    assert not (out / "report.md").exists()  # --figure writes sections only


def test_assemble_orders_sections_and_flags_missing_ones(runs_root, tmp_path):
    out = tmp_path / "out"
    plot.main(["--runs", str(runs_root), "--out", str(out), "--figure", "fig7", "fig1a"])
    plot.main(["--out", str(out), "--assemble"])
    report = (out / "report.md").read_text()
    assert report.index('<a id="fig1a">') < report.index('<a id="fig7">')
    assert "section missing" in table_row(report, "fig2")[1]
    fig7 = section_of(report, "fig7")
    assert table_row(fig7, "unrolled bounds, range over alpha (FB and PR)")[1:3] == ["1e+05 – 1e+13",
                                                                                   "3.162e+05 – 1e+09"]


def test_synthetic_runs_are_classified_by_their_saved_channel_count(tmp_path):
    run = write_run(tmp_path, "r", {"name": "mon_conv"}, m=1.0, data=("synthetic", "tiny"), test_error=0.5)
    assert runs_mod.load_runs([tmp_path])[0].data == "mnist"
    (run / ".hydra" / "run").mkdir(parents=True)
    (run / ".hydra" / "run" / "config.yaml").write_text(yaml.safe_dump({"dataset": {"in_shape": [3, 32, 32]}}))
    assert runs_mod.load_runs([tmp_path])[0].data == "cifar"


def test_a_training_run_and_the_robustness_dir_of_its_checkpoint_are_one_run(tmp_path):
    train = write_run(tmp_path, "mon_fc/h40_m20", mon_fc(), m=20.0, test_error=0.04, upper={"theorem1": 3.9})
    ckpt = train / "model.ckpt"
    ckpt.write_bytes(b"weights")
    bounds = json.loads((train / "bounds.json").read_text())
    (train / "bounds.json").write_text(json.dumps({**bounds, "ckpt": str(ckpt)}))
    robust_dir = write_run(tmp_path, "robustness/mon_fc/h40_m20", mon_fc(), m=20.0,
                           robustness={**robust(3.9, (0.6, 0.5), (0.7, 0.6)), "ckpt": str(ckpt)})
    (robust_dir / "bounds.json").write_text((train / "bounds.json").read_text())  # as dvc.yaml copies it
    runs = runs_mod.load_runs([tmp_path])
    assert len(runs) == 1
    assert runs[0].path == train and runs[0].metrics and runs[0].bounds and runs[0].robustness
    assert bounds_m.fig1b(runs).notes == []  # no duplicate


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_reference_lines_outside_the_data_stay_in_view(scale):
    fig, (ax,) = canvas.new_figure(1, "t")
    canvas.series(ax, {1: 1e5, 2: 1e9}, "data")
    canvas.hline(ax, 1e3, "below")
    canvas.hline(ax, 2e9, "above")
    ax.set(yscale=scale)
    canvas.finish(fig, [])
    low, high = ax.get_ylim()
    assert low < 1e3 and high > 2e9


def test_a_claim_is_judged_only_once_its_runs_are_there():
    def judge():
        raise AssertionError("judged without its runs")

    assert paper.check("c", False, "needs x", judge) == paper.Trend("c", paper.NOT_RUN, "needs x")
    assert paper.check("c", True, "needs x", lambda: (True, "1 < 2")).verdict == paper.HOLDING
    assert paper.check("c", True, "needs x", lambda: (False, "2 > 1")).verdict == paper.NOT_HOLDING
    assert paper.check("c", True, "needs x", lambda: (None, "no value")).verdict == paper.NOT_RUN
