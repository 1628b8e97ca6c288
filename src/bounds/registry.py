"""Every Lipschitz estimate of the project behind one signature: a registry of methods.

A method names the models it applies to, whether it needs test data, and computes a
record (`value`, solver reports, intermediate norms) from a Context.  `compute_bounds`
runs a selection of them and returns the bounds.json record (src.bound, src.robustness
and src.bench all call it).  A new bound is one function and one line in METHODS.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ..baselines import CNN, DNN
from ..mondeq.fc import FullyConnectedOperator
from ..mondeq.networks import MonDEQNet
from . import feedforward, lower, mondeq as mondeq_bounds
from .lipsdp import lipsdp

log = logging.getLogger(__name__)


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


def jsonable(value):
    if isinstance(value, torch.Tensor):
        return None  # points and other tensors stay out of the JSON
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if not isinstance(v, torch.Tensor)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _finite(value) -> bool:
    """A number, or a class-pair matrix whose entries (None: a failed pair) are, finite and >= 0."""
    if isinstance(value, (list, tuple)):
        return all(v is None or _finite(v) for row in value for v in row)
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def compute_bounds(model, cfg: DictConfig, test_x=None, test_y=None) -> dict:
    """Run the selected methods on `model`; returns their part of the bounds.json record."""
    names = select_methods(model, cfg.bound.methods)
    if any(METHODS[n].needs_data for n in names) and test_x is None:
        raise ValueError(f"bound methods {[n for n in names if METHODS[n].needs_data]} need test data")
    mean = torch.tensor(list(cfg.dataset.mean)).view(-1, 1, 1)
    std = torch.tensor(list(cfg.dataset.std)).view(-1, 1, 1)
    ctx = Context(model, cfg, test_x, test_y, ((0 - mean) / std, (1 - mean) / std))
    record: dict = {"upper": {}, "lower": {}, "details": {}, "seconds": {}, "solver": {}, "failed": {}}
    for name in names:
        method = METHODS[name]
        log.info(f"{name:>16}: computing")  # an SDP or an ascent can take minutes
        start = time.perf_counter()
        result = method.compute(ctx)
        record["seconds"][name] = time.perf_counter() - start
        record["details"][name] = jsonable(result)
        if result.get("sdp_report"):
            record["solver"][name] = jsonable(result["sdp_report"])
        value = result.get("matrix") if name == "sdp_pairwise" else result.get("value")
        if value is None:
            record["failed"][name] = result.get("status", "no value")
        elif not _finite(value):  # a NaN or Inf weight: a number that is not one is a failure, never a bound
            record["failed"][name] = f"non-finite value {value!r}"
            log.warning(f"warning: {name}: non-finite value {value!r} (non-finite weights?): recorded as failed")
        else:
            record[method.kind][name] = value
        solver = f", {result['sdp_report'].get('solver')}" if result.get("sdp_report") else ""
        log.info(f"{name:>16}: {value if not isinstance(value, list) else result.get('value')}"
                 f"  ({record['seconds'][name]:.1f} s{solver})")
    return record
