"""`python -m src.bound`: every Lipschitz estimate that applies to a checkpoint.

Writes <run dir>/bounds.json (keys in DESIGN.md): `upper` and `lower`
values, `details` per method (solver reports, intermediate norms),
`seconds` per method and `solver` for each SDP.  A method that fails is
reported with its status under `failed`, never as a number.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .bounds import feedforward, generalization as gen, lower, mondeq as mondeq_bounds
from .bounds.lipsdp import lipsdp
from .mondeq.fc import FullyConnectedOperator
from .mondeq.networks import MonDEQNet
from .baselines import CNN, DNN


@dataclass
class Context:
    model: torch.nn.Module
    cfg: DictConfig
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    box: tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Method:
    kind: str  # "upper" or "lower"
    applies: Callable[[torch.nn.Module], bool]
    compute: Callable[[Context], dict]
    needs_data: bool = False


def _is_mondeq(model) -> bool:
    return isinstance(model, MonDEQNet)


def _is_fc_mondeq(model) -> bool:
    return _is_mondeq(model) and isinstance(model.mon.operator, FullyConnectedOperator)


def _is_conv_mondeq(model) -> bool:
    return _is_mondeq(model) and not _is_fc_mondeq(model)


def _is_feedforward(model) -> bool:
    return isinstance(model, (DNN, CNN))


def _unrolled(method: str):
    def compute(ctx: Context) -> dict:
        b = ctx.cfg.bound
        return mondeq_bounds.unrolled(ctx.model, method, ctx.test_x[: b.unrolled_batch],
                                      alphas=list(b.unrolled_alphas), tol=b.unrolled_tol)
    return compute


def _in_shape(ctx: Context) -> tuple[int, ...]:
    return tuple(int(s) for s in ctx.cfg.dataset.in_shape)


def _grad_norm(ctx: Context) -> dict:
    b = ctx.cfg.bound
    points = lower.sample_points(ctx.test_x, int(b.lower_points), *ctx.box, seed=ctx.cfg.seed)
    return lower.grad_norm(ctx.model, points, ascent_steps=int(b.ascent_steps), box=ctx.box, seed=ctx.cfg.seed)


METHODS: dict[str, Method] = {
    "theorem1": Method("upper", _is_mondeq, lambda c: mondeq_bounds.theorem1(c.model)),
    "theorem1_pooled": Method("upper", _is_conv_mondeq, lambda c: mondeq_bounds.theorem1_pooled(c.model)),
    "sdp_diag": Method("upper", _is_fc_mondeq, lambda c: mondeq_bounds.sdp_diag(c.model)),
    "sdp_pairwise": Method("upper", _is_fc_mondeq, lambda c: mondeq_bounds.sdp_pairwise(c.model)),
    "unrolled_fb": Method("upper", _is_fc_mondeq, _unrolled("fb"), needs_data=True),
    "unrolled_pr": Method("upper", _is_fc_mondeq, _unrolled("pr"), needs_data=True),
    "naive": Method("upper", _is_feedforward, lambda c: feedforward.naive(c.model, _in_shape(c))),
    "autolip": Method("upper", _is_feedforward, lambda c: feedforward.autolip(c.model, _in_shape(c))),
    "seqlip_greedy": Method("upper", _is_feedforward, lambda c: feedforward.seqlip_greedy(c.model, _in_shape(c))),
    "lipsdp_neuron": Method("upper", lambda m: isinstance(m, DNN), lambda c: lipsdp(c.model, "neuron")),
    "lipsdp_layer": Method("upper", lambda m: isinstance(m, DNN), lambda c: lipsdp(c.model, "layer")),
    "grad_norm": Method("lower", lambda m: True, _grad_norm, needs_data=True),
}


def select_methods(model, requested) -> list[str]:
    if requested is None:
        return [name for name, meth in METHODS.items() if meth.applies(model)]
    requested = list(requested)
    unknown = [r for r in requested if r not in METHODS]
    if unknown:
        raise ValueError(f"unknown bound.methods {unknown}; known: {sorted(METHODS)}")
    wrong = [r for r in requested if not METHODS[r].applies(model)]
    if wrong:
        raise ValueError(f"bound.methods {wrong} do not apply to model {type(model).__name__}")
    return requested


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return None  # points and other tensors stay out of the JSON
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@torch.no_grad()
def test_error(model, x: torch.Tensor, y: torch.Tensor, batch: int = 400) -> float:
    wrong = sum(int((model(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return wrong / len(x)


def compute_bounds(model, cfg: DictConfig, test_x=None, test_y=None) -> dict:
    """Run the selected methods on `model`; returns the bounds.json record."""
    names = select_methods(model, cfg.bound.methods)
    if any(METHODS[n].needs_data for n in names) and test_x is None:
        raise ValueError(f"bound methods {[n for n in names if METHODS[n].needs_data]} need test data")
    mean = torch.tensor(list(cfg.dataset.mean)).view(-1, 1, 1)
    std = torch.tensor(list(cfg.dataset.std)).view(-1, 1, 1)
    ctx = Context(model, cfg, test_x, test_y, ((0 - mean) / std, (1 - mean) / std))
    record: dict = {"upper": {}, "lower": {}, "details": {}, "seconds": {}, "solver": {}, "failed": {}}
    for name in names:
        method = METHODS[name]
        start = time.perf_counter()
        result = method.compute(ctx)
        record["seconds"][name] = time.perf_counter() - start
        record["details"][name] = _jsonable(result)
        if result.get("sdp_report"):
            record["solver"][name] = _jsonable(result["sdp_report"])
        value = result.get("matrix") if name == "sdp_pairwise" else result.get("value")
        if value is None:
            record["failed"][name] = result.get("status", "no value")
        else:
            record[method.kind][name] = value
        print(f"{name:>16}: {value if not isinstance(value, list) else result.get('value')}"
              f"  ({record['seconds'][name]:.1f} s)", flush=True)
    if test_x is not None and cfg.bound.test_error:
        record["test_error"] = test_error(model, test_x, test_y)
    return record


def generalization_bounds(model, cfg: DictConfig, train, ckpt: str) -> dict:
    """PAC-Bayes bounds on the training subset the run's protocol used."""
    from .checkpoints import read_checkpoint
    from .data import normalise
    from .run import training_subset

    start = time.perf_counter()
    train_x, train_y = normalise(train, cfg.dataset.mean, cfg.dataset.std), train.labels
    idx = training_subset(len(train_y), cfg.protocol.n_train, cfg.seed)
    if idx is not None:
        train_x, train_y = train_x[idx], train_y[idx]
    checkpoint = read_checkpoint(ckpt)
    reference = checkpoint.get("initial_state_dict") if isinstance(checkpoint, dict) else None
    out = gen.generalization(model, train_x, train_y, cfg.generalization, reference=reference)
    out["seconds"] = time.perf_counter() - start
    print(f"  generalization: {out.get('pac_bayes')}  ({out['seconds']:.1f} s)", flush=True)
    return out


def load_model(cfg: DictConfig, run_dir: Path):
    from .checkpoints import load_weights, read_checkpoint
    from .models import build_model

    path = Path(cfg.ckpt) if cfg.ckpt else run_dir / "model.ckpt"
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if hparams and "m" in hparams and hparams["m"] is not None and cfg.model.name.startswith("mon"):
        if float(hparams["m"]) != float(cfg.m):
            raise ValueError(f"checkpoint {path} was trained with m={hparams['m']}, but m={cfg.m} was given")
    model = build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    layout = load_weights(model, checkpoint)
    print(f"loaded {path} ({layout} layout)", flush=True)
    return model.eval(), str(path)


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from .data import load_splits, normalise

    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model, ckpt = load_model(cfg, run_dir)
    train, test = load_splits(cfg.dataset)
    test_x = normalise(test, cfg.dataset.mean, cfg.dataset.std)
    record = compute_bounds(model, cfg, test_x, test.labels)
    if cfg.generalization.enabled and gen.applies(model):
        record["generalization"] = _jsonable(generalization_bounds(model, cfg, train, ckpt))
    record.update(model=OmegaConf.to_container(cfg.model), m=cfg.m, dataset=cfg.dataset.name,
                  profile=cfg.get("profile"), ckpt=ckpt)
    (run_dir / "bounds.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {run_dir / 'bounds.json'}", flush=True)
    return record


def main() -> None:
    from .cli import hydra_app

    hydra_app("bound")(run)()


if __name__ == "__main__":
    main()
