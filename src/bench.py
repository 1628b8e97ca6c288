"""Performance benchmark of one configured model: `python -m src.bench`.

Prints one JSON line with median forward and training-step times, solver
iterations and residuals.  Never a test: speed targets live here and in notes.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import SolverError
from .evaluation import pick_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, reps: int, device: torch.device) -> float:
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def benchmark(model: torch.nn.Module, in_shape, batch: int, reps: int, device: torch.device,
              seed: int = 0, warmup: int = 2) -> dict:
    """Median forward (no grad) and training-step (forward + backward) times of `model`."""
    torch.manual_seed(seed)
    model = model.to(device)
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    @torch.no_grad()
    def forward():
        model(x)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    stats = {}
    for name, fn in (("fwd_ms", forward), ("step_ms", step)):
        for _ in range(warmup):
            fn()
        stats[name] = _median_ms(fn, reps, device)
        if hasattr(model, "solver_stats"):
            solver = model.solver_stats()
            if name == "fwd_ms":
                stats.update(fwd_iters=solver["fwd_iters"], residual=solver["fwd_residual"])
            else:
                stats.update(bwd_iters=solver["bwd_iters"], bwd_residual=solver["bwd_residual"])
    return stats


def time_frozen(model: torch.nn.Module, cfg, in_shape, device: torch.device) -> dict:
    """What users wait on after training, on frozen weights: an l2 PGD step (foolbox, the implicit
    gradient; `bench.pgd_steps` steps, per step) and a certification pass (the exact model's float64
    logits, src/certify/exact_model.py) on `bench.batch` random images, each with the seconds and count
    of the operator builds (resolvents, W) inside it: built once per weight version, not per solve."""
    from .attack import foolbox_model, make_attack, pgd
    from .certify.exact_model import ExactModel

    mean, std = list(cfg.dataset.mean), list(cfg.dataset.std)
    images = torch.rand(int(cfg.bench.batch), *in_shape, device=device)
    normalised = ((images - torch.tensor(mean, device=device).view(1, -1, 1, 1))
                  / torch.tensor(std, device=device).view(1, -1, 1, 1))
    model = model.to(device).eval()
    with torch.no_grad():
        labels = model(normalised).argmax(1)
    op = getattr(getattr(model, "mon", None), "operator", None)

    def timed(fn) -> tuple[float, int, float]:
        before = op.builds if op is not None else (0, 0.0)
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds = time.perf_counter() - start
        after = op.builds if op is not None else (0, 0.0)
        return seconds, after[0] - before[0], after[1] - before[1]

    steps = int(cfg.bench.pgd_steps)
    fmodel = foolbox_model(model, mean, std, device)
    pgd(fmodel, images, labels, 0.5, make_attack(steps=1))  # warm-up
    seconds, builds, building = timed(lambda: pgd(fmodel, images, labels, 0.5, make_attack(steps=steps)))
    record = {"pgd_step_ms": 1e3 * seconds / steps, "pgd_builds": builds,
              "pgd_build_share": building / seconds if seconds else None}
    exact = ExactModel(model, device)
    op = getattr(getattr(exact.net, "mon", None), "operator", None)
    seconds, builds, building = timed(lambda: exact.evaluate(normalised, int(cfg.bench.batch)))
    record.update(certify_pass_ms=1e3 * seconds, certify_builds=builds,
                  certify_build_share=building / seconds if seconds else None)
    return record


def time_bounds(model: torch.nn.Module, cfg, in_shape) -> dict:
    """Value and seconds of each of src.bound's methods `cfg.bench.bounds` on `model` (CPU).

    `bench.batch` random inputs, uniform in the data box, stand in for the test data
    (the empirical lower bound draws half its points from them).
    """
    from omegaconf import OmegaConf

    from .bounds.compute import compute_bounds

    g = torch.Generator().manual_seed(int(cfg.seed))
    mean = torch.tensor(list(cfg.dataset.mean)).view(-1, 1, 1)
    std = torch.tensor(list(cfg.dataset.std)).view(-1, 1, 1)
    x = (torch.rand(int(cfg.bench.batch), *in_shape, generator=g) - mean) / std
    y = torch.randint(0, int(cfg.dataset.num_classes), (len(x),), generator=g)
    bound_cfg = OmegaConf.merge(cfg, {"bound": {"methods": list(cfg.bench.bounds), "test_error": False}})
    found = compute_bounds(model, bound_cfg, x, y)
    return {name: {"value": found["upper"].get(name, found["lower"].get(name)),
                   "seconds": found["seconds"][name], "failed": found["failed"].get(name)}
            for name in cfg.bench.bounds}


def compare_anderson(cfg, in_shape, m_given: bool = True) -> list[dict]:
    """The trained model `cfg.ckpt` with each Anderson history size of `cfg.bench.anderson` (0: plain),
    on the first `bench.images` test images: forward iterations and residuals, the share of converged
    solves, test error and seconds of the whole pass, and a training step's time on one batch."""
    from omegaconf import OmegaConf

    from .checkpoints import load_model
    from .data import load_splits, normalise
    from .errors import ConfigError
    from .progress import ticking

    if not cfg.ckpt:
        raise ConfigError("bench.anderson compares solves of a trained model: give ckpt=PATH (a model.ckpt)")
    _, test = load_splits(cfg.dataset)
    n = min(int(cfg.bench.images), len(test.labels))
    x = normalise(test, cfg.dataset.mean, cfg.dataset.std)[:n]
    y = test.labels[:n]
    device = pick_device(cfg.bench.device)
    batch = int(cfg.bench.batch)
    rows = []
    for size in cfg.bench.anderson:
        setting = OmegaConf.merge(cfg, {"splitting": {"anderson": int(size)}})
        splitting = OmegaConf.to_container(setting.splitting, resolve=True)
        # the checkpoint's recorded model, m and dataset checked against the command line
        model = load_model(setting, Path(cfg.ckpt).parent, m_given).model.to(device).eval()
        model.reset_convergence()
        iters, wrong = [], 0
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            for i in ticking(range(0, n, batch), -(-n // batch), f"anderson={size}"):
                logits = model(x[i:i + batch].to(device))
                wrong += int((logits.argmax(1).cpu() != y[i:i + batch]).sum())
                iters.append(model.solver_stats()["fwd_iters"])
        _sync(device)
        seconds = time.perf_counter() - start
        record = {"model": cfg.model.name, "ckpt": cfg.ckpt, "images": n, "batch": batch, "method": splitting["name"],
                  "alpha": splitting["alpha"], "anderson": int(size), "fwd_iters": statistics.mean(iters),
                  "test_error": wrong / n, "seconds": seconds, **model.convergence()["forward"]}
        record.update({k: v for k, v in benchmark(model.train(), in_shape, batch, 1, device, cfg.seed, 0).items()
                       if k in ("step_ms", "bwd_iters")})
        rows.append(record)
        print(format_line(record), flush=True)
    return rows


def _test_points(cfg, n: int, repeat: bool):
    """The first n test points of cfg.dataset as pixels in [0, 1] (float64) and labels; `repeat`: the split
    repeated when it is smaller (each copy costs what its original does)."""
    from .data import load_splits

    _, test = load_splits(cfg.dataset)
    copies = -(-n // len(test.labels)) if repeat else 1
    images = test.images.repeat(copies, *([1] * (test.images.ndim - 1)))[:n].to(torch.float64) / 255
    return images, test.labels.repeat(copies)[:n]


def _normalised(cfg, images: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    mean = torch.tensor(list(cfg.dataset.mean), dtype=images.dtype).view(shape)
    return (images - mean) / torch.tensor(list(cfg.dataset.std), dtype=images.dtype).view(shape)


def _global_constants(model, cfg, certificate: str):
    """(bound method, its value): the global constants a certificate of CERTIFICATES rests on."""
    from omegaconf import OmegaConf

    from .bounds.compute import compute_bounds
    from .certify.registry import CERTIFICATES

    rests_on = CERTIFICATES[certificate].rests_on(cfg.model.name)
    found = compute_bounds(model, OmegaConf.merge(cfg, {"bound": {"methods": [rests_on]}}))
    if rests_on not in found["upper"]:
        raise SolverError(f"bench.{certificate}: {rests_on}, the {certificate} certificate's global constants, "
                          f"failed ({found['failed'].get(rests_on)})")
    return rests_on, found["upper"][rests_on]


def time_exact(model: torch.nn.Module, cfg) -> dict:
    """Seconds and outcome of the exact certificate (certify.bound=exact, its settings certify.exact.*) on
    the first `bench.batch` test points of cfg.dataset, per norm of `bench.exact` at its radii of
    `bench.exact_eps`: robust / not robust / undecided counts, the points each stage decided, the region
    solves and branch-and-bound programmes.  The global constants are computed once, outside the time."""
    from omegaconf import OmegaConf

    from .certify import exact

    exact.check_applies(model)
    images, labels = _test_points(cfg, int(cfg.bench.batch), repeat=False)
    x = _normalised(cfg, images).to(torch.float32)
    rests_on, constant = _global_constants(model, cfg, "exact")
    record = {"points": len(labels), "global": rests_on}
    for norm in cfg.bench.exact:
        settings = {**OmegaConf.to_container(cfg.certify.exact), "norm": str(norm)}
        eps = list(cfg.bench.exact_eps[norm])
        curve = exact.curve(model, x, labels, constant, eps, settings, pixels=images,
                            mean=list(cfg.dataset.mean), std=list(cfg.dataset.std))
        record[str(norm)] = {"eps": eps, "seconds": curve["seconds"],
                             "seconds_per_point": curve["seconds"] / max(len(labels), 1), "status": curve["status"],
                             "stages": curve["stages"], "region_solves": curve["region_solves"],
                             "branch_programmes": curve["branch_programmes"], "box": curve["box"]}
    return record


def time_local(model: torch.nn.Module, cfg, in_shape) -> dict:
    """Seconds and certified accuracy of the local certifier (certify.bound=local), per ball method.

    The points: `bench.batch` test points of cfg.dataset, the split repeated when it is smaller
    (each copy costs what its original does).  The global class-pair constants (sdp_pairwise for FC
    monDEQs, sqrt(2) theorem1_pooled for conv ones) are computed once, outside the per-input time.
    Per method: seconds, seconds per 1000 inputs, certified accuracy and the mean count of unstable
    neurons (among the inputs whose stable set was found) and the share of inputs over
    max_unstable at each pixel radius of `bench.local_eps`.
    """
    from .certify import local
    from .certify.rules import normalised_radius

    local.check_applies(model)
    n = int(cfg.bench.batch)
    images, labels = _test_points(cfg, n, repeat=True)
    x = _normalised(cfg, images)
    std = list(cfg.dataset.std)
    start = time.perf_counter()
    rests_on, constant = _global_constants(model, cfg, "local")
    pair = local.pair_constants(constant, int(cfg.dataset.num_classes))
    record = {"points": n, "global": rests_on,
              "global_seconds": time.perf_counter() - start, "eps": list(cfg.bench.local_eps)}
    dm = local.dense_mondeq(model, tuple(in_shape))  # for the counts of unstable neurons below
    cen = local.centres(dm, x.flatten(1), labels, pair)
    for method in cfg.bench.local:
        curve = local.local_curve(model, x, labels, pair, record["eps"], std, method)
        unstable, over = [], []
        for e in record["eps"]:
            counts = local.check(dm, cen, torch.full((n,), normalised_radius(e, std), dtype=torch.float64),
                                 method)["unstable"]
            found = counts[counts >= 0]
            unstable.append(float(found.double().mean()) if len(found) else None)
            over.append(float((counts < 0).double().mean()))
        record[method] = {"seconds": curve["seconds"], "seconds_per_1000": 1000 * curve["seconds"] / n,
                          "accuracy": curve["accuracy"], "mean_unstable": unstable, "over_cap": over}
    return record


def format_line(record: dict) -> str:
    return json.dumps(record, sort_keys=False)


def run(cfg, m_given: bool = True) -> dict:
    """m_given: m was set on the command line (a checkpoint without a recorded m needs it)."""
    from .checkpoints import load_model
    from .models import build_model

    if cfg.bench.threads:
        torch.set_num_threads(int(cfg.bench.threads))
    torch.manual_seed(cfg.seed)
    in_shape = tuple(cfg.dataset.in_shape)
    if cfg.bench.anderson:
        return {"anderson": compare_anderson(cfg, in_shape, m_given)}
    model = (load_model(cfg, Path(cfg.ckpt).parent, m_given).model if cfg.ckpt
             else build_model(cfg.model, cfg.m, cfg.splitting, in_shape, cfg.dataset.num_classes))
    if cfg.bench.local or cfg.bench.exact:
        record = {"model": cfg.model.name, "m": cfg.m, "threads": torch.get_num_threads(), "ckpt": cfg.ckpt}
        record.update(time_local(model.eval(), cfg, in_shape) if cfg.bench.local else time_exact(model.eval(), cfg))
        print(format_line(record), flush=True)
        return record
    if cfg.bench.bounds:
        record = {"model": cfg.model.name, "m": cfg.m, "threads": torch.get_num_threads(), "ckpt": cfg.ckpt,
                  "points": cfg.bench.batch}
        record.update(time_bounds(model, cfg, in_shape))
        print(format_line(record), flush=True)
        return record
    device = pick_device(cfg.bench.device)
    record = {"model": cfg.model.name, "method": cfg.splitting.name, "batch": cfg.bench.batch,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "m": cfg.m, "alpha": cfg.splitting.alpha, "check_every": cfg.splitting.check_every,
              "anderson": cfg.splitting.anderson,
              "threads": torch.get_num_threads(), "ckpt": cfg.ckpt}
    record.update(benchmark(model, in_shape, cfg.bench.batch, cfg.bench.reps, device, cfg.seed, cfg.bench.warmup))
    if cfg.bench.frozen:
        record.update(time_frozen(model, cfg, in_shape, device))
    print(format_line(record), flush=True)
    return record


def _app(cfg) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from .cli import given_keys, keep_config

    keep_config(cfg, Path(HydraConfig.get().runtime.output_dir), "bench")  # no lock, no result files: nothing to wait for
    return run(cfg, m_given="m" in given_keys())


def main() -> None:
    from .cli import hydra_app

    hydra_app("bench")(_app)()


if __name__ == "__main__":
    main()
