"""Operator-splitting solvers for the monDEQ equilibrium and its adjoint.

Forward problem:  z = prox(W z + b)            (b = U x + bias; prox: nonlinearity.py)
Adjoint problem:  u = D (W^T u + g)            (D = prox' at the equilibrium)
The implicit gradient is then g + W^T u (see layer.py).

A method (a `SplittingMethod`, registered by name in SPLITTING_METHODS) turns a
problem into a `FixedPointMap` x -> T(x) on its iterated variable; every method
has the same three functions with the same signatures.  `solve` iterates a map
(plainly, or with Anderson acceleration) without touching the host, and
synchronises only every `check_every` iterations, when the map also returns each
sample's equilibrium residual norm at the point it evaluated (the point itself is
formed once, for the last check).  The residual comes from quantities the step
computes anyway (PR: W x follows from the resolvent's own equation), so a check
costs a few elementwise ops and one norm pass, never an extra product with W: on
small states (FC) the count of ops, not their arithmetic, is the cost.  A solve
returns a `SolveStats` record, per sample as well as for the batch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
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
    and as a tensor on the solve's device each sample's residual at the returned point; `sample_iters`
    gives the iterations after which each sample's checked residual first reached the tolerance."""

    iters: int = 0
    residual: float = math.nan
    seconds: float = 0.0
    converged: bool = False
    samples: int = 0
    converged_samples: int = 0
    worst_sample_residual: float = math.nan
    sample_residuals: Optional[torch.Tensor] = None
    tol: float = math.nan
    eps: float = _EPS
    checks: list = field(default_factory=list)  # per check: (iterations, norms as FixedPointMap's step gives)

    @property
    def sample_iters(self) -> Optional[torch.Tensor]:
        """Per sample, the iterations after which its checked residual first reached tol; -1: never
        (worked out when asked: a solve's own work is only its checks); None before a solve."""
        if not self.checks:
            return None
        iters, norms = zip(*self.checks)
        reached = _relative(torch.stack(norms), self.eps) <= self.tol
        first = torch.tensor(iters, device=reached.device)[reached.to(torch.uint8).argmax(0)]
        return torch.where(reached.any(0), first, -1)


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


Checked = Optional[tuple[torch.Tensor, Callable[[], torch.Tensor]]]


@dataclass
class FixedPointMap:
    """x -> T(x) from `start`; step(x, check) returns T(x) and, when `check`, (norms, point): norms[0]
    the samples' residual norms at the checked point and norms[1] their reference norms, relative as
    norms[0] / (eps + norms[1]) (`Residual`), and `point()` the checked point (called once, after the
    solve's last check: a check computes no point it may not return)."""

    start: torch.Tensor
    step: Callable[[torch.Tensor, bool], tuple[torch.Tensor, Checked]]
    eps: float = _EPS


def _relative(norms: torch.Tensor, eps: float) -> torch.Tensor:
    """Each sample's relative residual from its norms (..., 2, samples) as a map's check gives them."""
    return norms[..., 0, :] / (eps + norms[..., 1, :])


class Residual:
    """A map's check buffer: `diff` and `ref` written in place, then one norm pass gives both per sample."""

    def __init__(self, like: torch.Tensor):
        self.buffer = like.new_empty((2,) + like.shape)
        self.diff, self.ref = self.buffer

    def norms(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.buffer, dim=2)


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
    stats = SolveStats(tol=tol, eps=fp.eps)
    start = time.perf_counter()
    step = Anderson(fp.step, anderson, fp.start) if anderson else fp.step
    x = fp.start
    while stats.iters < max_iter:
        n = min(check_every, max_iter - stats.iters)
        for _ in range(n - 1):
            x, _ = step(x, False)
        x, (norms, point) = step(x, True)
        stats.iters += n
        stats.checks.append((stats.iters, norms))
        diff, ref = torch.linalg.vector_norm(norms, dim=1).tolist()  # the check's one host sync
        stats.residual = diff / (fp.eps + ref)
        if not math.isfinite(stats.residual):
            on_nonfinite(stats.iters)
        if stats.residual <= tol:
            stats.converged = True
            break
    relative = stats.sample_residuals = _relative(norms, fp.eps)
    # one more host sync per solve for the per-sample count
    count, worst = torch.stack([(relative <= tol).sum().to(relative.dtype), relative.max()]).tolist()
    stats.samples, stats.converged_samples, stats.worst_sample_residual = len(relative), int(count), worst
    stats.seconds = time.perf_counter() - start
    return point(), stats


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
        residual = Residual(bias)

        def step(z, check):
            pre = op.multiply(z) + bias
            z_next = prox((1 - alpha) * z + alpha * pre)
            if not check:
                return z_next, None
            torch.sub(z, prox(pre), out=residual.diff)
            residual.ref.copy_(z)
            return z_next, (residual.norms(), lambda: z)

        return FixedPointMap(torch.zeros_like(bias), step)

    @staticmethod
    def adjoint_map(op, g, d, alpha, resolvent):
        residual = Residual(g)

        def step(u, check):
            pre = op.multiply_transpose(u) + g
            u_next = d * ((1 - alpha) * u + alpha * pre)
            if not check:
                return u_next, None
            torch.sub(u, d * pre, out=residual.diff)
            residual.ref.copy_(u)
            return u_next, (residual.norms(), lambda: u)

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
        halfway, residual = _Halfway(alpha), Residual(bias)

        def step(u, check):
            w = prox.reflect(u)
            u_next = resolvent.reflect(w, shift)
            if not check:
                return u_next, None
            # 2x and twice the residual x - prox(W x + b): doubling is exact, so is the relative residual
            twice = torch.add(u_next, w, out=residual.ref)
            torch.sub(twice, prox(halfway(u_next, w)), alpha=2, out=residual.diff)
            return u_next, (residual.norms(), lambda: twice / 2)

        return FixedPointMap(torch.zeros_like(bias), step, eps=2 * _EPS)

    @staticmethod
    def adjoint_map(op, g, d, alpha, resolvent):
        # u = d (v + alpha g); the reflection 2u - v is sign * v + 2 alpha d g with sign = 2d - 1
        sign, shift, dg = 2 * d - 1, 2 * alpha * d * g, d * g
        halfway, residual = _Halfway(alpha), Residual(g)

        def step(v, check):
            y = torch.addcmul(shift, sign, v)
            v_next = resolvent.reflect_transpose(y)
            if not check:
                return v_next, None
            # x = R^T y: 2x and twice the residual x - d (W^T x + g), as in the forward map
            twice = torch.add(v_next, y, out=residual.ref)
            torch.sub(twice, torch.addcmul(dg, d, halfway(v_next, y)), alpha=2, out=residual.diff)
            return v_next, (residual.norms(), lambda: twice / 2)

        return FixedPointMap(torch.zeros_like(g), step, eps=2 * _EPS)


class _Halfway:
    """W x (+ b) at the resolvent point x = (r + w) / 2 of a Peaceman-Rachford step r = (2R - I) w (+ shift):
    from x = R(w + alpha b), W x + b = x + (x - w) / alpha = c (r + e w) with c = (alpha + 1) / (2 alpha),
    e = (alpha - 1) / (alpha + 1); r itself for alpha = 1, no product with W."""

    def __init__(self, alpha: float):
        self.unit = alpha == 1
        self.c, self.e = (alpha + 1) / (2 * alpha), (alpha - 1) / (alpha + 1)

    def __call__(self, r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return r if self.unit else torch.add(r, w, alpha=self.e).mul_(self.c)
