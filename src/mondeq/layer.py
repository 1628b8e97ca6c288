"""The implicit layer: solve for the equilibrium, differentiate implicitly."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import DivergedError, SolverError
from .nonlinearity import Nonlinearity, ReLU
from .operator import MonotoneOperator
from .splitting import SPLITTING_METHODS, ConvergenceTally, SolverConfig, SolveStats, solve

SHORT = {"forward": "fwd", "backward": "bwd"}  # the solve's prefix in the splitting config's keys


class MonDEQLayer(nn.Module):
    """z*(x) = prox(W z* + U x + b), with gradients from the adjoint equation.

    prox: `nonlinearity`, by default the paper's ReLU with the operator's border mask.

    The equilibrium is found without autograd; one application of the layer
    map at z* then re-enters the graph, and a hook on its output replaces the
    incoming gradient g by (I - W^T D)^-1 g, computed by the same splitting
    method on the adjoint system u = D (W^T u + g).
    """

    def __init__(self, operator: MonotoneOperator, solver: SolverConfig, name: str,
                 nonlinearity: Nonlinearity | None = None):
        super().__init__()
        self.operator = operator
        self.nonlinearity = ReLU(operator.border_mask()) if nonlinearity is None else nonlinearity
        self.solver = solver
        self.name = name
        self.alpha = float(solver.alpha)
        self.fwd_stats = SolveStats()
        self.bwd_stats = SolveStats()
        self.reset_tallies()
        self._counting = True  # off while alpha is tuned: those trial solves are not results
        self._warned = False

    @property
    def method(self):
        return SPLITTING_METHODS[self.solver.name]

    def _nonfinite(self, iters: int) -> None:
        raise DivergedError(
            f"{self.name} (m={self.operator.m}): NaN or Inf in the equilibrium state after "
            f"{iters} iterations of {self.solver.name} (alpha={self.alpha}); check the input and weights")

    def reset_tallies(self) -> None:
        self.tallies = {"forward": ConvergenceTally(), "backward": ConvergenceTally()}

    def _check_converged(self, stats: SolveStats, what: str, tol: float) -> None:
        if not self._counting:
            return
        self.tallies[what].add(stats)
        left = stats.samples - stats.converged_samples  # the batch's residual can hide a sample's
        if stats.converged and not left:
            return
        message = (f"{self.name} (m={self.operator.m}): {what} solve did not converge for {left} of "
                   f"{stats.samples} samples in {stats.iters} iterations: relative residual {stats.residual:.3g} "
                   f"(the batch's), {stats.worst_sample_residual:.3g} (the worst sample's) > tol {tol:g} "
                   f"(splitting={self.solver.name}, alpha={self.alpha})")
        if self.solver.on_nonconvergence == "error":
            short = SHORT[what]
            raise SolverError(f"{message}; splitting.on_nonconvergence=error (raise splitting.{short}_max_iter or "
                              f"splitting.{short}_tol, or use splitting.anderson or another splitting.alpha)")
        if not self._warned:
            self._warned = True
            warnings.warn(message + "; warned once per layer, counted in the output files", RuntimeWarning,
                          stacklevel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op, prox, cfg = self.operator, self.nonlinearity, self.solver
        bias = op.input_term(x)
        alpha = self.alpha  # the backward uses the alpha its resolvent was built with
        with torch.no_grad():
            resolvent = op.frozen("resolvent", lambda: self.method.resolvent(op, alpha), self.solver.name, alpha)
            z_star, self.fwd_stats = solve(
                self.method.forward_map(op, prox, bias.detach(), alpha, resolvent), cfg.fwd_tol,
                cfg.fwd_max_iter, cfg.check_every, cfg.anderson, self._nonfinite)
        self._check_converged(self.fwd_stats, "forward", cfg.fwd_tol)
        pre = op.multiply(z_star) + bias
        z = prox(pre)
        if z.requires_grad:
            d = prox.derivative(pre.detach())
            z.register_hook(lambda g: self._implicit_grad(g, d, alpha, resolvent))
        return z

    @torch.no_grad()
    def _implicit_grad(self, g: torch.Tensor, d: torch.Tensor, alpha: float, resolvent) -> torch.Tensor:
        op, cfg = self.operator, self.solver
        u, self.bwd_stats = solve(
            self.method.adjoint_map(op, g, d, alpha, resolvent), cfg.bwd_tol,
            cfg.bwd_max_iter, cfg.check_every, cfg.anderson, self._nonfinite)
        self._check_converged(self.bwd_stats, "backward", cfg.bwd_tol)
        return g + op.multiply_transpose(u)

    @torch.no_grad()
    def tune_alpha(self, x: torch.Tensor, max_alpha: float = 1.0) -> float:
        """Halve alpha from `max_alpha` while the forward iterations keep falling (as monotone_op_net)."""
        original = self.alpha
        self._counting = False

        def iters_at(alpha: float) -> int:
            self.alpha = alpha
            try:
                self(x)
            except DivergedError:  # FB diverges for too large an alpha
                return self.solver.fwd_max_iter + 1
            return self.fwd_stats.iters if self.fwd_stats.converged else self.solver.fwd_max_iter

        alpha = max_alpha
        try:
            best = iters_at(alpha)
            while alpha > 1e-4:
                n = iters_at(alpha / 2)
                if n > best:
                    break
                alpha, best = alpha / 2, n
        finally:
            self._counting = True
        self.alpha = original if best >= self.solver.fwd_max_iter else alpha
        return self.alpha
