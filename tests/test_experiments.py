"""The figure overlays (conf/experiment/) and the DVC pipeline (dvc.yaml, params.yaml, presets/).

- every overlay composes with every app's config, validates and builds its models, with the
  variants its comment documents, and fixes the paper's hyperparameters;
- params.yaml is plain YAML (no anchors: `dvc exp run -S` rewrites it) and exactly what
  `python -m src.preset <its preset>` writes; the presets agree on their keys;
- dvc.yaml resolves (DVC's own parser) for both presets, and every stage's
  command is a valid invocation of its app: Hydra composes and validates its overrides
  (src.plot's are parsed by its argument parser);
- every result is a cached out, the only metrics are the figures' headlines, and
  the top-level plots name the x of each figure's data series (src/figures/series.py); every
  stage depends on the code its app imports;
- a `slow` test runs the whole DAG on synthetic data in a temporary copy of the project and
  checks that a second `dvc repro` runs nothing.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from src import plot, preset, sources
from src.cli import CONF_DIR, validate
from src.figures import series
from src.models import build_model

ROOT = Path(CONF_DIR).parent
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
APP_CONFIG = {"run": "config", "bound": "bound", "robustness": "robustness"}
FIGURES = ["fig1a", "fig1b", "fig1c", "fig1d", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9",
           "ladder", "cifar_multitier"]


def test_every_figure_of_the_issue_has_an_overlay():
    assert set(FIGURES) == set(EXPERIMENTS)
    assert list(plot.FIGURES) == FIGURES
    for name in EXPERIMENTS:
        text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), name


# The variants each overlay's comment documents (sweeps go on the command line).
VARIANTS = {
    "fig1a": [["model.depth=14"]],
    "fig1b": [["model.width=60", "m=0.1"]],
    "fig1c": [["model.depth=10"]],
    "fig1d": [["model=mon_multiconv", "m=0.5"]],
    "fig2": [["m=0.1"], ["model=cnn", "model.size=lg"]],
    "fig3": [["model=dnn", "model.depth=14"]],
    "fig4": [["m=0.1"], ["model=dnn", "model.depth=8"]],
    "fig5": [["model=mon_conv"], ["model=mon_multiconv"]],
    "fig6": [["model.width=100"], ["model=dnn", "model.depth=5", "model.width=20"]],
    "fig7": [[]],
    "fig8": [["model=dnn", "model.depth=3"]],
    "fig9": [["model=cnn", "model.size=med"]],
    "ladder": [["dataset=fashion_mnist"]],
    "cifar_multitier": [[]],
}


def _build(cfg):
    """Build the model; run a forward pass only for the cheap ones (a convolutional monDEQ's
    equilibrium solve takes 10-40 s on a loaded CPU, and src.cli.validate already built it)."""
    ds = cfg.dataset
    net = build_model(cfg.model, cfg.m, cfg.splitting, tuple(ds.in_shape), ds.num_classes)
    if cfg.model.name in ("dnn", "cnn", "mon_fc"):
        with torch.no_grad():
            assert net(torch.zeros(2, *ds.in_shape)).shape == (2, ds.num_classes)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_overlay_and_its_variants_compose_validate_and_build(experiment):
    from hydra import compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for variant in [[]] + VARIANTS[experiment]:
            for app, config_name in APP_CONFIG.items():
                cfg = compose(config_name, overrides=[f"+experiment={experiment}", *variant],
                              return_hydra_config=True)
                assert cfg.hydra.run.dir.startswith(f"outputs/{experiment}/")
                del cfg.hydra
                OmegaConf.to_container(cfg, resolve=True)
                validate(cfg)  # builds the model too
                if app == "run":
                    _build(cfg)


@pytest.mark.parametrize("experiment,expected", [
    ("fig1a", {"dataset.name": "mnist", "model.name": "dnn", "model.width": 40, "optim.epochs": 40}),
    ("fig1b", {"dataset.name": "mnist", "model.name": "mon_fc", "model.width": 40, "m": 20.0,
               "splitting.name": "pr", "splitting.tune_alpha": True}),
    ("fig1c", {"model.name": "cnn", "model.size": None}),
    ("fig1d", {"model.name": "mon_conv", "model.channels": 128}),
    ("fig2", {"dataset.name": "cifar10", "model.name": "mon_conv", "model.channels": 128, "dataset.augment": False,
              "optim.step_size": 25}),
    ("fig3", {"protocol.name": "margin", "protocol.n_train": 4096, "protocol.threshold": 0.1, "margin_gamma": 10.0,
              "model.width": 40}),
    ("fig4", {"model.name": "mon_fc", "model.width": 40, "certify.rule": "paper"}),
    ("fig6", {"m": 1.0}),
    ("fig7", {"m": 1.0, "model.width": 40}),
    ("fig8", {"protocol.name": "margin"}),
    ("fig9", {"dataset.name": "cifar10", "model.channels": 128, "certify.rule": "paper"}),
    ("cifar_multitier", {"model.name": "mon_multiconv", "model.channels": [64, 128, 128], "dataset.augment": True,
                         "m": 1.0, "optim.schedule": "onecycle", "optim.lr": 0.05, "optim.epochs": 65}),
])
def test_overlays_fix_the_papers_hyperparameters(compose, experiment, expected):
    cfg = OmegaConf.to_container(compose([f"+experiment={experiment}"]), resolve=True)
    for dotted, value in expected.items():
        node = cfg
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted
    multi = compose(["+experiment=fig1d", "model=mon_multiconv"])
    assert list(multi.model.channels) == [32, 64, 128]
    assert compose(["+experiment=fig2", "model=cnn", "model.size=lg"]).model.depth is None


# --------------------------------------------------------------------------- the DVC pipeline

def _params(name: str) -> dict:
    return yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())


def test_params_yaml_is_plain_and_what_src_preset_writes_for_its_preset():
    text = (ROOT / "params.yaml").read_text()
    assert preset.plain(text)
    name = yaml.safe_load(text)["preset"]
    assert text == preset.render(name), (
        f"params.yaml is not presets/{name}.yaml: change the preset and run `python -m src.preset {name}` "
        "(after `dvc exp run -S`: `git checkout params.yaml`, or that command)")


def test_the_presets_agree_and_hold_the_papers_grids():
    presets = {name: _params(name) for name in preset.names()}
    paper, full = presets["paper"], presets["cpu_full"]
    assert {name: (values["preset"], values["profile"]) for name, values in presets.items()} == {
        "smoke": ("smoke", "smoke"), "paper": ("paper", "paper"), "cpu_full": ("cpu_full", "paper"),
        "fashion_full": ("fashion_full", "paper")}
    for values in presets.values():
        assert values.keys() == paper.keys()
        for key in ("grids", "robust", "args", "bound_args", "robust_args", "data"):
            assert values[key].keys() == paper[key].keys(), key
        assert values["grids"].keys() == values["args"].keys() == values["bound_args"].keys()
        for family, grid in values["robust"].items():  # robustness only on runs that are trained
            for key, points in grid.items():
                assert set(points) <= set(values["grids"][family].get(key, points)), (family, key)
    assert paper["data"] == {"mnist": "dataset=mnist", "cifar": "dataset=cifar10"}
    assert paper["grids"]["dnn"]["depth"] == list(range(3, 15))
    assert paper["grids"]["cifar_mon_conv"]["m"] == [0.1, 0.5, 1, 2, 10, 20]
    assert paper["grids"]["cifar_cnn"]["size"] == ["sm", "med", "lg"]
    # the full-length CPU preset: the paper's grids and bounds for the MNIST fully connected families
    for family in ("dnn", "dnn_width", "mon_fc", "mon_fc_width"):
        assert full["grids"][family] == paper["grids"][family], family
        assert full["bound_args"][family] == paper["bound_args"][family], family
    assert full["robust"]["dnn"] == paper["robust"]["dnn"] and full["robust"]["mon_fc"] == paper["robust"]["mon_fc"]
    assert (full["data"]["mnist"], presets["fashion_full"]["data"]["mnist"]) == ("dataset=mnist5k", "dataset=fashion_mnist")


def _stages(project: Path) -> list:
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return list(repo.index.stages)


@pytest.fixture(scope="module", params=preset.names())
def pipeline(request, tmp_path_factory):
    """(preset, stages) of dvc.yaml resolved with that preset of params.yaml, in a scratch project."""
    project = tmp_path_factory.mktemp(f"dvc_{request.param}")
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text(preset.render(request.param))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return request.param, _stages(project)


def _app_calls(cmd: str):
    """(app, overrides) of each `python -m src.<app> ...` in a stage command."""
    for part in cmd.split("&&"):
        words = shlex.split(part)
        if words[:2] == ["python", "-m"] and words[2].startswith("src."):
            yield words[2][4:], words[3:]


def _check_commands(stages, params):
    """Compose (Hydra's compose API, as the app would) and validate each stage's command."""
    from hydra import compose
    from hydra import initialize_config_dir

    seen = set()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for stage in stages:
            calls = list(_app_calls(stage.cmd))
            assert len(calls) == 1, stage.name
            app, argv = calls[0]
            if app == "sources":  # the code stage (tests/test_sources.py)
                assert argv == ["--out", "outputs/sources", *sources.APPS], stage.name
                continue
            if app == "plot":
                args = plot.make_parser().parse_args(argv)
                assert args.assemble or args.figure, stage.name
                continue
            assert app in APP_CONFIG, stage.name
            run_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir="))
            assert run_dir.startswith(f"outputs/{params['preset']}/"), stage.name
            cfg = compose(APP_CONFIG[app], overrides=argv, return_hydra_config=True)
            assert cfg.hydra.run.dir == run_dir
            validate(cfg)  # m, and the model builds for the dataset's shape
            assert cfg.profile == params["profile"]
            key = (app, tuple(a for a in argv if not a.startswith("hydra.")))
            assert key not in seen, f"two stages run the same command: {stage.name}"
            seen.add(key)


def _one_per_group(stages):
    """The first stage of each matrix/foreach group (the others differ only in the grid values)."""
    firsts = {}
    for stage in stages:
        firsts.setdefault(stage.name.split("@")[0], stage)
    return list(firsts.values())


def test_every_stage_command_is_a_valid_app_invocation(pipeline):
    name, stages = pipeline
    for stage in stages:  # dvc.lock's YAML folds long lines and does not round-trip a double space
        assert "  " not in stage.cmd and stage.cmd == stage.cmd.strip(), stage.name
    _check_commands(_one_per_group(stages), _params(name))
    apps = {app for s in stages for app, _ in _app_calls(s.cmd)}
    assert apps == {"sources", "run", "bound", "robustness", "plot"}


def test_every_stage_depends_on_the_code_its_app_runs(pipeline):
    """Through its app's file of src.sources (which lists every module the app imports: tests/test_sources.py),
    written by the one stage that depends on src/ and conf/ themselves."""
    _, stages = pipeline
    code = [s for s in stages if s.name == "sources"]
    assert len(code) == 1 and sorted(str(d.def_path) for d in code[0].deps) == ["conf", "src"]
    assert sorted(str(o.def_path) for o in code[0].outs) == sorted(f"outputs/sources/{a}.json" for a in sources.APPS)
    for stage in _one_per_group(stages):  # so a change of that code re-runs the stage
        deps = [str(d.def_path) for d in stage.deps]
        for app, _ in _app_calls(stage.cmd):
            if app != "sources":
                assert f"outputs/sources/{app}.json" in deps, stage.name


def test_the_committed_lock_holds_the_committed_presets_stages_and_nothing_else(tmp_path):
    """DVC keeps the entries of stages a preset switch took away; the lock is read and rewritten whole
    after every stage, so the committed one holds the committed preset's stages only, each with its command."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    lock = yaml.load((ROOT / "dvc.lock").read_text(), Loader=yaml.CSafeLoader)["stages"]
    assert {s.name: s.cmd for s in _stages(tmp_path)} == {k: v["cmd"] for k, v in lock.items()}


@pytest.mark.slow
def test_every_stage_of_every_grid_value_composes(pipeline):
    name, stages = pipeline
    _check_commands(stages, _params(name))


# What each app leaves in its run dir, all outs: the rich JSON files, Hydra's saved config (.hydra/<app
# name>/) and the flat summary; .dvcignore hides the rest (lock, logs). The only metrics are the figures'.
RUN_DIR_OUTS = {"train": ("model.ckpt", "last.ckpt", "metrics.json", ".hydra/run", "summary_run.json"),
                "bound": ("bounds.json", ".hydra/bound", "summary_bound.json"),
                "robustness": ("bounds.json", "robustness.json", ".hydra/robustness", "summary_robustness.json")}


def _run_dir(stage) -> str:
    return next(w.split("=", 1)[1] for w in shlex.split(stage.cmd) if w.startswith("hydra.run.dir="))


def test_stage_graph_outputs_metrics_and_plots(pipeline):
    name, stages = pipeline
    params = _params(name)
    tree = f"outputs/{name}"  # each preset's results, figures and report in a tree of its own
    by_name = {s.name: s for s in stages}
    n_runs = 0
    for family, grid in params["grids"].items():
        size = 1
        for values in grid.values():
            size *= len(values)
        n_runs += size
        train = [s for s in stages if s.name.startswith(f"train_{family}@")]
        bound = [s for s in stages if s.name.startswith(f"bound_{family}@")]
        assert len(train) == len(bound) == size, family
    assert sum(s.name.startswith("train_") for s in stages) == n_runs
    for stage in stages:
        outs = {str(o.def_path): o for o in stage.outs}
        assert all(o.use_cache for o in outs.values()), stage.name  # every result versioned by DVC
        app = stage.name.split("@")[0].split("_")[0]
        if app in RUN_DIR_OUTS:
            run_dir = _run_dir(stage)
            exact = ("counterexamples_exact_l2.npz",) if "+experiment=ladder" in stage.cmd else ()  # its exact curve's
            assert sorted(outs) == sorted(f"{run_dir}/{f}" for f in RUN_DIR_OUTS[app] + exact), stage.name
        metrics = [p for p, o in outs.items() if o.metric]
        assert metrics == ([f"outputs/metrics/{stage.name.split('@', 1)[1]}.json"] if app == "plot" else []), stage.name
        if app == "bound":
            assert any(str(d.def_path).endswith("/model.ckpt") for d in stage.deps)
        if app == "robustness":
            assert any(str(d.def_path).endswith("/bounds.json") for d in stage.deps)
        for dep in stage.deps:  # code and config deps exist; the rest are upstream outputs
            path = str(dep.def_path)
            if not path.startswith("outputs/"):
                assert (ROOT / path).exists() or path == "params.yaml", (stage.name, path)
    plots = sorted(n.split("@", 1)[1] for n in by_name if n.startswith("plot@"))
    assert plots == sorted(plot.FIGURES)
    for fig in plots:
        outs = {str(o.def_path): o.plot for o in by_name[f"plot@{fig}"].outs}
        assert outs == {f"{tree}/figures/{fig}.png": True, f"{tree}/figures/{fig}.md": False,
                        f"{tree}/series/{fig}": False, f"outputs/metrics/{fig}.json": False}
    assert {str(d.def_path) for d in by_name["report"].deps} >= {f"{tree}/figures/{f}.md" for f in plots}
    assert [str(o.def_path) for o in by_name["report"].outs] == [f"{tree}/report.md"]
    for stage in [by_name["report"]] + [by_name[f"plot@{fig}"] for fig in plots]:  # they write where they declare
        assert f" --out {tree} " in f"{stage.cmd} ", stage.name


def test_top_level_plots_name_the_x_of_each_figures_data_series():
    entries = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert {path: props for entry in entries for path, props in entry.items()} == {
        f"outputs/${{preset}}/series/{fig}": {"x": x, "template": "simple"} for fig, x in series.X.items()}
    assert set(series.X) <= set(plot.FIGURES)


# --------------------------------------------------------------------------- the whole DAG, once

TINY_PARAMS = {
    "preset": "tiny", "profile": "tiny", "logger": "csv",
    "data": {"mnist": "dataset=synthetic dataset.n_train=64 dataset.n_test=32",
             "cifar": "dataset=synthetic 'dataset.in_shape=[3,32,32]' dataset.n_train=64 dataset.n_test=32"},
    "grids": {"dnn": {"depth": [3, 4]}, "dnn_width": {"width": [8, 16]}, "mon_fc": {"width": [40], "m": [1, 20]},
              "mon_fc_width": {"width": [8, 16]}, "cnn": {"depth": [1, 2]}, "mon_conv": {"m": [1, 20]},
              "mon_multiconv": {"m": [1]}, "gen_dnn": {"depth": [3]}, "gen_mon_fc": {"m": [20]},
              "cifar_mon_conv": {"m": [1, 20]}, "cifar_cnn": {"size": ["sm"]}, "cifar_multitier": {"m": [1]}},
    "robust": {"dnn": {"depth": [3]}, "mon_fc": {"width": [40], "m": [20]}, "cifar_mon_conv": {"m": [20]},
               "cifar_cnn": {"size": ["sm"]}},
    "args": {"dnn": "seed=0", "dnn_width": "seed=0", "mon_fc": "seed=0", "mon_fc_width": "seed=0", "cnn": "seed=0",
             "mon_conv": "seed=0 model.channels=4", "mon_multiconv": "seed=0 'model.channels=[2,4,4]'",
             "gen_dnn": "seed=0 protocol.n_train=null", "gen_mon_fc": "seed=0 model.width=8 protocol.n_train=null",
             "cifar_mon_conv": "seed=0 model.channels=4", "cifar_cnn": "seed=0",
             "cifar_multitier": "seed=0 'model.channels=[2,4,4]'"},
    "robust_args": {"mnist": "robustness.n_test=16 robustness.progress=false robustness.pgd.steps=2",
                    "cifar": "robustness.n_test=16 robustness.progress=false robustness.pgd.steps=2"},
}
CHEAP_BOUNDS = {"dnn": "[lipsdp_neuron,naive,grad_norm]", "dnn_width": "[naive,grad_norm]",
                "mon_fc": "[theorem1,grad_norm,unrolled_fb,unrolled_pr]", "mon_fc_width": "[theorem1,grad_norm]",
                "cnn": "[autolip,seqlip_greedy,grad_norm]", "mon_conv": "[theorem1,theorem1_pooled]",
                "mon_multiconv": "[theorem1]", "gen_dnn": "[naive]", "gen_mon_fc": "[theorem1]",
                "cifar_mon_conv": "[theorem1]", "cifar_cnn": "[seqlip_greedy,grad_norm]",
                "cifar_multitier": "[theorem1]"}
TINY_PARAMS["bound_args"] = {f: f"'bound.methods={m}' bound.lower_points=16 bound.ascent_steps=1 "
                                "'bound.unrolled_alphas=[0.5,1.0]' bound.unrolled_batch=8"
                                + ("" if f.startswith("gen_") else " generalization.enabled=false")
                             for f, m in CHEAP_BOUNDS.items()}


def test_tiny_params_cover_every_key_dvc_yaml_reads():
    smoke = _params("smoke")
    assert TINY_PARAMS.keys() | {"preset"} == smoke.keys()  # `preset` names a presets/ file, read by no stage
    for key in ("data", "grids", "robust", "args", "bound_args", "robust_args"):
        assert TINY_PARAMS[key].keys() == smoke[key].keys(), key


def _dvc(project: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "WANDB_MODE": "disabled", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _changed_stages(status: str) -> set[str]:
    return {line.strip().rstrip(":") for line in status.splitlines()
            if line and not line[0].isspace() and line.rstrip().endswith(":")}


@pytest.mark.slow
def test_the_whole_dag_runs_on_synthetic_data_and_a_second_repro_is_a_no_op(tmp_path):
    """Every stage of dvc.yaml on tiny synthetic runs (about 5 minutes on 2 loaded cores)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    assert _dvc(project, "init", "-q").returncode == 0
    first = _dvc(project, "repro")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    report = (project / "outputs" / "tiny" / "report.md").read_text()
    for fig in plot.FIGURES:  # every figure is drawn from (tiny) runs
        assert (project / "outputs" / "tiny" / "figures" / f"{fig}.png").is_file()
        section = report.split(f'<a id="{fig}">')[1].split("<a id=")[0]
        assert "**not run**: no run dirs" not in section, fig
        assert "profile: tiny" in section
    second = _dvc(project, "repro")
    assert second.returncode == 0
    assert "Running stage" not in second.stdout, second.stdout
    assert _dvc(project, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    metrics = json.loads(_dvc(project, "metrics", "show", "--json").stdout)[""]["data"]
    assert len(metrics) == sum(len(s.metrics) for s in _stages(project))  # every stage's metrics:
    assert set(metrics) == {f"outputs/metrics/{fig}.json" for fig in plot.FIGURES}  # one headline per figure,
    assert all("data" in m for m in metrics.values())  # each of them read
    assert all(m["data"]["runs"] > 0 and all(v is None or isinstance(v, (int, float)) for v in m["data"].values())
               for m in metrics.values())  # flat numbers (null: no row with both numbers)
    assert all(isinstance(m["data"]["ours"], float) for fig, m in metrics.items() if "fig1b" in fig or "fig4" in fig)
    drawn = json.loads(_dvc(project, "plots", "show", "--json").stdout)["data"]
    assert {path.split("/")[3] for path, plots in drawn.items() if path.startswith("outputs/tiny/series/") and plots} \
        == set(series.X)  # every figure with series has curves, each a plot
    # one grid value more: only its branch and the figures reading its family are out of date
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["grids"]["dnn"]["depth"].append(5)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    changed = _changed_stages(_dvc(project, "status").stdout)
    assert changed == {"train_dnn@5", "bound_dnn@5", "plot@fig1a", "plot@fig1b"}, changed
