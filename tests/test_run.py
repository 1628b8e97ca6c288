"""The training app: the fig1b command as typed, run dirs, metrics.json, errors, resume, determinism."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from src import provenance
from src.cli import validate
from src.errors import ConfigError
from src.lit import LitClassifier
from src.run import finished_step, train

METRIC_KEYS = {"test_error", "train_error", "margin_error", "epochs", "seconds", "fwd_iters", "bwd_iters",
               "m", "model", "dataset", "profile"}


def train_in(compose, run_dir: Path, *overrides: str) -> dict:
    cfg = compose(list(overrides))
    validate(cfg)
    return train(cfg, run_dir)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "seconds"}


def csv_epochs(run_dir: Path) -> dict[str, set[int]]:
    """Per CSV-logger version (one per invocation), the epochs it logged training steps for."""
    out = {}
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            out[path.parent.name] = {int(r["epoch"]) for r in csv.DictReader(f) if r.get("train/loss")}
    return out


@pytest.mark.slow
def test_fig1b_sweep_as_typed_writes_one_run_dir_per_m(run_app, tmp_path, tiny):
    proc = run_app("run", "+experiment=fig1b", "-m", "m=0.5,1,5,20", *tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "fig1b").glob("*/metrics.json"))
    names = {p.parent.name for p in runs}
    assert names == {f"dataset=synthetic,m={m},profile=tiny" for m in ("0.5", "1", "5", "20")}
    for path in runs:
        metrics = json.loads(path.read_text())
        assert METRIC_KEYS <= set(metrics)
        assert isinstance(metrics["m"], float) and f"m={metrics['m']:g}," in path.parent.name
        assert all(0 <= metrics[k] <= 1 for k in ("test_error", "train_error", "margin_error"))
        assert metrics["epochs"] == 1 and metrics["fwd_iters"] > 0 and metrics["bwd_iters"] > 0
        solves = metrics["convergence"]
        assert solves["training"]["forward"]["solves"] == solves["training"]["backward"]["solves"] == 2
        assert solves["evaluation"]["forward"]["solves"] >= 2 and solves["evaluation"]["backward"]["solves"] == 0
        assert (metrics["model"], metrics["dataset"], metrics["profile"]) == (
            {"name": "mon_fc", "width": 40, "anderson": 0}, "synthetic", "tiny")
        assert (path.parent / "model.ckpt").is_file()
        assert (path.parent / ".hydra" / "run" / "config.yaml").is_file() and (path.parent / "run.log").is_file()
        # then: [bound] of the experiment: what Figure 1b reads, from the same command
        bounds = json.loads((path.parent / "bounds.json").read_text())
        assert set(bounds["upper"]) == {"theorem1", "sdp_diag"} and set(bounds["lower"]) == {"grad_norm"}
        assert (path.parent / ".hydra" / "bound" / "config.yaml").is_file()


def test_an_experiment_bounds_its_model_after_training(run_app, tmp_path, tiny):
    """`then: [bound]` (fig1b's): src.bound on the run dir after training, with the command's overrides."""
    run_dir = tmp_path / "run"
    proc = run_app("run", "+experiment=fig1b", "m=5", *tiny, "logger=none", "bound.methods=[theorem1]",
                   "++bound.test_error=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run_dir / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    U, W_out = state["model.mon.operator.U.weight"].double(), state["model.Wout.weight"].double()
    expected = float(torch.linalg.matrix_norm(W_out, ord=2) * torch.linalg.matrix_norm(U, ord=2) / 5)
    bounds = json.loads((run_dir / "bounds.json").read_text())
    assert bounds["upper"] == {"theorem1": pytest.approx(expected, rel=1e-6)} and "test_error" not in bounds
    assert "theorem1" in (run_dir / ".hydra" / "bound" / "config.yaml").read_text()
    assert "then:\n- bound" in (run_dir / ".hydra" / "run" / "config.yaml").read_text()


def test_a_follower_that_cannot_take_the_overrides_is_refused_before_training(run_app, tmp_path, tiny):
    run_dir = tmp_path / "run"
    proc = run_app("run", *tiny, "logger=none", "then=[bound]", "+bound.test_error=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: then=[bound]: src.bound's config does not take these overrides" in proc.stderr
    assert "++KEY=VALUE" in proc.stderr and not run_dir.exists()


def test_only_src_run_composes_its_followers(run_app, tmp_path, tiny):
    """The ladder's `then: [bound, robustness]` is src.run's: src.robustness of the same overlay takes its own
    keys, which src.bound's config lacks (the pipeline's robustness_ladder stage)."""
    proc = run_app("robustness", "+experiment=ladder", *tiny, "logger=none", "robustness.progress=false",
                   f"hydra.run.dir={tmp_path / 'run'}")
    assert "then=[bound]" not in proc.stderr and "model.ckpt does not exist" in proc.stderr, proc.stderr[-3000:]


def test_a_run_refused_inside_its_job_leaves_no_run_dir(run_app, tmp_path):
    """The dataset is read inside the job, after Hydra made the run dir: the refusal removes it again."""
    run_dir = tmp_path / "run"
    proc = run_app("run", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false",
                   "profile=tiny", "logger=none", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1 and "error: dataset mnist: files not found" in proc.stderr, proc.stderr[-3000:]
    assert "dataset=mnist5k profile=smoke" in proc.stderr and not run_dir.exists()


@pytest.mark.parametrize("overrides,needle", [
    (["model=nope"], "model=nope: conf/model/ holds no 'nope'; allowed: cnn, dnn, mon_conv, mon_fc, mon_multiconv"),
    (["+experiment=fig1b", "dataset=mnist5k,fashion_mnist,nope"], "holds no 'nope'"),  # a sweep's every value
    (["dataset=choice(mnist5k,nope)"], "holds no 'nope'"),
    (["callbacks=[default,nope]"], "conf/callbacks/ holds no 'nope'"),
])
def test_an_unknown_group_choice_is_refused_in_one_line_before_hydra(overrides, needle):
    from src.cli import check_group_choices

    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_group_choices(overrides)


@pytest.mark.parametrize("overrides", [["model=dnn", "-m", "dataset=mnist5k,synthetic"], ["dataset=${x}"],
                                       ["dataset=null"], ["~dataset"], ["hydra/launcher=joblib"], ["model.width=3"],
                                       ["m=range(1,3)"], ["callbacks=default"]])
def test_group_choices_that_exist_or_are_hydras_pass(overrides):
    from src.cli import check_group_choices

    check_group_choices([o for o in overrides if o != "-m"])


@pytest.mark.parametrize("override,needle", [
    ("model=nope", "model/nope"),          # Hydra's own refusal, when composing in-process
    ("modle.width=3", "modle"),            # unknown key (struct mode)
    ("model.widht=3", "widht"),
])
def test_an_unknown_option_or_key_is_refused_by_hydra_naming_it(compose, tiny, override, needle):
    """Hydra's own refusals, at composition (the values' rules: tests/test_bad_inputs.py)."""
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match=re.escape(needle)):
        compose([*tiny, override])


@pytest.mark.slow
def test_hydra_run_dir_is_accepted_and_a_finished_run_only_reevaluates(run_app, tmp_path, tiny):
    run_dir = tmp_path / "mine"
    procs = [run_app("run", *tiny, "logger=csv", "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}")
             for _ in range(2)]
    assert all(proc.returncode == 0 for proc in procs), procs[-1].stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert csv_epochs(run_dir) == {"version_0": {0}, "version_1": set()}  # nothing retrained
    assert not (tmp_path / "outputs").exists()
    # the console's lines are in run.log too: the epoch line (no progress bar) and the result
    log = (run_dir / "run.log").read_text()
    for line in ("epoch 1/1: train_loss", json.dumps({"m": 1.0, "test_error": metrics["test_error"]})[:-1]):
        assert line in procs[0].stdout and line in log, (line, procs[0].stdout[-2000:])


def test_resume_after_interruption_continues_where_it_stopped(compose, tmp_path, tiny):
    """A run stopped after epoch 1 and restarted ends exactly where an uninterrupted run does."""
    common = [*tiny, "logger=csv", "trainer.log_every_n_steps=1"]
    straight = train_in(compose, tmp_path / "straight", *common, "trainer.max_epochs=2")
    train_in(compose, tmp_path / "resumed", *common, "trainer.max_epochs=1")  # "interrupted" after epoch 1
    resumed = train_in(compose, tmp_path / "resumed", *common, "trainer.max_epochs=2")
    assert resumed["epochs"] == 2
    assert csv_epochs(tmp_path / "resumed") == {"version_0": {0}, "version_1": {1}}  # epoch 0 not redone
    assert without_time(resumed) == without_time(straight)
    a = torch.load(tmp_path / "straight" / "model.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_training_is_told_from_one_that_trains_on(compose, tmp_path, tiny):
    """finished_step decides whether a re-run logs again: over at max_epochs, not when a run is extended."""
    train_in(compose, tmp_path, *tiny, "logger=none", "trainer.max_epochs=1")
    last = str(tmp_path / "last.ckpt")
    step = torch.load(last, weights_only=True)["global_step"]
    assert step > 0 and finished_step(last, {"max_epochs": 1}) == step
    assert finished_step(last, {"max_epochs": 2}) is None and finished_step(None, {"max_epochs": 1}) is None
    assert finished_step(last, {"max_epochs": 2, "max_steps": step}) == step
    bare = tmp_path / "bare.ckpt"  # hyperparameters but no loop state: it cannot tell, so not finished
    torch.save({"hyper_parameters": {}, "state_dict": {}}, bare)
    assert finished_step(str(bare), {"max_epochs": 1}) is None


def test_a_run_dir_of_other_settings_is_not_resumed(compose, tmp_path, tiny):
    train_in(compose, tmp_path, *tiny, "logger=none", "m=1")
    with pytest.raises(ConfigError, match=r"other settings \(m: 1.0 recorded, 2.0 now\)"):
        train_in(compose, tmp_path, *tiny, "logger=none", "m=2")
    train_in(compose, tmp_path, *tiny, "logger=none", "m=1", "dataset.num_workers=1")  # where, not what


def test_a_finished_run_given_again_keeps_its_model_ckpt_byte_for_byte(compose, tmp_path, tiny):
    """src.bound and src.robustness key their results by the checkpoint's sha256: a re-run that trains
    nothing must not make the same model another checkpoint."""
    args = [*tiny, "logger=none"]
    train_in(compose, tmp_path, *args)
    first = provenance.sha256(tmp_path / "model.ckpt")
    train_in(compose, tmp_path, *args)
    assert provenance.sha256(tmp_path / "model.ckpt") == first
    train_in(compose, tmp_path, *args, "trainer.max_epochs=2")  # one more epoch: another model, another file
    assert provenance.sha256(tmp_path / "model.ckpt") != first


def test_a_refused_run_leaves_the_saved_config_of_the_run_that_made_the_dir(run_app, tmp_path, tiny):
    run_dir = tmp_path / "run"
    first = run_app("run", *tiny, "logger=none", "m=1", f"hydra.run.dir={run_dir}", timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = {p.name: p.read_text() for p in (run_dir / ".hydra" / "run").iterdir()}
    assert set(saved) == {"config.yaml", "hydra.yaml", "overrides.yaml"} and "m: 1.0" in saved["config.yaml"]
    refused = run_app("run", *tiny, "logger=none", "m=2", f"hydra.run.dir={run_dir}", timeout=300)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "error: " in refused.stderr and "other settings (m: 1.0 recorded, 2.0 now)" in refused.stderr
    assert {p.name: p.read_text() for p in (run_dir / ".hydra" / "run").iterdir()} == saved


def test_same_seed_gives_the_same_metrics(compose, tmp_path, tiny):
    args = [*tiny, "logger=none", "trainer.max_epochs=2"]
    first = train_in(compose, tmp_path / "a", *args)
    second = train_in(compose, tmp_path / "b", *args)
    other = train_in(compose, tmp_path / "c", *args, "seed=1")
    assert without_time(first) == without_time(second)
    assert without_time(first) != without_time(other)  # the comparison can fail


@pytest.mark.parametrize("overrides", [
    ["optim.schedule=onecycle", "splitting.tune_alpha=true"],
    ["optim.schedule=none", "splitting=fb"],
    ["model=dnn"],
    ["model=cnn", "model.size=null", "model.depth=2"],
])
def test_schedules_splittings_and_baselines_train(compose, tmp_path, tiny, overrides):
    metrics = train_in(compose, tmp_path, *tiny, "logger=none", *overrides)
    assert 0 <= metrics["test_error"] <= 1
    is_mondeq = not any(o.startswith("model=") for o in overrides)
    assert (metrics["fwd_iters"] is not None) == is_mondeq


def test_checkpoint_rebuilds_the_network_from_itself(compose, tmp_path, tiny):
    train_in(compose, tmp_path, *tiny, "logger=none", "m=5")
    lit = LitClassifier.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)
    assert lit.hparams.m == 5.0 and lit.hparams.model == {"name": "mon_fc", "width": 40, "anderson": 0}
    state = torch.load(tmp_path / "model.ckpt", weights_only=True)["state_dict"]
    assert "model.mon.operator.U.weight" in state and "model.Wout.weight" in state
    assert all(torch.equal(v, state[k]) for k, v in lit.state_dict().items())
    lit.eval()
    with torch.no_grad():
        assert lit(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.slow
def test_wandb_is_offline_by_default_one_run_per_job(run_app, tmp_path, tiny):
    proc = run_app("run", "-m", "m=1,2", *tiny, env={"WANDB_MODE": None, "WANDB_API_KEY": None})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "outputs" / "default").glob("*/wandb/offline-run-*"))
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep_in_parallel(run_app, tmp_path, tiny):
    proc = run_app("run", "-m", "m=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "logger=none", *tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "outputs" / "default").glob("*/metrics.json"))) == 2

