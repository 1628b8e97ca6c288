"""Operator-splitting solvers for the monDEQ equilibrium and its adjoint.

Forward problem:  z = prox(W z + b)            (b = U x + bias; prox: nonlinearity.py)
Adjoint problem:  u = D (W^T u + g)            (D = prox' at the equilibrium)
The implicit gradient is then g + W^T u (see layer.py).

A method (a `SplittingMethod`, registered by name in SPLITTING_METHODS) turns a
problem into a `FixedPointMap` x -> T(x) on its iterated variable; every method
has the same three functions with the same signatures.  `solve` iterates a map
(plainly, or with Anderson acceleration) without touching the host, and
synchronises only every `check_every` iterations, when the map also returns the
point it evaluated and that point's relative equilibrium residual.  The residual
comes from quantities the step computes anyway (PR: W x follows from the
resolvent's own equation), so a check costs elementwise work only, never an
extra product with W.  A solve returns a `SolveStats` record, per sample as
well as for the batch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..keys import ANDERSON, EVERY, NOTHING, POS_INT, POSITIVE, Key, boolean, checked, choice, one_of
from .nonlinearity import Nonlinearity
from .operator import MonotoneOperator, Resolvent

_EPS = 1e-6


@dataclass
class SolveStats:
    """One solve: iterations run, relative equilibrium residual of the returned point (the batch's: what
    stops the solve), wall time; and per sample: how many, how many reached the tolerance, the worst,
    and as tensors on the solve's device, each sample's residual at the returned point and the
    iterations after which its checked residual first reached the tolerance (-1: never)."""

    iters: int = 0
    residual: float = math.nan
    seconds: float = 0.0
    converged: bool = False
    samples: int = 0
    converged_samples: int = 0
    worst_sample_residual: float = math.nan
    sample_residuals: Optional[torch.Tensor] = None
    sample_iters: Optional[torch.Tensor] = None


class SplittingMethod:
    """The one signature of a splitting method: a resolvent built once per solve (shared by the forward
    and the adjoint map; None when the method needs none) and the two fixed-point maps."""

    name: str

    @staticmethod
    def resolvent(op: MonotoneOperator, alpha: float) -> Optional[Resolvent]:
        raise NotImplementedError

    @staticmethod
    def forward_map(op: MonotoneOperator, prox: Nonlinearity, bias: torch.Tensor, alpha: float,
                    resolvent: Optional[Resolvent]) -> FixedPointMap:
        """The map whose fixed point gives z = prox(W z + bias)."""
        raise NotImplementedError

    @staticmethod
    def adjoint_map(op: MonotoneOperator, g: torch.Tensor, d: torch.Tensor, alpha: float,
                    resolvent: Optional[Resolvent]) -> FixedPointMap:
        """The map whose fixed point gives u = d (W^T u + g)."""
        raise NotImplementedError


SPLITTING_METHODS: dict[str, type[SplittingMethod]] = {}


def register(method: type[SplittingMethod]) -> type[SplittingMethod]:
    """Declare a splitting method under its `name`: the config's `splitting.name` choices come from here."""
    if method.name in SPLITTING_METHODS:
        raise ValueError(f"splitting method {method.name!r} is registered twice")
    SPLITTING_METHODS[method.name] = method
    return method


# The splitting settings (splitting.<key>), declared once: SolverConfig checks its fields by these rules,
# and the schema takes them as they are.
SPLITTING_KEYS: dict[str, Key] = {
    "name": Key(one_of(SPLITTING_METHODS), EVERY, mondeq_only=True),
    "alpha": Key(POSITIVE, EVERY, mondeq_only=True),
    "fwd_tol": Key(POSITIVE, EVERY, mondeq_only=True),
    "fwd_max_iter": Key(POS_INT, EVERY, mondeq_only=True),
    "bwd_tol": Key(POSITIVE, EVERY, mondeq_only=True),
    "bwd_max_iter": Key(POS_INT, EVERY, mondeq_only=True),
    "check_every": Key(POS_INT, EVERY, mondeq_only=True),
    "tune_alpha": Key(boolean(), EVERY, mondeq_only=True),
    "anderson": Key(ANDERSON, EVERY, mondeq_only=True),
    "on_nonconvergence": Key(choice("warn", "error"), NOTHING),
}


@dataclass(frozen=True)
class SolverConfig:
    name: str = "pr"
    alpha: float = 1.0
    fwd_tol: float = 1e-3
    fwd_max_iter: int = 300
    bwd_tol: float = 1e-3
    bwd_max_iter: int = 300
    check_every: int = 4
    tune_alpha: bool = False
    anderson: int = 0
    on_nonconvergence: str = "warn"  # warn | error

    def __post_init__(self):
        for key, declared in SPLITTING_KEYS.items():
            object.__setattr__(self, key, checked(f"splitting.{key}", declared.rule, getattr(self, key)))

    @classmethod
    def from_mapping(cls, cfg) -> "SolverConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(f"unknown splitting keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: cfg[k] for k in cfg})


@dataclass
class ConvergenceTally:
    """The solves of one direction since the last reset, counted per sample (a hard sample does not hide
    behind the easy ones of its batch): how many reached their tolerance, the worst sample's residual."""

    solves: int = 0
    samples: int = 0
    converged: int = 0
    worst_residual: float = 0.0

    def add(self, stats: SolveStats) -> None:
        self.solves += 1
        self.samples += stats.samples
        self.converged += stats.converged_samples
        # nan never compares greater: a non-finite residual raises before it gets here
        self.worst_residual = max(self.worst_residual, stats.worst_sample_residual)

    def merge(self, other: "ConvergenceTally") -> None:
        self.solves += other.solves
        self.samples += other.samples
        self.converged += other.converged
        self.worst_residual = max(self.worst_residual, other.worst_residual)

    def record(self) -> dict:
        """The fields written to metrics.json, bounds.json and robustness.json."""
        return {"solves": self.solves, "samples": self.samples,
                "converged_fraction": self.converged / self.samples if self.samples else None,
                "worst_residual": self.worst_residual if self.samples else None}


Checked = Optional[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class FixedPointMap:
    """x -> T(x) from `start`; step(x, check) returns T(x) and, when `check`, (point, its residuals: the
    batch's and each sample's, `_relative`)."""

    start: torch.Tensor
    step: Callable[[torch.Tensor, bool], tuple[torch.Tensor, Checked]]


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The relative residual of the batch (what stops a solve) and of each sample (elementwise work)."""
    return diff.norm() / (_EPS + ref.norm()), diff.norm(dim=1) / (_EPS + ref.norm(dim=1))


class Anderson:
    """Anderson acceleration (type II) of a fixed-point map, batched per sample.

    Keeps the last `memory` pairs (x_i, T(x_i)) and steps to sum_i a_i T(x_i)
    with a = argmin ||sum_i a_i (T(x_i) - x_i)||, sum_i a_i = 1, solved as a
    small regularised normal system per sample on the device (no host sync).
    The regularisation is relative to the system's mean diagonal and above float32's rounding:
    as the iterates converge the history turns collinear, the system singular in float32 (1e-8
    gave NaN states for a 128-channel conv monDEQ at batch 32). A sample whose weights still come
    out non-finite takes the plain step instead.
    """

    def __init__(self, step, memory: int, start: torch.Tensor, reg: float = 1e-4):
        self.inner, self.memory, self.reg = step, memory, reg
        batch, n = start.shape
        # slots are read only once written (the first k of them): no zero fill
        self.fs = start.new_empty(batch, memory, n)  # T(x_i)
        self.gs = start.new_empty(batch, memory, n)  # T(x_i) - x_i
        self.eye = torch.eye(memory, dtype=start.dtype, device=start.device)
        self.count = 0

    def __call__(self, x: torch.Tensor, check: bool):
        f, checked = self.inner(x, check)
        slot = self.count % self.memory
        self.fs[:, slot] = f
        torch.sub(f, x, out=self.gs[:, slot])
        self.count += 1
        k = min(self.count, self.memory)
        if k == 1:
            return f, checked
        F, G = self.fs[:, :k], self.gs[:, :k]
        H = G @ G.transpose(1, 2)
        scale = H.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
        H = H + (self.reg * scale)[:, None, None] * self.eye[:k, :k]
        a, _ = torch.linalg.solve_ex(H, torch.ones_like(H[:, :, :1]))
        a = a / a.sum(1, keepdim=True)
        mixed = (a.transpose(1, 2) @ F).squeeze(1)
        return torch.where(torch.isfinite(a).all(1), mixed, f), checked


def solve(fp: FixedPointMap, tol: float, max_iter: int, check_every: int, anderson: int,
          on_nonfinite: Callable[[int], None]) -> tuple[torch.Tensor, SolveStats]:
    """Iterate `fp` until the checked residual is <= tol (or max_iter); returns the checked point."""
    stats = SolveStats()
    start = time.perf_counter()
    step = Anderson(fp.step, anderson, fp.start) if anderson else fp.step
    x = fp.start
    point = x
    reached = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    while stats.iters < max_iter:
        n = min(check_every, max_iter - stats.iters)
        for _ in range(n - 1):
            x, _ = step(x, False)
        x, (point, (residual, per_sample)) = step(x, True)
        stats.iters += n
        reached = torch.where((reached < 0) & (per_sample <= tol), stats.iters, reached)
        stats.residual = residual.item()  # the check's one host sync
        if not math.isfinite(stats.residual):
            on_nonfinite(stats.iters)
        if stats.residual <= tol:
            stats.converged = True
            break
    # one more host sync per solve for the per-sample count
    count, worst = torch.stack([(per_sample <= tol).sum().to(per_sample.dtype), per_sample.max()]).tolist()
    stats.samples, stats.converged_samples, stats.worst_sample_residual = len(per_sample), int(count), worst
    stats.sample_residuals, stats.sample_iters = per_sample, reached
    stats.seconds = time.perf_counter() - start
    return point, stats


@register
class ForwardBackward(SplittingMethod):
    """z <- prox((1 - alpha) z + alpha (W z + b)); needs alpha <= 2m / ||I - W||^2.

    A check reports the residual of the step's input z, from the W z the step computes.
    """

    name = "fb"

    @staticmethod
    def resolvent(op, alpha):
        """FB never inverts I - W."""
        return None

    @staticmethod
    def forward_map(op, prox, bias, alpha, resolvent):
        def step(z, check):
            pre = op.multiply(z) + bias
            z_next = prox((1 - alpha) * z + alpha * pre)
            return z_next, (z, _relative(z - prox(pre), z)) if check else None

        return FixedPointMap(torch.zeros_like(bias), step)

    @staticmethod
    def adjoint_map(op, g, d, alpha, resolvent):
        def step(u, check):
            pre = op.multiply_transpose(u) + g
            u_next = d * ((1 - alpha) * u + alpha * pre)
            return u_next, (u, _relative(u - d * pre, u)) if check else None

        return FixedPointMap(torch.zeros_like(g), step)


@register
class PeacemanRachford(SplittingMethod):
    """Reflected resolvents of I - W and of the nonlinearity; converges for any alpha > 0.

    In the reflected variable u the whole step is u <- (2R - I) w + 2 R alpha b,
    with w = refl(u) = 2 prox(u) - u (= |u| for a ReLU without a border mask): one matrix
    product and one elementwise op per iteration for dense operators.  The
    resolvent point x = R(w + alpha b) = (u_next + w) / 2 satisfies
    W x + b = x + (x - w) / alpha, which gives its residual without W.
    """

    name = "pr"

    @staticmethod
    def resolvent(op, alpha):
        return op.resolvent(alpha)

    @staticmethod
    def forward_map(op, prox, bias, alpha, resolvent):
        shift = 2 * resolvent.apply(alpha * bias)

        def step(u, check):
            w = prox.reflect(u)
            u_next = resolvent.reflect(w, shift)
            if not check:
                return u_next, None
            x = (u_next + w) / 2
            return u_next, (x, _relative(x - prox(x + (x - w) / alpha), x))

        return FixedPointMap(torch.zeros_like(bias), step)

    @staticmethod
    def adjoint_map(op, g, d, alpha, resolvent):
        # u = d (v + alpha g); the reflection 2u - v is sign * v + 2 alpha d g with sign = 2d - 1;
        # x = R^T y for y = 2u - v satisfies W^T x = x + (x - y) / alpha
        sign, shift = 2 * d - 1, 2 * alpha * d * g

        def step(v, check):
            y = torch.addcmul(shift, sign, v)
            v_next = resolvent.reflect_transpose(y)
            if not check:
                return v_next, None
            x = (v_next + y) / 2
            return v_next, (x, _relative(x - d * (x + (x - y) / alpha + g), x))

        return FixedPointMap(torch.zeros_like(g), step)

