"""DVC as its users expect it: presets that survive `dvc exp run -S`, the figures' data series,
results that `dvc push` stores and `dvc pull` brings back on another clone.

- src.preset writes params.yaml from presets/ (plain YAML, its header), and refuses presets
  with anchors or of another name;
- src.plot writes one CSV per curve under outputs/<preset>/series/<figure>/ (dvc.yaml's top-level plots);
- a `slow` test, in a git + DVC copy of the project: `dvc exp run -S` of one figure on tiny runs,
  then the experiment's metrics and plots, `dvc push` to a local remote, `dvc pull` on a clone
  (bit-identical results, nothing out of date), `dvc plots diff` of a second experiment, and a
  switch of presets afterwards.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_plot import dnn, mon_fc, robust, write_run
from tests.wandb_offline import runs as wandb_runs

from src import plot, preset
from src.errors import ConfigError
from src.figures import series

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- presets

@pytest.fixture
def presets_root(tmp_path) -> Path:
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    return tmp_path


def test_a_switch_writes_the_header_then_the_preset_as_written(presets_root):
    path = preset.switch("paper", presets_root)
    text = path.read_text()
    assert text == preset.HEADER + (ROOT / "presets" / "paper.yaml").read_text()
    assert yaml.safe_load(text)["profile"] == "paper"
    assert preset.describe(presets_root) == "params.yaml: preset paper"
    path.write_text(text.replace("logger: wandb", "logger: csv"))  # as `dvc exp run -S logger=csv` would
    assert preset.describe(presets_root).endswith("edited since (`python -m src.preset paper` resets it)")
    preset.switch("smoke", presets_root)
    assert yaml.safe_load(path.read_text())["preset"] == "smoke"


@pytest.mark.parametrize("text,message", [
    ("preset: a\nbase: &b {x: 1}\nother: *b\n", "anchors, aliases or merge keys"),
    ("preset: a\n<<: {x: 1}\n", "anchors, aliases or merge keys"),
    ("preset: b\nprofile: smoke\n", "its key `preset` is 'b', not 'a'"),
])
def test_presets_with_anchors_or_of_another_name_are_refused(presets_root, text, message):
    (presets_root / "presets" / "a.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        preset.render("a", presets_root)
    assert not (presets_root / "params.yaml").exists()


def test_an_unknown_preset_is_one_error_line(run_app):
    proc = run_app("preset", "nope")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: no preset 'nope': presets/ holds cpu_full, fashion_full, paper, smoke"


# --------------------------------------------------------------------------- data series

def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_each_curve_of_a_figure_is_one_csv_of_its_x_and_one_quantity(tmp_path):
    root = tmp_path / "runs"
    for m, L, err in ((0.1, 40.0, 0.02), (20.0, 3.5, 0.05)):
        write_run(root, f"mon_fc/h40_m{m}", mon_fc(40), m=m, test_error=err, upper={"theorem1": L},
                  lower={"grad_norm": L / 4}, robustness=robust(L, (0.8, 0.6), (0.9, 0.7)))
    write_run(root, "mon_fc/h60_m1.0", mon_fc(60), m=1.0, test_error=0.03, upper={"theorem1": 5.0})
    write_run(root, "dnn/d3", dnn(3), test_error=0.03, upper={"naive": 9.0},
              robustness=robust(9.0, (0.5, 0.1), (0.6, 0.2)))
    out = tmp_path / "out"
    argv = ["--runs", str(root), "--out", str(out), "--figure", "fig1b", "fig4", "fig5", "fig3"]
    assert plot.main(argv) == 0
    got = out / "series"
    assert _rows(got / "fig1b" / "mon_fc_width40" / "upper_theorem1.csv") == [
        ["m", "upper/theorem1"], ["0.1", "40.0"], ["20.0", "3.5"]]
    assert _rows(got / "fig1b" / "mon_fc_width60" / "upper_theorem1.csv") == [["m", "upper/theorem1"], ["1.0", "5.0"]]
    assert _rows(got / "fig1b" / "mon_fc_width40" / "lower_grad_norm.csv")[1:] == [["0.1", "10.0"], ["20.0", "0.875"]]
    assert not (got / "fig1b" / "mon_fc_width40" / "test_error.csv").exists()  # Fig. 1b draws bounds only
    assert _rows(got / "fig5" / "mon_fc_width40" / "test_error.csv") == [
        ["m", "test_error"], ["0.1", "0.02"], ["20.0", "0.05"]]
    assert sorted(p.relative_to(got / "fig4").as_posix() for p in (got / "fig4").rglob("*.csv")) == [
        "dnn_d3/certified.csv", "dnn_d3/pgd.csv", "mon_fc_h40_m0.1/certified.csv", "mon_fc_h40_m0.1/pgd.csv",
        "mon_fc_h40_m20.0/certified.csv", "mon_fc_h40_m20.0/pgd.csv"]
    assert _rows(got / "fig4" / "dnn_d3" / "pgd.csv") == [["eps", "pgd_accuracy"], ["0.5", "0.6"], ["1.0", "0.2"]]
    assert list((got / "fig3").iterdir()) == []  # no series of its own (and not run here)
    for path in got.rglob("*.csv"):  # the x dvc.yaml's top-level plots name for the figure
        assert _rows(path)[0][0] == series.X[path.relative_to(got).parts[0]], path
    shutil.rmtree(root / "mon_fc" / "h60_m1.0")
    assert plot.main(argv) == 0
    assert not (got / "fig1b" / "mon_fc_width60").exists()  # a run gone, its curve gone


# --------------------------------------------------------------------------- a real experiment

DVC = str(Path(sys.executable).parent / "dvc")
# One figure of tiny runs: fig1a reads the dnn family only; one depth, two cheap bounds.
SET = ["profile=tiny", "grids.dnn.depth=[3]", "data.mnist='dataset=synthetic dataset.n_train=64 dataset.n_test=32'",
       "bound_args.dnn=\"'bound.methods=[naive,grad_norm]' bound.lower_points=16 generalization.enabled=false\""]
RUN = "outputs/smoke/dnn/d3"  # the tree of the project's preset (smoke), whatever its profile
HEADLINE = "outputs/metrics/fig1a.json"
RESULTS = [f"{RUN}/{name}" for name in ("model.ckpt", "last.ckpt", "metrics.json", "summary_run.json", "bounds.json",
                                        "summary_bound.json", ".hydra/run/config.yaml", ".hydra/bound/config.yaml")] + [
    "outputs/smoke/figures/fig1a.png", "outputs/smoke/figures/fig1a.md", "outputs/smoke/series/fig1a/dnn_width40/upper_naive.csv",
    HEADLINE]


def _run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "offline", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _git_project(tmp_path: Path) -> Path:
    """What the pipeline needs of the checkout, committed in a fresh git + DVC repository."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("src", "conf", "presets"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, project / name)
    preset.switch("smoke", project)
    _run(project, "git", "init", "-q")
    _run(project, "git", "config", "user.email", "test@example.com")
    _run(project, "git", "config", "user.name", "test")
    _run(project, DVC, "init", "-q")
    _commit(project, "the pipeline")
    return project


def _commit(project: Path, message: str) -> None:
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-q", "-m", message)


def _experiment_metrics(shown: list) -> dict:
    """{file: its numbers} of the experiments in a `dvc exp show --json` answer (read from their commits)."""
    return {path: value["data"] for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]
            for path, value in rev["data"]["metrics"].items() if "data" in value}


@pytest.mark.slow
def test_exp_run_set_param_then_push_pull_and_a_preset_switch(tmp_path):
    """About 45 s: three tiny stages twice, a dozen DVC commands, a clone."""
    project = _git_project(tmp_path)
    _run(project, DVC, "exp", "run", "plot@fig1a", *[a for value in SET for a in ("-S", value)])
    params_text = (project / "params.yaml").read_text()
    assert preset.plain(params_text) and params_text.startswith(preset.HEADER)  # rewritten, still plain
    params = yaml.safe_load(params_text)
    assert (params["profile"], params["grids"]["dnn"], params["preset"]) == ("tiny", {"depth": [3]}, "smoke")
    assert "train_dnn@3" in _run(project, DVC, "stage", "list").split()
    # the experiment's metrics: the figure's headline, a few numbers at a path of no preset, also from its commit
    shown = json.loads(_run(project, DVC, "metrics", "show", "--json"))[""]["data"]  # every stage's, run or not
    assert {path for path, value in shown.items() if "data" in value} == {HEADLINE}
    headline = json.loads((project / HEADLINE).read_text())
    assert set(headline) == {"paper", "ours", "trends_holding", "trends_checked", "runs"} and headline["runs"] == 1
    numbers = {key: value for key, value in headline.items() if value is not None}  # DVC drops the nulls
    assert _experiment_metrics(json.loads(_run(project, DVC, "exp", "show", "--json"))) == {HEADLINE: numbers}
    table = _run(project, DVC, "metrics", "show")
    assert max(map(len, table.splitlines())) < 120, table
    bound = json.loads((project / RUN / "summary_bound.json").read_text())  # per run: in the run dir, an out
    assert set(bound) == {"test_error", "upper/naive", "lower/grad_norm"}
    # the dashboards: the model's one wandb run (training, then its bounds), the figure's own
    logged = wandb_runs(project / RUN)
    assert [r["job_type"] for r in logged] == ["train", "bound"] and len({r["id"] for r in logged}) == 1
    assert logged[1]["summary"]["bound/upper/naive"] == bound["upper/naive"]
    figure, = wandb_runs(project / "outputs" / "smoke")
    assert {"fig1a", "preset:smoke", "profile:tiny", "dataset:synthetic"} <= set(figure["tags"])
    plots = json.loads(_run(project, DVC, "plots", "show", "--json"))["data"]
    assert [p["type"] for p in plots["outputs/smoke/figures/fig1a.png"]] == ["image"]
    [naive] = plots["outputs/smoke/series/fig1a/dnn_width40/upper_naive.csv"]
    assert naive["content"]["encoding"]["x"]["field"] == "depth"
    assert [(p["depth"], p["upper/naive"]) for p in naive["content"]["data"]["values"]] == [("3", str(bound["upper/naive"]))]

    # every result cached, pushed, pulled on a clone bit for bit, and the clone up to date
    _run(project, DVC, "remote", "add", "-d", "store", str(tmp_path / "store"))
    _commit(project, "the experiment, and a remote")
    _run(project, DVC, "push")
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / RUN).exists()
    _run(clone, DVC, "pull", "--with-deps", "plot@fig1a")  # what ran (a plain pull wants every stage's outs)
    for path in RESULTS:
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    assert "up to date" in _run(clone, DVC, "status", "--with-deps", "plot@fig1a")

    # a second experiment (another seed): `dvc plots diff` overlays its curve and the committed one
    _run(project, DVC, "exp", "run", "-n", "seed1", "plot@fig1a", "-S", "args.dnn='seed=1'")
    diff = json.loads(_run(project, DVC, "plots", "diff", "--json", "HEAD", "seed1", "--targets",
                           "outputs/smoke/series/fig1a/dnn_width40/upper_naive.csv"))["data"]
    [overlaid] = diff["outputs/smoke/series/fig1a/dnn_width40/upper_naive.csv"]
    points = {p["rev"]: float(p["upper/naive"]) for p in overlaid["content"]["data"]["values"]}
    assert points.keys() == {"HEAD", "seed1"} and points["HEAD"] == bound["upper/naive"] != points["seed1"]

    # presets still switch after the -S rewrites, and the pipeline loads with the other one
    _run(project, sys.executable, "-m", "src.preset", "paper")
    assert yaml.safe_load((project / "params.yaml").read_text())["profile"] == "paper"
    assert "train_dnn@14" in _run(project, DVC, "stage", "list").split()
    _run(project, DVC, "status")
    _run(project, sys.executable, "-m", "src.preset", "smoke")
    assert (project / "params.yaml").read_text() == preset.HEADER + (ROOT / "presets" / "smoke.yaml").read_text()
