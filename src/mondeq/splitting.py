"""Operator-splitting solvers for the monDEQ equilibrium and its adjoint.

Forward problem:  z = relu(W z + b)            (b = U x + bias)
Adjoint problem:  u = D (W^T u + g)            (D = relu' at the equilibrium)
The implicit gradient is then g + W^T u (see layer.py).

A method turns a problem into a `FixedPointMap` x -> T(x) on its iterated
variable; `solve` iterates it (plainly, or with Anderson acceleration) without
touching the host, and synchronises only every `check_every` iterations, when
the map also returns the point it evaluated and that point's relative
equilibrium residual.  The residual comes from quantities the step computes
anyway (PR: W x follows from the resolvent's own equation), so a check costs
elementwise work only, never an extra product with W.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .operator import MonotoneOperator, Resolvent

_EPS = 1e-6


@dataclass
class SolveStats:
    """One solve: iterations run, relative equilibrium residual of the returned point (the batch's: what
    stops the solve), wall time; and per sample: how many, how many reached the tolerance, the worst."""

    iters: int = 0
    residual: float = math.nan
    seconds: float = 0.0
    converged: bool = False
    samples: int = 0
    converged_samples: int = 0
    worst_sample_residual: float = math.nan


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
        if self.name not in SPLITTING_METHODS:
            raise ValueError(f"unknown splitting method {self.name!r}; choose one of {sorted(SPLITTING_METHODS)}")
        for key in ("alpha", "fwd_tol", "bwd_tol"):
            if not getattr(self, key) > 0:
                raise ValueError(f"splitting.{key} must be > 0, got {getattr(self, key)}")
        for key in ("fwd_max_iter", "bwd_max_iter", "check_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"splitting.{key} must be >= 1, got {getattr(self, key)}")
        if not (float(self.anderson).is_integer() and (self.anderson == 0 or self.anderson >= 2)):
            raise ValueError(f"splitting.anderson is a history size: 0 (off) or >= 2, got {self.anderson}")
        if self.on_nonconvergence not in ("warn", "error"):
            raise ValueError(f"splitting.on_nonconvergence must be warn or error, got {self.on_nonconvergence!r}")

    @classmethod
    def from_mapping(cls, cfg) -> "SolverConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown splitting keys {sorted(unknown)}; known: {sorted(known)}")
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


Checked = Optional[tuple[torch.Tensor, tuple[torch.Tensor, Callable[[], torch.Tensor]]]]


@dataclass
class FixedPointMap:
    """x -> T(x) from `start`; step(x, check) returns T(x) and, when `check`, (point, its residuals: the
    batch's and each sample's, `_relative`)."""

    start: torch.Tensor
    step: Callable[[torch.Tensor, bool], tuple[torch.Tensor, Checked]]


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
    """The relative residual of the batch (what stops a solve) and, on demand, of each sample (what is
    counted, once per solve: the checks that do not end a solve do not pay for it)."""
    return diff.norm() / (_EPS + ref.norm()), lambda: diff.norm(dim=1) / (_EPS + ref.norm(dim=1))


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
        self.fs = start.new_zeros(batch, memory, n)  # T(x_i)
        self.gs = start.new_zeros(batch, memory, n)  # T(x_i) - x_i
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
    while stats.iters < max_iter:
        n = min(check_every, max_iter - stats.iters)
        for _ in range(n - 1):
            x, _ = step(x, False)
        x, (point, (residual, per_sample)) = step(x, True)
        stats.iters += n
        stats.residual = residual.item()
        if not math.isfinite(stats.residual):
            on_nonfinite(stats.iters)
        if stats.residual <= tol:
            stats.converged = True
            break
    # one host sync per solve for the per-sample count, none per iteration
    per_sample = per_sample()
    count, worst = torch.stack([(per_sample <= tol).sum().to(per_sample.dtype), per_sample.max()]).tolist()
    stats.samples, stats.converged_samples, stats.worst_sample_residual = len(per_sample), int(count), worst
    stats.seconds = time.perf_counter() - start
    return point, stats


class ForwardBackward:
    """z <- relu((1 - alpha) z + alpha (W z + b)); needs alpha <= 2m / ||I - W||^2.

    A check reports the residual of the step's input z, from the W z the step computes.
    """

    name = "fb"

    @staticmethod
    def resolvent(op: MonotoneOperator, alpha: float) -> None:
        """FB never inverts I - W."""
        return None

    @staticmethod
    def forward_map(op: MonotoneOperator, bias, alpha, resolvent=None) -> FixedPointMap:
        def step(z, check):
            pre = op.multiply(z) + bias
            z_next = op.nonlinearity((1 - alpha) * z + alpha * pre)
            return z_next, (z, _relative(z - op.nonlinearity(pre), z)) if check else None

        return FixedPointMap(torch.zeros_like(bias), step)

    @staticmethod
    def adjoint_map(op: MonotoneOperator, g, d, alpha, resolvent=None) -> FixedPointMap:
        def step(u, check):
            pre = op.multiply_transpose(u) + g
            u_next = d * ((1 - alpha) * u + alpha * pre)
            return u_next, (u, _relative(u - d * pre, u)) if check else None

        return FixedPointMap(torch.zeros_like(g), step)


class PeacemanRachford:
    """Reflected resolvents of I - W and of the ReLU; converges for any alpha > 0.

    In the reflected variable u the whole step is u <- (2R - I) w + 2 R alpha b,
    with w = refl(u) = 2 relu(u) - u (= |u| without a border mask): one matrix
    product and one elementwise op per iteration for dense operators.  The
    resolvent point x = R(w + alpha b) = (u_next + w) / 2 satisfies
    W x + b = x + (x - w) / alpha, which gives its residual without W.
    """

    name = "pr"

    @staticmethod
    def resolvent(op: MonotoneOperator, alpha: float) -> Resolvent:
        """Built once per solve and shared by the forward and adjoint maps."""
        return op.resolvent(alpha)

    @staticmethod
    def forward_map(op: MonotoneOperator, bias, alpha, resolvent: Resolvent) -> FixedPointMap:
        shift = 2 * resolvent.apply(alpha * bias)

        def step(u, check):
            w = op.reflected_nonlinearity(u)
            u_next = resolvent.reflect(w, shift)
            if not check:
                return u_next, None
            x = (u_next + w) / 2
            return u_next, (x, _relative(x - op.nonlinearity(x + (x - w) / alpha), x))

        return FixedPointMap(torch.zeros_like(bias), step)

    @staticmethod
    def adjoint_map(op: MonotoneOperator, g, d, alpha, resolvent: Resolvent) -> FixedPointMap:
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


SPLITTING_METHODS = {cls.name: cls for cls in (ForwardBackward, PeacemanRachford)}
