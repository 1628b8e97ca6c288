"""Solving the project's SDPs: MOSEK when licensed, otherwise SCS, always reported.

cvxpy lists MOSEK as installed even without a licence; the solve then
raises mosek.Error (not a cvxpy SolverError), so both are caught and the
next solver is tried.  The report says which solver produced the number
and why others were skipped, so no bound is ever silently from another solver.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import cvxpy as cp
import numpy as np

DEFAULT_SOLVERS = ("MOSEK", "SCS")
log = logging.getLogger(__name__)
_SAID_UNAVAILABLE: set[str] = set()


def schur_rounding(evals) -> float:
    """The factor every a posteriori SDP check inflates its rho by: rho = lambda_max(C^T M^-1 C), a Schur
    complement computed in float64, errs by about cond(M) machine epsilons (M's eigenvalues `evals`,
    all > 0); 1e-12 (4500 epsilons) per unit of cond(M), and 1e-12 for the products, cover it."""
    lo, hi = float(min(evals)), float(max(abs(e) for e in evals))
    return 1 + 1e-12 * hi / lo + 1e-12


def schur_rho(M: np.ndarray, C: np.ndarray) -> float:
    """The a posteriori check of every SDP bound: rho = lambda_max(C^T M^-1 C) = ||chol(M)^-1 C||^2 for a
    symmetric M > 0 (float64, from the solver's multipliers made feasible), inflated by schur_rounding."""
    Y = np.linalg.solve(np.linalg.cholesky(M), C)
    return float(np.linalg.norm(Y, 2) ** 2) * schur_rounding(np.linalg.eigvalsh(M))

ACCEPTED = {cp.OPTIMAL}  # OPTIMAL_INACCURATE is reported as a failure, never as a number


@dataclass
class SDPReport:
    solver: str | None = None
    status: str = "not solved"
    seconds: float = 0.0
    value: float = math.nan
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ACCEPTED and math.isfinite(self.value)

    def as_dict(self) -> dict:
        return asdict(self)


def _solver_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [cp.error.SolverError]
    try:
        import mosek
        errors.append(mosek.Error)
    except ImportError:
        pass
    return tuple(errors)


def solve(problem: cp.Problem, solvers=DEFAULT_SOLVERS, options: dict | None = None) -> SDPReport:
    """Solve with the first solver that works; `options` maps solver name to its keyword arguments."""
    report = SDPReport()
    installed = set(cp.installed_solvers())
    for name in solvers:
        if name not in installed:
            report.skipped[name] = "not installed"
            continue
        start = time.perf_counter()
        try:
            problem.solve(solver=name, **(options or {}).get(name, {}))
        except _solver_errors() as exc:  # e.g. MOSEK without a licence file
            report.skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if name not in _SAID_UNAVAILABLE:  # one line per process, not one per SDP
                _SAID_UNAVAILABLE.add(name)
                log.warning(f"warning: SDP solver {name} is unavailable ({report.skipped[name].split('. ')[0]}); "
                            f"the next of {list(solvers)} solves instead (each result records its solver)")
            continue
        report.solver, report.status = name, problem.status
        report.seconds = time.perf_counter() - start
        report.value = float(problem.value) if problem.value is not None else math.nan
        return report
    report.status = "no solver succeeded"
    return report
