"""`python -m src.bench` on tiny models: what it records, never how fast."""
import pytest
import torch

from src import bench
from src.errors import CheckpointError
from src.models import build_model

TINY = ["model=mon_fc", "model.width=8", "dataset=synthetic", "dataset.in_shape=[1,6,6]", "bench.device=cpu"]


def test_solver_benchmark_records_converged_solves(compose):
    cfg = compose(TINY + ["bench.batch=4", "bench.reps=1", "bench.warmup=0", "splitting.anderson=3"],
                  config_name="bench")
    record = bench.run(cfg)
    assert record["fwd_ms"] > 0 and record["step_ms"] > 0 and record["anderson"] == 3
    assert record["fwd_iters"] > 0 and record["residual"] <= cfg.splitting.fwd_tol
    assert record["bwd_iters"] > 0 and record["bwd_residual"] <= cfg.splitting.bwd_tol


@pytest.mark.parametrize("model", ["mon_fc", "mon_conv"])
def test_the_frozen_weight_record_builds_no_operator_inside_the_attack(compose, model):
    """bench.frozen: a PGD step and a certification pass; after the warm-up the attack's solves reuse the
    resolvent (no build), the float64 certification pass builds its own (W for FC, and the resolvent)."""
    shape = ["model.width=8"] if model == "mon_fc" else ["model.channels=2"]
    cfg = compose([f"model={model}", *shape, "dataset=synthetic", "dataset.in_shape=[1,6,6]", "bench.device=cpu",
                   "bench.batch=3", "bench.reps=1", "bench.warmup=0", "bench.frozen=true", "bench.pgd_steps=2"],
                  config_name="bench")
    record = bench.run(cfg)
    assert record["pgd_step_ms"] > 0 and record["pgd_builds"] == 0 and record["pgd_build_share"] == 0
    assert record["certify_pass_ms"] > 0 and record["certify_builds"] >= 1
    assert 0 < record["certify_build_share"] < 1


def test_bound_benchmark_reports_the_bound_apps_values(compose):
    cfg = compose(TINY + ["bench.bounds=[theorem1,grad_norm]", "bench.batch=64", "bound.ascent_steps=2"],
                  config_name="bench")
    record = bench.run(cfg)
    torch.manual_seed(cfg.seed)  # the model bench builds
    model = build_model(cfg.model, cfg.m, cfg.splitting, (1, 6, 6), cfg.dataset.num_classes)
    op = model.mon.operator  # Theorem 1 by hand: ||W_out|| ||U|| / m
    by_hand = (torch.linalg.matrix_norm(model.Wout.weight.double(), 2) * torch.linalg.matrix_norm(
        op.U.weight.double(), 2) / cfg.m).item()
    assert record["theorem1"]["value"] == pytest.approx(by_hand, rel=1e-12)
    assert 0 < record["grad_norm"]["value"] <= record["theorem1"]["value"]
    assert record["grad_norm"]["seconds"] > 0 and record["grad_norm"]["failed"] is None


def test_anderson_side_by_side_on_a_trained_model_and_real_test_images(compose, tmp_path, tiny):
    from src.cli import validate
    from src.evaluation import test_error
    from src.lit import LitClassifier
    from src.data import load_splits, normalise
    from src.run import train

    cfg = compose([*tiny, "logger=none", "splitting=pr"])
    validate(cfg)
    train(cfg, tmp_path)
    ckpt = tmp_path / "model.ckpt"
    args = ["dataset=synthetic", "splitting=pr", "bench.device=cpu", "bench.batch=50", "bench.images=100",
            "bench.anderson=[0,5]", f"ckpt={ckpt}", "splitting.fwd_tol=1e-6", "splitting.fwd_max_iter=2000"]
    with pytest.raises(CheckpointError, match=r"m: 20.0 given, 1.0 recorded|m: .*20"):
        bench.run(compose(args, config_name="bench"))  # bench's own m=20: not the model's
    bench_cfg = compose(args + ["m=1"], config_name="bench")
    validate(bench_cfg)
    plain, accelerated = bench.run(bench_cfg)["anderson"]
    assert (plain["anderson"], accelerated["anderson"]) == (0, 5) and plain["images"] == 100
    # the same equilibria (tolerance 1e-6), so the predictions of the model evaluated directly
    model = LitClassifier.load_from_checkpoint(ckpt, weights_only=True, splitting=dict(bench_cfg.splitting)).model.eval()
    _, test = load_splits(bench_cfg.dataset)
    x = normalise(test, bench_cfg.dataset.mean, bench_cfg.dataset.std)[:100]
    assert plain["test_error"] == accelerated["test_error"] == test_error(model, x, test.labels[:100])
    # counted per sample: the batch's residual stops a solve at 1e-6, single samples may stay above it
    assert plain["solves"] == accelerated["solves"] == 2 and plain["samples"] == accelerated["samples"] == 100
    assert all(r["fwd_iters"] > 0 and r["step_ms"] > 0 for r in (plain, accelerated))
    assert all((r["converged_fraction"] == 1.0) == (r["worst_residual"] <= 1e-6) for r in (plain, accelerated))


def test_the_bench_dir_is_named_by_the_overrides_that_name_a_run():
    """A long bench command once gave a dir named by its sorted characters (too long a name: a crash)."""
    from hydra import compose, initialize_config_dir

    from src.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("bench", overrides=["model=mon_fc", "m=20", "dataset=mnist5k", "bench.exact=[linf]",
                                          "bench.batch=100", "bench.exact_eps.linf=[0.05]"],
                      return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/bench/dataset=mnist5k,m=20,model=mon_fc"
