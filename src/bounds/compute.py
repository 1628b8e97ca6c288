"""Every Lipschitz estimate of the project behind one signature: `compute_bounds`.

Each method declared in src/bounds/registry.py has its function here, of the same name, that
computes its record (`value`, solver reports, intermediate norms) from a Context.
`compute_bounds` runs a selection of them and returns the bounds.json record (src.bound,
src.robustness and src.bench all call it).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ..models import name_of
from . import feedforward, lower, theorem1 as theorem1_bounds, unrolled as unrolled_bounds
from .registry import METHODS, select_methods

log = logging.getLogger(__name__)


@dataclass
class Context:
    model: torch.nn.Module
    cfg: DictConfig
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    box: tuple[torch.Tensor, torch.Tensor]


def _unrolled(method: str):
    def compute(ctx: Context) -> dict:
        b = ctx.cfg.bound
        return unrolled_bounds.unrolled(ctx.model, method, ctx.test_x[: b.unrolled_batch],
                                      alphas=list(b.unrolled_alphas), tol=b.unrolled_tol)
    return compute


def _in_shape(ctx: Context) -> tuple[int, ...]:
    return tuple(int(s) for s in ctx.cfg.dataset.in_shape)


def theorem1(ctx: Context) -> dict:
    return theorem1_bounds.theorem1(ctx.model)


def theorem1_pooled(ctx: Context) -> dict:
    return theorem1_bounds.theorem1_pooled(ctx.model)


# The SDP methods import cvxpy (a second and more) when they run: the other methods' jobs go without it.
def sdp_diag(ctx: Context) -> dict:
    from . import diag_sdp
    return diag_sdp.sdp_diag(ctx.model)


def sdp_pairwise(ctx: Context) -> dict:
    from . import diag_sdp
    return diag_sdp.sdp_pairwise(ctx.model)


unrolled_fb, unrolled_pr = _unrolled("fb"), _unrolled("pr")


def naive(ctx: Context) -> dict:
    return feedforward.naive(ctx.model, _in_shape(ctx))


def autolip(ctx: Context) -> dict:
    return feedforward.autolip(ctx.model, _in_shape(ctx))


def seqlip_greedy(ctx: Context) -> dict:
    return feedforward.seqlip_greedy(ctx.model, _in_shape(ctx))


def lipsdp_neuron(ctx: Context) -> dict:
    from .lipsdp import lipsdp
    return lipsdp(ctx.model, "neuron")


def lipsdp_layer(ctx: Context) -> dict:
    from .lipsdp import lipsdp
    return lipsdp(ctx.model, "layer")


def grad_norm(ctx: Context) -> dict:
    b = ctx.cfg.bound
    points = lower.sample_points(ctx.test_x, int(b.lower_points), *ctx.box, seed=ctx.cfg.seed)
    return lower.grad_norm(ctx.model, points, ascent_steps=int(b.ascent_steps), box=ctx.box, seed=ctx.cfg.seed)


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
    names = select_methods(name_of(model), cfg.bound.methods)
    if any(METHODS[n].needs_data for n in names) and test_x is None:
        raise ValueError(f"bound methods {[n for n in names if METHODS[n].needs_data]} need test data")
    mean = torch.tensor(list(cfg.dataset.mean)).view(-1, 1, 1)
    std = torch.tensor(list(cfg.dataset.std)).view(-1, 1, 1)
    ctx = Context(model, cfg, test_x, test_y, ((0 - mean) / std, (1 - mean) / std))
    record: dict = {"upper": {}, "lower": {}, "details": {}, "seconds": {}, "solver": {}, "failed": {}}
    for name in names:
        method = METHODS[name]
        compute = globals()[name]  # the function of the method's name (src/bounds/registry.py)
        log.info(f"{name:>16}: computing")  # an SDP or an ascent can take minutes
        start = time.perf_counter()
        result = compute(ctx)
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
