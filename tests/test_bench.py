"""`python -m src.bench` on tiny models: what it records, never how fast."""
import torch

from src import bench
from src.bounds import mondeq as mondeq_bounds
from src.models import build_model

TINY = ["model=mon_fc", "model.width=8", "dataset=synthetic", "dataset.in_shape=[1,6,6]", "bench.device=cpu"]


def test_solver_benchmark_records_converged_solves(compose):
    cfg = compose(TINY + ["bench.batch=4", "bench.reps=1", "bench.warmup=0", "splitting.anderson=3"],
                  config_name="bench")
    record = bench.run(cfg)
    assert record["fwd_ms"] > 0 and record["step_ms"] > 0 and record["anderson"] == 3
    assert record["fwd_iters"] > 0 and record["residual"] <= cfg.splitting.fwd_tol
    assert record["bwd_iters"] > 0 and record["bwd_residual"] <= cfg.splitting.bwd_tol


def test_bound_benchmark_reports_the_bound_apps_values(compose):
    cfg = compose(TINY + ["bench.bounds=[theorem1,grad_norm]", "bench.batch=64", "bound.ascent_steps=2"],
                  config_name="bench")
    record = bench.run(cfg)
    torch.manual_seed(cfg.seed)  # the model bench builds
    model = build_model(cfg.model, cfg.m, cfg.splitting, (1, 6, 6), cfg.dataset.num_classes)
    assert record["theorem1"]["value"] == mondeq_bounds.theorem1(model)["value"]
    assert 0 < record["grad_norm"]["value"] <= record["theorem1"]["value"]
    assert record["grad_norm"]["seconds"] > 0 and record["grad_norm"]["failed"] is None
