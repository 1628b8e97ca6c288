"""Bad inputs to every app, as a user types them: one `error: ...` line naming the culprit, exit status 1,
no traceback, and nothing written (refused before any data is read or any model trained)."""
from __future__ import annotations

import struct

import pytest
import torch

from src.models import build_model


def _files(tmp_path):
    """The bad files the table refers to, by name."""
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4)}}, good)
    blob = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    (tmp_path / "folder.ckpt").mkdir()
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 3), ("t10k", 2)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 784))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(n))
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (cifar / name).write_bytes(b"\x80\x04 damaged")
    short = raw / "train-images-idx3-ubyte"
    short.write_bytes(short.read_bytes()[:-100])
    # weights of the original code's layout (no recorded settings) of mon_fc width 40 for synthetic data
    weights = build_model({"name": "mon_fc", "width": 40}, 1.0, {}, (1, 28, 28), 10).state_dict()
    torch.save(weights, tmp_path / "width40.pt")
    torch.save({**weights, "Wout.weight": weights["Wout.weight"].index_fill(1, torch.tensor([7]), float("inf"))},
               tmp_path / "inf.pt")


# Configuration rules: checked in-process, as every job is before Hydra starts one (src/cli.py check_job)
RULE_CASES = [
    ("run", ["m=nan"], "m=nan: allowed: a number > 0"),
    ("run", ["optim.lr=abc"], "optim.lr='abc'"),
    ("run", ["optim.schedule=foo"], "optim.schedule='foo': allowed: one of step, onecycle, none"),
    ("run", ["dataset.std=[0]"], "dataset.std=[0]"),
    ("run", ["splitting.anderson=1"], "splitting.anderson=1"),
    ("run", ["splitting.on_nonconvergence=maybe"], "splitting.on_nonconvergence='maybe'"),
    ("run", ["+trainer.precision=bf16-mixed"], "trainer.precision='bf16-mixed'"),
    ("run", ["trainer=ddp", "trainer.strategy=ddp_spawn"], "trainer.strategy='ddp_spawn'"),
    ("run", ["+trainer.max_epoch=3"], "trainer.max_epoch: unknown key"),
    ("run", ["protocol=margin", "protocol.threshold=2"], "protocol.threshold=2"),
    ("run", ["model.width=0"], "model.width=0"),
    ("run", ["dataset.batch_size=0"], "dataset.batch_size=0"),
    ("run", ["seed=abc"], "seed='abc'"),
    ("run", ["splitting.alpha=0"], "splitting.alpha=0"),
    ("run", ["splitting.fwd_tol=-1"], "splitting.fwd_tol=-1"),
    ("run", ["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0"),
    ("run", ["protocol=margin", "protocol.threshold=0.1", "protocol.n_train=0"], "protocol.n_train=0"),
    ("bound", ["generalization.delta=2"], "generalization.delta=2: allowed: a number > 0 and < 1"),
    ("bound", ["m=0"], "m=0"),
    ("bound", ["generalization.gamma=-1"], "generalization.gamma=-1"),
    ("bound", ["bound.lower_points=0"], "bound.lower_points=0"),
    ("bench", ["bench.bounds=[theorem7]"], "bench.bounds=['theorem7']"),
    ("robustness", ["robustness.n_test=0"], "robustness.n_test=0"),
    ("robustness", ["certify.lipschitz=[[1,2]]"], "certify.lipschitz=[[1, 2]]"),
    ("robustness", ["robustness.pgd.steps=0"], "robustness.pgd.steps=0"),
    ("bench", ["bench.batch=0"], "bench.batch=0: allowed: a whole number >= 1"),
    ("robustness", ["certify.eps=-0.1"], "certify.eps=-0.1"),
    ("robustness", ["robustness.methods=[fgsm]"], "robustness.methods=['fgsm']"),
    ("robustness", ["certify.lipschitz=-1"], "certify.lipschitz=-1"),
    ("run", ["seed=4294967296"], "seed=4294967296: allowed: a whole number >= 0 and <= 4294967295"),
    # a model's keys by the rules declared with it (src/models.py)
    ("run", ["model=mon_conv", "model.channels=[2,3]"], "model.channels=[2, 3]: allowed: a whole number >= 1"),
    ("run", ["model=mon_multiconv", "model.channels=[4,0]"], "model.channels=[4, 0]: allowed: a list (one per tier) "
                                                              "of a whole number >= 1"),
    ("run", ["model=mon_fc", "+model.channels=3"], "model.channels: not a key of model mon_fc; its keys: width, "
                                                   "anderson"),
    ("run", ["model=cnn", "model.size=xl"], "model.size='xl': allowed: one of sm, med, lg, or null"),
    ("run", ["splitting.name=broyden"], "splitting.name='broyden': allowed: one of fb, pr"),  # and any registered
    # a certificate that does not apply to the model (src/certify/registry.py)
    ("robustness", ["model=dnn", "certify.bound=local"], "certify.bound=local: does not apply to model dnn"),
]

# The exit path, as a user meets it: one rule per app, and every refusal of a file, a dataset, a sweep,
# a deletion, an interpolation, a run dir, a solve
CASES = [
    ("run", ["m=inf"], "m=inf: allowed: a number > 0"),
    ("run", ["dataset=mnist", "dataset.root={tmp}/mnist", "dataset.download=false"],
     "train-images-idx3-ubyte: 2268 bytes, but its header declares 3 x 28 x 28 items (2368 bytes): truncated"),
    ("run", ["ckpt={tmp}/notes.ckpt"], "notes.ckpt is not a PyTorch checkpoint"),
    ("robustness", ["-m", "dataset=mnist5k,nope"],
     "dataset=mnist5k,nope: conf/dataset/ holds no 'nope'; allowed: cifar10, fashion_mnist, mnist, mnist5k, synthetic"),
    ("run", ["-m", "trainer=ddp", "m=1,2"], "trainer.devices=2 with -m and hydra/launcher=basic"),
    ("run", ["dataset=cifar10", "dataset.root={tmp}/cifar", "dataset.download=false"],
     "cifar-10-batches-py are present but unreadable"),
    # the first training step's solve stops after one iteration: refused, and no checkpoint is left
    ("run", ["splitting.on_nonconvergence=error", "splitting.fwd_max_iter=1"],
     "samples in 1 iterations: relative residual"),
    ("bound", ["bound.methods=[theorem9]"], "bound.methods=['theorem9']"),
    ("bound", ["ckpt={tmp}/folder.ckpt"], "folder.ckpt is a directory"),
    ("bound", ["ckpt={tmp}/truncated.ckpt"], "truncated.ckpt is truncated or damaged"),
    ("bound", ["ckpt={tmp}/notes.ckpt"], "notes.ckpt is not a PyTorch checkpoint"),
    ("bound", ["ckpt={tmp}/absent.ckpt"], "absent.ckpt does not exist"),
    ("bound", [], "model.ckpt does not exist: train the model first"),
    ("bound", ["ckpt={tmp}/width40.pt", "m=1", "model.width=41"],
     "width40.pt: mon.operator.U.weight has shape [40, 784] in the checkpoint but [41, 784] in the configured "
     "model: set model.width=40 (now 41), as the checkpoint was trained"),
    ("bound", ["ckpt={tmp}/inf.pt", "m=1"], "the checkpoint's Wout.weight holds 10 Inf or NaN values of 400"),
    ("bench", ["bench.reps=0"], "bench.reps=0"),
    ("robustness", ["certify.rule=loose"], "certify.rule='loose'"),
    ("robustness", ["ckpt={tmp}/truncated.ckpt"], "truncated.ckpt is truncated or damaged"),
    # refused by the check of every job before Hydra starts one (src/cli.py Checks)
    ("run", ["~m"], "~m: a key cannot be deleted (every app reads m); set it instead: m=VALUE"),
    ("run", ["m=${nope}"], "m: Interpolation key 'nope' not found"),
    ("run", ["hydra.run.dir={tmp}/good.ckpt"], "good.ckpt is a file, not a directory"),
    ("bound", ["hydra.run.dir={tmp}/good.ckpt/run"], "good.ckpt) is a file, not a directory"),
]


@pytest.mark.parametrize("app,args,needle", RULE_CASES, ids=[f"{a}:{' '.join(x)}" for a, x, _ in RULE_CASES])
def test_a_bad_value_is_refused_before_any_work(compose, tiny, app, args, needle):
    from src.cli import check_job
    from src.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check_job(compose([*tiny, "logger=none", *args], config_name="config" if app == "run" else app, hydra=True))
    assert needle in str(err.value)


@pytest.mark.parametrize("app,args,needle", CASES, ids=[f"{a}:{' '.join(x)}" for a, x, _ in CASES])
def test_bad_input_ends_as_one_error_line(run_app, tmp_path, tiny, app, args, needle):
    _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_app(app, *tiny, "logger=none", *argv, timeout=120)
    assert_one_error_line(proc, needle)
    assert not list(tmp_path.glob("outputs/**/*.json")) and not list(tmp_path.glob("outputs/**/model.ckpt"))


def assert_one_error_line(proc, needle: str) -> None:
    """Exit status 1, no traceback, and the last line the only `error: ` line, holding `needle`."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "UserWarning: Callback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, proc.stderr[-2000:]


@pytest.mark.parametrize("env,needle", [
    ({"WANDB_MODE": "onlne"}, "WANDB_MODE='onlne': allowed: one of online, offline, disabled"),
    ({"WANDB_MODE": "online", "WANDB_API_KEY": None, "NETRC": "{tmp}/no-netrc"}, "wandb mode 'online' needs an API key"),
])
def test_wandb_settings_that_would_fail_at_the_first_log_end_as_one_line(run_app, tmp_path, tiny, env, needle):
    proc = run_app("run", *tiny, "logger=wandb", env={k: v and v.replace("{tmp}", str(tmp_path)) for k, v in env.items()},
                   timeout=120)
    assert_one_error_line(proc, needle)
    assert not (tmp_path / "outputs").exists()


def test_an_online_wandb_run_needs_a_key_that_wandb_finds_without_asking(compose, monkeypatch, tmp_path):
    from src.cli import validate
    from src.errors import ConfigError

    netrc = tmp_path / "netrc"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_MODE", "offline")
    validate(compose(["logger=wandb"]))
    with pytest.raises(ConfigError, match="wandb mode 'online' needs an API key"):
        validate(compose(["logger=wandb", "logger.mode=online"]))  # the config's mode wins over WANDB_MODE
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="wandb mode 'online' needs an API key"):
        validate(compose(["logger=wandb"]))
    validate(compose(["logger=csv"]))  # no wandb: nothing to log in to
    netrc.write_text("machine api.wandb.ai login user password " + "0" * 40 + "\n")  # as `wandb login` leaves it
    validate(compose(["logger=wandb"]))
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    validate(compose(["logger=wandb"]))


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_with_one_bad_value_runs_no_job(run_app, tmp_path, tiny, launcher):
    proc = run_app("run", *tiny, "logger=none", f"hydra/launcher={launcher}", "-m", "m=1,2,0", timeout=120)
    assert_one_error_line(proc, "m=0: allowed: a number > 0")
    assert not (tmp_path / "outputs").exists()  # not even the sweep's dir


def test_plot_of_a_missing_runs_dir_is_an_error(run_app, tmp_path):
    proc = run_app("plot", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 1 and "error: --runs: no such directory" in proc.stderr
    assert not (tmp_path / "out").exists()
