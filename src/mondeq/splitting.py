"""Operator-splitting solvers for the monDEQ equilibrium and its adjoint.

Forward problem:  z = relu(W z + b)            (b = U x + bias)
Adjoint problem:  u = D (W^T u + g)            (D = relu' at the equilibrium)
The implicit gradient is then g + W^T u (see layer.py).

Each method iterates without touching the host; the relative residual is
computed, and synchronised, only every `check_every` iterations.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .operator import MonotoneOperator, Resolvent

_EPS = 1e-6


@dataclass
class SolveStats:
    """One solve: iterations run, final relative residual, wall time."""

    iters: int = 0
    residual: float = math.nan
    seconds: float = 0.0
    converged: bool = False


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

    def __post_init__(self):
        if self.name not in SPLITTING_METHODS:
            raise ValueError(f"unknown splitting method {self.name!r}; choose one of {sorted(SPLITTING_METHODS)}")
        for key in ("alpha", "fwd_tol", "bwd_tol"):
            if not getattr(self, key) > 0:
                raise ValueError(f"splitting.{key} must be > 0, got {getattr(self, key)}")
        for key in ("fwd_max_iter", "bwd_max_iter", "check_every"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"splitting.{key} must be >= 1, got {getattr(self, key)}")

    @classmethod
    def from_mapping(cls, cfg) -> "SolverConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown splitting keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: cfg[k] for k in cfg})


def _relative(diff: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return diff.norm() / (_EPS + ref.norm())


def forward_residual(op: MonotoneOperator, z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _relative(z - op.nonlinearity(op.multiply(z) + bias), z)


def adjoint_residual(op: MonotoneOperator, u: torch.Tensor, g: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return _relative(u - d * (op.multiply_transpose(u) + g), u)


def _iterate(step: Callable[[], torch.Tensor], residual: Callable[[], torch.Tensor],
             tol: float, max_iter: int, check_every: int, on_nonfinite: Callable[[int], None]) -> SolveStats:
    stats = SolveStats()
    start = time.perf_counter()
    while stats.iters < max_iter:
        n = min(check_every, max_iter - stats.iters)
        for _ in range(n):
            step()
        stats.iters += n
        stats.residual = residual().item()
        if not math.isfinite(stats.residual):
            on_nonfinite(stats.iters)
        if stats.residual <= tol:
            stats.converged = True
            break
    stats.seconds = time.perf_counter() - start
    return stats


class ForwardBackward:
    """z <- relu((1 - alpha) z + alpha (W z + b)); needs alpha <= 2m / ||I - W||^2."""

    name = "fb"

    @staticmethod
    def forward(op, bias, alpha, resolvent, tol, max_iter, check_every, on_nonfinite):
        z = torch.zeros_like(bias)

        def step():
            nonlocal z
            z = op.nonlinearity((1 - alpha) * z + alpha * (op.multiply(z) + bias))

        stats = _iterate(step, lambda: forward_residual(op, z, bias), tol, max_iter, check_every, on_nonfinite)
        return z, stats

    @staticmethod
    def adjoint(op, g, d, alpha, resolvent, tol, max_iter, check_every, on_nonfinite):
        u = torch.zeros_like(g)

        def step():
            nonlocal u
            u = d * ((1 - alpha) * u + alpha * (op.multiply_transpose(u) + g))

        stats = _iterate(step, lambda: adjoint_residual(op, u, g, d), tol, max_iter, check_every, on_nonfinite)
        return u, stats


class PeacemanRachford:
    """Reflected resolvents of I - W and of the ReLU; converges for any alpha > 0.

    In the reflected variable u the whole step is u <- (2R - I) refl(u) + 2 R alpha b,
    with refl(u) = 2 relu(u) - u (= |u| without a border mask): one matrix product
    and one elementwise op per iteration for dense operators.
    """

    name = "pr"

    @staticmethod
    def forward(op, bias, alpha, resolvent: Resolvent, tol, max_iter, check_every, on_nonfinite):
        u = torch.zeros_like(bias)
        shift = 2 * resolvent.apply(alpha * bias)

        def step():
            nonlocal u
            u = resolvent.reflect(op.reflected_nonlinearity(u), shift)

        stats = _iterate(step, lambda: forward_residual(op, op.nonlinearity(u), bias), tol, max_iter,
                         check_every, on_nonfinite)
        return op.nonlinearity(u), stats

    @staticmethod
    def adjoint(op, g, d, alpha, resolvent: Resolvent, tol, max_iter, check_every, on_nonfinite):
        # u = d (v + alpha g); the reflection 2u - v is sign * v + 2 alpha d g with sign = 2d - 1
        v = torch.zeros_like(g)
        sign, shift = 2 * d - 1, 2 * alpha * d * g

        def step():
            nonlocal v
            v = resolvent.reflect_transpose(torch.addcmul(shift, sign, v))

        def current():
            return d * (v + alpha * g)

        stats = _iterate(step, lambda: adjoint_residual(op, current(), g, d), tol, max_iter, check_every,
                         on_nonfinite)
        return current(), stats


SPLITTING_METHODS = {cls.name: cls for cls in (ForwardBackward, PeacemanRachford)}
