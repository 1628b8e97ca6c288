"""The diagonal-multiplier SDP bounds of FC monDEQ classifiers: `sdp_diag` (one constant) and
`sdp_pairwise` (one per class pair).  Each reported value is recomputed exactly from the solver's
multipliers (`_DiagSDP.certify`), so it never rests on the solver's tolerance.
"""
from __future__ import annotations

import math
import time

import cvxpy as cp
import numpy as np

from ..mondeq.dense import fc_matrices
from ..mondeq.networks import require_mondeq
from . import sdp

# SCS tolerances.  The reported values never rely on them for validity (they are
# recomputed exactly from the multipliers, `_DiagSDP.certify`); they set how
# close to the optimum the certified value is.  Measured on width-40 nets:
# eps 1e-7 certifies within ~2e-7 (relative, in rho) of the optimum, 1e-5 within
# ~6e-4, at a third of the iterations (the 45 pair problems use 1e-5).
DIAG_EPS = 1e-7
PAIR_EPS = 1e-5
SCS_MAX_ITERS = 200_000


def _solver_options(eps: float, warm: bool = False) -> dict:
    scs = {"eps_abs": eps, "eps_rel": eps, "max_iters": SCS_MAX_ITERS}
    if warm:
        scs["warm_start"] = True
    return {"SCS": scs}


class _DiagSDP:
    """min rho s.t. [[L K + K^T L - G, L F], [F^T L, rho I]] >= 0, L = diag(lam) >= 0.

    The normalised form of the SDP in `sdp_diag`: K = (I - W)/m (so that
    sym(K) >= I), G = W_out^T W_out / ||W_out||^2 (a Parameter, swapped for
    the class-pair problems), F = the h x r factor of U U^T over ||U||.
    Then L = I, rho = 1 is feasible (it is Theorem 1), and the bound is
    sqrt(rho) * ||W_out|| ||U|| / m.  One compiled problem serves all solves.
    """

    def __init__(self, W: np.ndarray, U: np.ndarray, m: float):
        h = W.shape[0]
        self.h, self.m = h, float(m)
        self.K = (np.eye(h) - W) / m
        P, S, _ = np.linalg.svd(U, full_matrices=False)
        self.u_norm = float(S[0]) if S.size else 0.0
        self.F = (P * S) / self.u_norm if self.u_norm > 0 else np.zeros((h, 1))
        r = self.F.shape[1]
        self.G = cp.Parameter((h, h), symmetric=True)
        self.lam = cp.Variable(h, nonneg=True)
        self.rho = cp.Variable()
        L = cp.diag(self.lam)
        top = L @ self.K + self.K.T @ L - self.G
        lmi = cp.bmat([[top, L @ self.F], [self.F.T @ L, self.rho * np.eye(r)]])
        self.problem = cp.Problem(cp.Minimize(self.rho), [0.5 * (lmi + lmi.T) >> 0])

    def certify(self, lam: np.ndarray, G: np.ndarray) -> tuple[float, np.ndarray]:
        """The smallest rho the LMI allows for this lam, in exact float64 linear algebra.

        Solver output is only approximately feasible, so the number we report
        is recomputed from the multipliers: with M = L K + K^T L - G > 0, the
        LMI holds iff rho >= lambda_max(F^T L M^-1 L F) (Schur complement).
        If M is not positive definite, lam is raised by delta: since
        K + K^T >= 2 I, M grows by at least 2 delta I.
        """
        lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
        sym_k = 0.5 * (self.K + self.K.T)

        def lhs(l):
            LK = l[:, None] * self.K
            M = LK + LK.T - G
            return 0.5 * (M + M.T)

        M = lhs(lam)
        floor = 1e-9 * max(1.0, float(np.abs(M).max()))
        e_min = float(np.linalg.eigvalsh(M)[0])
        if e_min < floor:
            k_min = float(np.linalg.eigvalsh(sym_k)[0])
            lam = lam + (floor - e_min) / (2 * max(k_min, 1e-12))
            M = lhs(lam)
        return sdp.schur_rho(M, lam[:, None] * self.F), lam

    def solve(self, G: np.ndarray, solvers=sdp.DEFAULT_SOLVERS, eps: float = DIAG_EPS, warm: bool = False):
        self.G.value = 0.5 * (G + G.T)
        report = sdp.solve(self.problem, solvers=solvers, options=_solver_options(eps, warm))
        if not report.ok or self.lam.value is None:
            return None, None, report
        rho, lam = self.certify(self.lam.value, self.G.value)
        return rho, lam, report


def _report_dict(report) -> dict:
    """sdp.SDPReport as a dict, with a non-finite objective as None (never NaN in bounds.json)."""
    out = report.as_dict()
    if not (isinstance(out.get("value"), float) and math.isfinite(out["value"])):
        out["value"] = None
    return out


def _sdp_failure(report, start) -> dict:
    return {"value": None, "status": report.status, "sdp_report": _report_dict(report),
            "seconds": time.perf_counter() - start}


def _diag_problem(net, method: str):
    """The FC monDEQ's diagonal SDP, W_out, ||W_out|| and Theorem 1's ||W_out|| ||U|| / m."""
    require_mondeq(net, method, fc=True)
    W, U, Wo = fc_matrices(net)
    m = float(net.mon.operator.m)
    prob = _DiagSDP(W, U, m)
    wo_norm = float(np.linalg.norm(Wo, 2))
    return prob, Wo, wo_norm, wo_norm * prob.u_norm / m


def sdp_diag(net, solvers=sdp.DEFAULT_SOLVERS, eps: float = DIAG_EPS) -> dict:
    """The diagonal-multiplier SDP bound for an FC monDEQ.

    With Lambda >= 0 diagonal, minimise rho subject to

        [[2 Lambda - Lambda W - W^T Lambda - W_out^T W_out, Lambda U],
         [U^T Lambda,                                       rho I   ]] >= 0,

    and L = sqrt(rho) bounds the Lipschitz constant of x -> W_out z*(x).

    Why it certifies the bound.  Take two inputs, dx = x - y, dz = z*(x) - z*(y),
    dv = W dz + U dx (pre-activations; z* = relu(v)).  ReLU is slope-restricted
    in [0, 1], so per unit dz_i (dv_i - dz_i) >= 0; weighting by Lambda_ii >= 0,

        s := dz^T Lambda (W dz + U dx - dz) >= 0.                       (IQC)

    Applying the LMI to (dz, -dx) gives
        dz^T (2 Lambda - Lambda W - W^T Lambda - W_out^T W_out) dz
        - 2 dz^T Lambda U dx + rho |dx|^2  =  rho |dx|^2 - |W_out dz|^2 - 2 s  >= 0,
    hence |W_out dz|^2 <= rho |dx|^2 - 2 s <= rho |dx|^2.  (The sign of the
    off-diagonal block is immaterial: diag(I, -I) congruence.)  Lambda = lambda I
    with lambda = ||W_out||^2 / m gives rho = ||W_out||^2 ||U||^2 / m^2 because
    sym(I - W) >= m I, so the SDP is never looser than Theorem 1.

    Reduced form: with rho > 0 the LMI is equivalent (Schur complement) to
    2 Lambda - Lambda W - W^T Lambda - W_out^T W_out - Lambda U U^T Lambda / rho >= 0,
    which depends on U only through U U^T = F F^T, F = P S (SVD U = P S Q^T,
    h x h); so U is replaced by F and the LMI is 2h x 2h.  The problem is
    solved in normalised units (see `_DiagSDP`) and the reported value is
    recomputed exactly from the solver's multipliers (`_DiagSDP.certify`),
    so an approximately feasible solver point can never give an invalid
    number.  A status other than 'optimal' is reported as a failure
    (`value` None).  `multipliers` are Lambda in the original units.
    """
    start = time.perf_counter()
    prob, Wo, wo_norm, t1 = _diag_problem(net, "sdp_diag")
    m = float(net.mon.operator.m)
    rho, lam, report = prob.solve(Wo.T @ Wo / wo_norm ** 2, solvers, eps)
    if rho is None:
        return _sdp_failure(report, start)
    value = math.sqrt(rho) * t1
    return {"value": value, "theorem1": t1, "ratio_to_theorem1": math.sqrt(rho),
            "solver_value": math.sqrt(max(float(prob.rho.value), 0.0)) * t1,
            "multipliers": (lam * wo_norm ** 2 / m).tolist(),
            "sdp_report": _report_dict(report), "status": report.status,
            "seconds": time.perf_counter() - start}


def sdp_pairwise(net, solvers=sdp.DEFAULT_SOLVERS, eps: float = PAIR_EPS) -> dict:
    """L_ij, the SDP bound of `sdp_diag` for f_i - f_j, for every class pair.

    W_out is replaced by (e_i - e_j)^T W_out.  Since |f_i - f_j| <= sqrt(2) |f|
    pointwise, L_ij <= sqrt(2) * sdp_diag (the scaled diagonal solution is
    feasible).  One compiled cvxpy problem (W_out^T W_out is a Parameter) is
    re-solved for the pairs (warm starts from the previous pair did not save
    SCS iterations); after the first solve only the solver that worked is
    tried.  SCS runs at eps = PAIR_EPS; each value is certified exactly.  `matrix` is the symmetric classes x
    classes list (zero diagonal, None where a solve failed); `value` is the
    largest L_ij (None if any failed).
    """
    start = time.perf_counter()
    prob, Wo, wo_norm, scale = _diag_problem(net, "sdp_pairwise")
    c = Wo.shape[0]
    matrix: list[list[float | None]] = [[0.0] * c for _ in range(c)]
    statuses, first_report, n_failed, solve_seconds = {}, None, 0, 0.0
    for i in range(c):
        for j in range(i + 1, c):
            w = (Wo[i] - Wo[j]) / wo_norm
            rho, _, report = prob.solve(np.outer(w, w), solvers, eps)
            solve_seconds += report.seconds
            if first_report is None:
                first_report = report
                if report.solver is not None:
                    solvers = (report.solver,)
            statuses[report.status] = statuses.get(report.status, 0) + 1
            if rho is None:
                n_failed += 1
                matrix[i][j] = matrix[j][i] = None
            else:
                matrix[i][j] = matrix[j][i] = math.sqrt(rho) * scale
    ok = n_failed == 0
    rep = _report_dict(first_report if first_report is not None else sdp.SDPReport())
    rep.update({"status": "optimal" if ok else f"{n_failed} of {c * (c - 1) // 2} solves failed",
                "statuses": statuses, "seconds": solve_seconds, "value": None})
    values = [v for row in matrix for v in row if v is not None]
    return {"value": max(values) if ok and values else None, "matrix": matrix,
            "status": rep["status"], "sdp_report": rep, "seconds": time.perf_counter() - start}
