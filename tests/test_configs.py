"""conf/ composes in every combination the project offers; the shared CLI helpers behave."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import OmegaConf

from src.cli import CONF_DIR, reorder_argv, validate
from src.errors import ConfigError
from src.models import build_model

CONF = Path(CONF_DIR)
ROOT = CONF.parent
GROUPS = ("dataset", "model", "splitting", "trainer", "callbacks", "logger", "profile")
TOP_KEYS = {"m", "seed", "ckpt", "model", "dataset", "splitting", "trainer", "callbacks", "logger", "profile", "optim"}
DATASET_KEYS = {"name", "in_shape", "num_classes", "mean", "std", "batch_size", "test_batch_size"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(compose, group, option):
    cfg = compose([f"{group}={option}"])
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert TOP_KEYS <= set(plain)
    assert DATASET_KEYS <= set(plain["dataset"])
    assert len(plain["dataset"]["mean"]) == len(plain["dataset"]["std"])
    validate(cfg)  # m, and the model builds for this dataset's shape
    assert isinstance(cfg.m, float)


@pytest.mark.parametrize("app", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_app_config_composes(compose, app):
    cfg = compose(["+experiment=fig1b"], config_name=app)
    OmegaConf.to_container(cfg, resolve=True)
    assert TOP_KEYS <= set(cfg)
    hydra = compose(["+experiment=fig1b"], hydra=True, config_name=app).hydra
    for key in ("run", "sweep"):  # the run dirs resolve (the rest of hydra's node only at run time)
        OmegaConf.to_container(hydra[key], resolve=True)
    assert hydra.run.dir.startswith("outputs/")


@pytest.mark.parametrize("group", ["dataset", "model", "splitting"])
def test_a_group_offers_one_file_per_registered_name_and_no_other(group):
    """conf/<group>/<name>.yaml sets name: <name>, for every name of the group's registry and only those."""
    from src.data import DATASETS
    from src.models import MODELS
    from src.mondeq.splitting import SPLITTING_METHODS

    registry = {"dataset": DATASETS, "model": MODELS, "splitting": SPLITTING_METHODS}[group]
    assert options(group) == sorted(registry)
    for name in registry:
        assert yaml.safe_load((CONF / group / f"{name}.yaml").read_text())["name"] == name


def test_groups_offer_the_documented_options():
    assert options("logger") == ["csv", "none", "wandb"]
    assert {"paper", "smoke"} <= set(options("profile"))
    # +experiment= would be rejected if the primary config already listed the group
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    assert not any("experiment" in str(d) for d in defaults)


# the paper's multi-tier CIFAR-10 monDEQ (64, 128, 128 channels): a minute to build its resolvent on this CPU
@pytest.mark.parametrize("experiment", [pytest.param(e, marks=[pytest.mark.slow] if e == "cifar_multitier" else [])
                                        for e in options("experiment")])
def test_every_experiment_composes_and_instantiates_its_model(compose, experiment):
    cfg = compose([f"+experiment={experiment}"])
    validate(cfg)
    ds = cfg.dataset
    net = build_model(cfg.model, cfg.m, cfg.splitting, tuple(ds.in_shape), ds.num_classes)
    with torch.no_grad():
        logits = net(torch.zeros(2, *ds.in_shape))
    assert logits.shape == (2, ds.num_classes)


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_slurm"])
def test_launchers_compose_and_instantiate(compose, launcher):
    cfg = compose([f"hydra/launcher={launcher}"], hydra=True)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    get_class(cfg.hydra.launcher._target_)  # the plugin is installed


def test_a_submitit_sweep_leaves_no_literal_job_id_folder(compose, tmp_path):
    """submitit makes `<sweep dir>/.submitit/%j` itself; the sweep's end removes it while empty."""
    from src.cli import Checks

    cfg = compose(["hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}"], hydra=True)
    literal = Path(cfg.hydra.launcher.submitit_folder)
    assert literal == tmp_path / ".submitit" / "%j"
    literal.mkdir(parents=True)
    (tmp_path / ".submitit" / "1234").mkdir()  # a job's own folder stays
    Checks().on_multirun_end(cfg)
    assert sorted(p.name for p in (tmp_path / ".submitit").iterdir()) == ["1234"]
    literal.mkdir()
    (literal / "kept").write_text("")  # not empty: not ours to remove
    Checks().on_multirun_end(cfg)
    assert (literal / "kept").is_file()


def test_submitit_slurm_fields_validate_without_slurm(compose, tmp_path, monkeypatch):
    """The Slurm fields a cluster user sets pass submitit's own checks; a misspelt one does not."""
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit only looks for srun on PATH
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                   "hydra.launcher.timeout_min=240", "hydra.launcher.gpus_per_node=1",
                   "hydra.launcher.mem_gb=32"], hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    # the mapping of hydra_submitit_launcher's SlurmLauncher.launch, short of submitting
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "submitit"),
                                     slurm_max_num_timeout=params["max_num_timeout"])
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
            "stderr_to_stdout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in {"_target_", "submitit_folder", "max_num_timeout"}})
    with pytest.raises(NameError, match="partitin"):
        executor.update_parameters(slurm_partitin="gpu")
    with pytest.raises(ConfigCompositionException):
        compose(["hydra/launcher=submitit_slurm", "hydra.launcher.partitin=gpu"], hydra=True)


def test_run_dirs_are_deterministic(compose):
    cfg = compose(["+experiment=fig1b", "m=0.5", "dataset=synthetic", "logger=csv",
                   "trainer.accelerator=cpu"], hydra=True)
    assert cfg.hydra.run.dir == "outputs/fig1b/dataset=synthetic,m=0.5"
    assert cfg.hydra.sweep.dir == "outputs/fig1b"
    assert cfg.hydra.sweep.subdir == "dataset=synthetic,m=0.5"
    assert compose([], hydra=True).hydra.run.dir == "outputs/default/defaults"
    assert compose(["model=dnn"], hydra=True).hydra.run.dir == "outputs/default/model=dnn"


@pytest.mark.parametrize("argv,expected", [
    (["+experiment=fig1b", "-m", "m=0.5,1,5,20"], ["-m", "+experiment=fig1b", "m=0.5,1,5,20"]),
    (["a=1", "--cfg", "job", "b=2"], ["--cfg", "job", "a=1", "b=2"]),
    (["a=1", "-cn", "other", "--info", "b=2"], ["-cn", "other", "--info", "a=1", "b=2"]),
    (["a=1", "--info", "defaults"], ["--info", "defaults", "a=1"]),
    (["--config-name=other", "a=1", "--multirun"], ["--config-name=other", "--multirun", "a=1"]),
    (["a=1", "~b", "+c=2"], ["a=1", "~b", "+c=2"]),
])
def test_reorder_argv_puts_hydra_flags_first(argv, expected):
    assert reorder_argv(argv) == expected


@pytest.mark.parametrize("m", [0, -1, "nan", "abc", True])
def test_validate_rejects_bad_m(compose, m):
    cfg = compose()
    cfg.m = m
    with pytest.raises(ConfigError, match=r"\bm\b"):
        validate(cfg)


def test_validate_casts_m_to_float_and_names_bad_model_fields(compose):
    cfg = compose(["m=5"])
    validate(cfg)
    assert cfg.m == 5.0 and isinstance(cfg.m, float)
    with pytest.raises(ConfigError, match="width"):
        validate(compose(["model.width=0"]))
    with pytest.raises(ConfigError, match="depth"):
        validate(compose(["model=cnn", "model.size=null"]))


@pytest.mark.parametrize("overrides,anderson", [
    (["model=mon_fc"], 0), (["model=mon_conv"], 5), (["model=mon_multiconv"], 5), (["+experiment=fig2"], 5),
    (["model=mon_conv", "splitting=fb"], 5), (["model=dnn"], 0), (["model=cnn"], 0),
    (["model=mon_conv", "splitting.anderson=0"], 0), (["model=mon_conv", "model.anderson=0"], 0),
    (["model=mon_fc", "splitting.anderson=5"], 5)])
def test_anderson_is_the_model_familys_default_unless_set(compose, overrides, anderson):
    cfg = compose(overrides)
    validate(cfg)
    assert cfg.splitting.anderson == anderson


def test_a_bad_family_default_of_anderson_is_named(compose):
    with pytest.raises(ConfigError, match=r"model\.anderson=1: allowed: 0 \(off\) or a history size >= 2"):
        validate(compose(["model=mon_conv", "model.anderson=1"]))


# --- the project's set-up files agree with each other --------------------------

def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = str(line).split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not pinned with ==: {line}"
            pins[name.lower()] = version
    return pins


def test_requirements_are_pinned_and_mirrored_by_environment_yml():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == req
    assert {"torch", "torchvision", "lightning", "hydra-core", "omegaconf", "wandb", "mlxtend"} <= set(req)
    assert req["omegaconf"].startswith("2.3")  # hydra-core 1.3 needs omegaconf < 2.4


def test_readme_opens_with_the_two_commands_and_ci_runs_the_readme_test_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:\w+)?\n(.*?)```", readme, re.S).group(1).split("\n")
    assert [line for line in first_block if line.strip()] == ["make demo", "make test"]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith("set ") and not line.startswith("cd ")]
    assert ci == ["make test", "make test-slow"]
    assert "`make test-slow`" in readme
