"""src/schema.py: every key of every composed config has a rule, and the rules refuse what no app can use."""
from __future__ import annotations

import os

import pytest

from src import schema
from src.cli import CONF_DIR, validate
from src.errors import ConfigError

APPS = ("config", "bound", "robustness", "bench")
GROUPS = ("dataset", "model", "splitting", "trainer", "callbacks", "logger", "profile", "protocol")


def _options(group: str) -> list[str]:
    return sorted(f[:-5] for f in os.listdir(os.path.join(CONF_DIR, group)) if f.endswith(".yaml"))


COMPOSITIONS = ([(app, f"{g}={o}") for app in APPS for g in GROUPS for o in _options(g)]
                + [(app, f"+experiment={e}") for app in APPS for e in _options("experiment")])


@pytest.mark.parametrize("app,override", COMPOSITIONS)
def test_every_composed_config_passes_and_every_key_is_declared(compose, app, override):
    cfg = compose([override], config_name=app)
    keys = [key for key, _ in schema._leaves(cfg)]
    assert keys and all(schema.declaration(k) is not None for k in keys), [
        k for k in keys if not schema.declaration(k)]
    validate(cfg)


@pytest.mark.parametrize("app,override,needle", [
    ("config", "m=inf", "m=inf: allowed: a number > 0"),
    ("config", "m=-0.5", "m=-0.5"),
    ("config", "optim.lr=abc", "optim.lr='abc': allowed: a number > 0"),
    ("config", "optim.schedule=foo", "optim.schedule='foo': allowed: one of step, onecycle, none"),
    ("config", "optim.gamma=1.5", "optim.gamma=1.5"),
    ("config", "optim.epochs=2.5", "optim.epochs=2.5: allowed: a whole number >= 1"),
    ("config", "dataset.std=[0]", "dataset.std=[0]: allowed: a list (one per channel) of a number > 0"),
    ("config", "dataset.mean=[0.1,0.2]", "dataset.mean=[0.1, 0.2]"),
    ("config", "seed=-1", "seed=-1"),
    ("config", "seed=4294967296", "seed=4294967296: allowed: a whole number >= 0 and <= 4294967295"),  # numpy: 32 bits
    ("config", "m=${nope}", "m: Interpolation key 'nope' not found"),
    ("robustness", "robustness.n_test=${robustness.nope}", "robustness.n_test: Interpolation key 'robustness.nope'"),
    ("config", "splitting.anderson=1", "splitting.anderson=1: allowed: 0 (off) or a history size >= 2"),
    ("config", "splitting.fwd_tol=0", "splitting.fwd_tol=0"),
    ("config", "splitting.on_nonconvergence=ignore", "splitting.on_nonconvergence='ignore'"),
    ("config", "+trainer.precision=bf16-mixed", "trainer.precision='bf16-mixed'"),
    ("config", "trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("config", "protocol=margin protocol.threshold=null", "protocol=margin needs protocol.threshold"),
    ("config", "+dataset.colour=1", "dataset.colour: unknown key"),
    ("bound", "generalization.delta=2", "generalization.delta=2: allowed: a number > 0 and < 1"),
    ("bound", "bound.methods=[theorem9]", "bound.methods=['theorem9']"),
    ("bound", "bound.lower_points=0", "bound.lower_points=0"),
    ("bench", "bench.batch=0", "bench.batch=0: allowed: a whole number >= 1"),
    ("robustness", "certify.eps=-0.1", "certify.eps=-0.1: allowed: null (the dataset's grid) or a list of radii of a "
                                       "number >= 0"),
    ("robustness", "certify.rule=loose", "certify.rule='loose'"),
    ("robustness", "certify.lipschitz=-3", "certify.lipschitz=-3"),
    ("robustness", "certify.lipschitz=[[1,2]]", "certify.lipschitz=[[1, 2]]"),
    ("robustness", "certify.lipschitz=[[0,1],[1,0]]", "a 10 x 10 matrix"),  # mnist has 10 classes
    ("robustness", "certify.lipschitz=inf", "certify.lipschitz=inf"),
    ("robustness", "certify.bound=local certify.lipschitz=3", "not both"),
    ("robustness", "robustness.audit.restarts=0", "robustness.audit.restarts=0"),
    ("robustness", "certify.eps=[1e308]", "number >= 0 and <= 1000"),  # eps / std would overflow
    ("config", "dataset=synthetic dataset.n_test=100000000", "dataset.n_test=100000000"),
    ("robustness", "robustness.methods=[]", "robustness.methods=[]: allowed: a non-empty list"),
    ("robustness", "robustness.device=tpu", "robustness.device='tpu'"),
])
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(compose, app, override, needle):
    cfg = compose(override.split(), config_name=app)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)


@pytest.mark.parametrize("app,override,key,expected", [
    ("bound", "bound.methods=theorem1", "bound.methods", ["theorem1"]),
    ("robustness", "certify.bound=sdp_diag", "certify.bound", ["sdp_diag"]),
    ("robustness", "certify.eps=0.1", "certify.eps", [0.1]),
    ("robustness", "certify.rule=tight", "certify.rule", ["tight"]),
    ("config", "m=5", "m", 5.0),
    ("config", "optim.lr=1", "optim.lr", 1.0),
])
def test_bare_values_of_list_keys_become_lists_and_numbers_their_type(compose, app, override, key, expected):
    from omegaconf import OmegaConf

    cfg = compose([override], config_name=app)
    validate(cfg)
    value = OmegaConf.select(cfg, key)
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    assert value == expected and type(value) is type(expected)


def test_a_matrix_of_class_pair_constants_is_a_lipschitz_value(compose):
    matrix = "[" + ",".join("[" + ",".join("0" if i == j else "2" for j in range(10)) + "]" for i in range(10)) + "]"
    validate(compose([f"certify.lipschitz={matrix}"], config_name="robustness"))
    for bad in ("0", "-2"):  # a zero or negative constant off the diagonal, or an asymmetric matrix
        rows = [[bad if (i, j) == (0, 1) else ("0" if i == j else "2") for j in range(10)] for i in range(10)]
        wrong = "[" + ",".join("[" + ",".join(r) + "]" for r in rows) + "]"
        with pytest.raises(ConfigError, match="symmetric, > 0 off the diagonal"):
            validate(compose([f"certify.lipschitz={wrong}"], config_name="robustness"))


def test_trainer_keys_are_lightnings_arguments_or_refused(compose):
    validate(compose(["+trainer.gradient_clip_val=1.0"]))
    with pytest.raises(ConfigError, match=r"trainer.max_epoch: unknown key"):
        validate(compose(["+trainer.max_epoch=3"]))


def test_spawned_processes_are_refused(compose):
    # their test counts would stay in the spawned processes
    with pytest.raises(ConfigError, match="trainer.strategy='ddp_spawn': allowed: one of auto, ddp, "):
        validate(compose(["trainer=ddp", "trainer.strategy=ddp_spawn"]))


@pytest.mark.parametrize("preset,accelerator,devices", [("cpu", "cpu", 1), ("gpu", "gpu", 1), ("ddp", "auto", 2)])
def test_trainer_presets(compose, preset, accelerator, devices):
    cfg = compose([f"trainer={preset}"])
    validate(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.max_epochs) == (
        accelerator, devices, cfg.optim.epochs)


def test_every_config_group_is_declared():
    groups = {d for d in os.listdir(CONF_DIR) if os.path.isdir(os.path.join(CONF_DIR, d))}
    assert groups == set(schema.GROUPS)


def test_a_key_must_say_what_it_changes():
    from src import keys

    with pytest.raises(TypeError):
        keys.Key(keys.POSITIVE)  # no declaration of what it changes: refused
    with pytest.raises(ValueError, match="allowed"):
        keys.Key(keys.POSITIVE, {"weights"})


@pytest.mark.parametrize("overrides,name", [
    # the device count changes the examples per optimizer step: two counts never share a checkpoint
    (["trainer.devices=2", "trainer.accelerator=cpu"], "trainer.devices=2"),
    (["m=5", "+experiment=fig1b", "dataset=mnist5k", "logger=csv"], "dataset=mnist5k,m=5"),
    # post-training settings: the apps reading the checkpoint find it under the same command
    (["robustness.n_test=10", "certify.local.refine=2", "certify.eps=[0.1]"], "defaults"),
    # a cap a larger one continues, where the files are, how fast: the same run
    (["trainer.max_epochs=3", "dataset.root=/tmp", "dataset.test_batch_size=7"], "defaults"),
    (["seed=3", "optim.lr=0.1", "+trainer.gradient_clip_val=1.0"], "+trainer.gradient_clip_val=1.0,optim.lr=0.1,seed=3"),
])
def test_the_run_dir_is_named_by_what_changes_the_trained_model(compose, overrides, name):
    cfg = compose(overrides, config_name="robustness", hydra=True)
    assert cfg.hydra.run.dir.split("/")[-1] == name


def test_the_settings_of_a_result_are_the_keys_that_change_it(compose):
    from src import provenance
    from src.keys import ROBUSTNESS

    cfg = compose(["robustness.n_test=10", "model=dnn"], config_name="robustness")
    curves, bounds = provenance.settings(cfg, ROBUSTNESS), provenance.bound_settings(cfg, "lipsdp_neuron")
    assert curves["robustness"]["n_test"] == 10 and "audit" in curves["robustness"] and "batch_size" not in curves[
        "robustness"]
    assert "m" not in curves and "splitting" not in curves  # nothing to a feed-forward network
    assert "robustness" not in bounds and "generalization" not in bounds and "bound" not in bounds
    # a method's own keys count for its entries only: the lower bound's points never invalidate an SDP
    assert provenance.bound_settings(cfg, "grad_norm")["bound"].keys() == {"lower_points", "ascent_steps"}
    assert "generalization" in provenance.bound_settings(cfg, "generalization")
    assert curves["dataset"].keys() == bounds["dataset"].keys() and "root" not in curves["dataset"]
    mondeq = provenance.settings(compose(["model=mon_fc"], config_name="robustness"), ROBUSTNESS)
    assert mondeq["m"] == 1.0 and "on_nonconvergence" not in mondeq["splitting"] and "alpha" in mondeq["splitting"]


def test_a_recorded_class_pair_matrix_may_hold_failed_pairs_and_nothing_else_wrong():
    from src.schema import is_lipschitz_value

    ok = [[0.0, 2.0, None], [2.0, 0.0, 1.0], [None, 1.0, 0.0]]
    assert is_lipschitz_value(ok, 3, failed_pairs=True) and not is_lipschitz_value(ok, 3)
    assert not is_lipschitz_value([[0.0, 2.0, None], [2.0, 0.0, 1.0], [3.0, 1.0, 0.0]], 3, failed_pairs=True)
    assert not is_lipschitz_value([[0.0, -2.0], [-2.0, 0.0]], 2) and not is_lipschitz_value(ok, 4, True)
    assert all(not is_lipschitz_value(v, 3) for v in (-1.0, 0, float("nan"), float("inf"), "abc", None, True))
    assert is_lipschitz_value(3.5, 3)


def test_a_model_config_without_one_of_its_fields_is_refused(compose):
    """A conf file (not the command line: deletions are refused there) that leaves a field out."""
    from omegaconf import open_dict

    from src.models import build_model

    cfg = compose(["model=dnn"])
    with open_dict(cfg):
        del cfg.model["width"]
    with pytest.raises(ConfigError, match="model dnn needs model.width; its keys: depth, width"):
        schema.check(cfg)
    with pytest.raises(ConfigError, match="model dnn needs model.width"):
        build_model({"name": "dnn", "depth": 2}, None, None, (1, 4, 4), 10)

