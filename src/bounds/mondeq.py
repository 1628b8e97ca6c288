"""Upper bounds on the Lipschitz constant of monDEQ classifiers.

Every bound is for the map from the input *as the network sees it*
(normalised pixels, before the network's own zero padding) to the logit
vector, in the l2 norm.  Each function returns a plain dict with at least
`value` (a float, or None when a solve failed; never NaN) and `seconds`;
the SDP bounds add `sdp_report` (solver, status, seconds, skipped) from
`src.bounds.sdp.solve`.

- `theorem1`: ||W_out||_2 ||U||_2 / m, the paper's number.
- `theorem1_pooled`: ||W_out R||_2 ||U||_2 / m with R the read-out (pooling).
- `sdp_diag`, `sdp_pairwise`: the diagonal-multiplier SDP (FC monDEQs).
- `unrolled`: the paper's Appendix D / Figure 7 (FC monDEQs).

Notation: z* = relu(W z* + U x + b), logits f(x) = W_out R z* + b_out, with
I - W >= m I (so that ||z*(x) - z*(y)|| <= ||U|| ||x - y|| / m, Theorem 1).
"""
from __future__ import annotations

import math
import time
import warnings

import cvxpy as cp
import numpy as np
import torch

from ..mondeq.fc import FullyConnectedOperator, monotone_weight
from ..mondeq.spectral import conv_spectrum
from ..mondeq.splitting import SPLITTING_METHODS, solve
from ..mondeq.networks import readout_rows
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


# --------------------------------------------------------------------------- helpers

def _is_mondeq(net) -> bool:
    return hasattr(net, "mon") and hasattr(net, "Wout") and hasattr(net.mon, "operator")


def _require_mondeq(net, what: str) -> None:
    if not _is_mondeq(net):
        raise TypeError(f"{what} applies to monDEQ classifiers (with .mon and .Wout), got {type(net).__name__}")


def _require_fc(net, what: str) -> None:
    _require_mondeq(net, what)
    if not isinstance(net.mon.operator, FullyConnectedOperator):
        raise TypeError(f"{what} is implemented for fully connected monDEQs only, "
                        f"got operator {type(net.mon.operator).__name__}")


def _np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def fc_weight64(op: FullyConnectedOperator) -> torch.Tensor:
    """W = (1-m) I - A^T A + B - B^T formed in float64 (so that sym(I - W) >= m I to float64 accuracy)."""
    return monotone_weight(op.A.weight.detach().cpu().double(), op.B.weight.detach().cpu().double(), op.m)


def _fc_matrices(net):
    """W, U, W_out of an FC monDEQ as float64 numpy arrays."""
    op = net.mon.operator
    return fc_weight64(op).cpu().numpy(), _np64(op.U.weight), _np64(net.Wout.weight)


def conv_input_norm(weight: torch.Tensor, size) -> float:
    """||U||_2 of the circular convolution `weight` on a size[0] x size[1] grid.

    The 2-D DFT block-diagonalises a circular convolution: the norm is the
    largest singular value over the per-frequency (C_out x C_in) matrices.
    The half spectrum (rfft2) suffices: the other half holds their conjugates.
    """
    spec = conv_spectrum(weight.detach().cpu().to(torch.float64), tuple(int(s) for s in size))
    return float(torch.linalg.matrix_norm(spec, ord=2).max())


def input_norm(op) -> float:
    """||U||_2 of the operator's input injection (on the padded grid for convs)."""
    if isinstance(op, FullyConnectedOperator):
        return float(np.linalg.norm(_np64(op.U.weight), 2))
    U = getattr(op, "U", None)
    if isinstance(U, torch.nn.Conv2d):
        if U.stride != (1, 1) or U.dilation != (1, 1) or U.kernel_size[0] % 2 == 0:
            raise NotImplementedError("input_norm: only stride-1 odd-kernel circular convs are handled")
        return conv_input_norm(U.weight, op.input_shape[1:])
    with torch.no_grad():  # any other operator: its dense input matrix (small sizes only)
        return float(np.linalg.norm(_np64(op.dense_input_matrix()), 2))


def output_readout_norm(net) -> float:
    """||W_out R||_2 exactly, from the (classes x classes) Gram matrix (W_out R)(W_out R)^T."""
    rows = readout_rows(net).cpu()
    gram = rows.T @ rows
    return float(torch.linalg.eigvalsh(gram).max().clamp_min(0).sqrt())


# --------------------------------------------------------------------------- Theorem 1

def theorem1(net) -> dict:
    """The paper's bound ||W_out||_2 ||U||_2 / m (Theorem 1 with the output layer).

    FC: matrix spectral norms.  Conv (single and multi-tier): ||U||_2 of the
    circular convolution on the grid the network actually uses (the input
    zero-padded to 30 x 30 for MNIST), exact via its FFT blocks.  The zero
    padding is an isometric embedding, so it leaves the bound unchanged.

    For conv nets this is the number of the paper's notebook (locuslab/
    lipschitz_mondeq, "Lipschitz Constant Camera-Ready"): ||W_out|| times
    ||U|| / m, with the 4x4 average pooling of the single-conv net NOT
    multiplied in (its norm is 1/4 <= 1, so omitting it keeps the bound valid
    but 4x looser; `theorem1_pooled` folds it in).  One difference: the
    notebook evaluates the FFT of U on the unpadded 28 x 28 grid, although
    the convolution runs on 30 x 30; we use 30 x 30 (the operator the network
    applies) and report the 28 x 28 value as `U_norm_paper_grid`.
    """
    _require_mondeq(net, "theorem1")
    start = time.perf_counter()
    op = net.mon.operator
    u = input_norm(op)
    wo = float(np.linalg.norm(_np64(net.Wout.weight), 2))
    out = {"value": wo * u / op.m, "U_norm": u, "Wout_norm": wo, "m": float(op.m)}
    U = getattr(op, "U", None)
    if isinstance(U, torch.nn.Conv2d):
        side = tuple(s - 2 for s in op.input_shape[1:])
        out["U_norm_paper_grid"] = conv_input_norm(U.weight, side)
        out["value_paper_grid"] = wo * out["U_norm_paper_grid"] / op.m
    out["seconds"] = time.perf_counter() - start
    return out


def theorem1_pooled(net) -> dict:
    """||W_out R||_2 ||U||_2 / m with R the read-out (pooling / last-tier slice).

    Valid because f = W_out R z* + b_out is the linear map W_out R after
    z*(x), which is ||U||/m-Lipschitz (Theorem 1), and never above
    `theorem1` since ||W_out R|| <= ||W_out|| ||R|| and ||R|| <= 1 for an
    average pooling or a coordinate slice.  For the multi-tier net, R is a
    coordinate projection (R R^T = I) and the value equals `theorem1`.
    ||W_out R|| is exact: the largest eigenvalue of the 10 x 10 Gram matrix.
    """
    _require_mondeq(net, "theorem1_pooled")
    start = time.perf_counter()
    op = net.mon.operator
    u = input_norm(op)
    wr = output_readout_norm(net)
    return {"value": wr * u / op.m, "U_norm": u, "Wout_readout_norm": wr, "m": float(op.m),
            "seconds": time.perf_counter() - start}


# --------------------------------------------------------------------------- the diagonal-multiplier SDP

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
        C = np.linalg.cholesky(M)
        Y = np.linalg.solve(C, lam[:, None] * self.F)
        rho = float(np.linalg.norm(Y, 2) ** 2) * sdp.schur_rounding(np.linalg.eigvalsh(M))
        return rho, lam

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
    _require_fc(net, method)
    W, U, Wo = _fc_matrices(net)
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


# --------------------------------------------------------------------------- unrolled monDEQs (Appendix D)

def unrolled_layers(W: np.ndarray, U: np.ndarray, Wo: np.ndarray, method: str, alpha: float,
                    b: np.ndarray | None = None):
    """Dense weights (W_1, W_u, W_f) of the paper's Appendix D unrolled network.

    FB: state [z; x];   W_1 = [alpha U; I],  W_u = [[(1-alpha) I + alpha W, alpha U], [0, I]],
        W_f = [W_out, 0];  ReLU on the z block.
    PR: state [u; z; x], V = (I + alpha (I - W))^-1;
        W_1 = [2 alpha V U; 2 alpha V U; I],
        W_u = [[I - 2V, 4V - 2I, 2 alpha V U], [I - 2V, 4V - 2I, 2 alpha V U], [0, 0, I]],
        W_f = [0, W_out, 0];  ReLU on the z block (the middle one).
    Returns (W_1, W_u, W_f, relu_slice, c) with c the bias every hidden layer
    adds (FB: [alpha b; 0], PR: [2 alpha V b; 2 alpha V b; 0]; zero if b is
    None); biases do not affect the Lipschitz constant.
    """
    h, d = U.shape
    I_h, I_d = np.eye(h), np.eye(d)
    b = np.zeros(h) if b is None else np.asarray(b, dtype=np.float64)
    if method == "fb":
        T = (1 - alpha) * I_h + alpha * W
        W1 = np.vstack([alpha * U, I_d])
        Wu = np.block([[T, alpha * U], [np.zeros((d, h)), I_d]])
        Wf = np.hstack([Wo, np.zeros((Wo.shape[0], d))])
        return W1, Wu, Wf, slice(0, h), np.concatenate([alpha * b, np.zeros(d)])
    if method == "pr":
        V = np.linalg.inv((1 + alpha) * I_h - alpha * W)
        VU = 2 * alpha * V @ U
        row = np.hstack([I_h - 2 * V, 4 * V - 2 * I_h, VU])
        W1 = np.vstack([VU, VU, I_d])
        Wu = np.vstack([row, row, np.hstack([np.zeros((d, 2 * h)), I_d])])
        Wf = np.hstack([np.zeros((Wo.shape[0], h)), Wo, np.zeros((Wo.shape[0], d))])
        Vb = 2 * alpha * V @ b
        return W1, Wu, Wf, slice(h, 2 * h), np.concatenate([Vb, Vb, np.zeros(d)])
    raise ValueError(f"unknown splitting method {method!r}; choose 'fb' or 'pr'")


def _unrolled_norms(W, U, Wo, method: str, alpha: float) -> tuple[float, float, float]:
    """||W_1||, ||W_u||, ||W_f|| of `unrolled_layers`, exactly but in reduced size.

    With U = P S Q^T (rank r), the x block splits into Q a (which U sees) and
    an orthogonal part that W_u maps by the identity, so ||W_u|| is the norm
    of the same block matrix with U replaced by P S and I_d by I_r (which is
    >= 1 anyway); likewise ||W_1|| = sqrt(1 + c ||M U||^2) for its stacked blocks.
    """
    h = W.shape[0]
    P, S, _ = np.linalg.svd(U, full_matrices=False)
    Ur = P * S
    r = Ur.shape[1]
    _, Wu, Wf, _, _ = unrolled_layers(W, Ur, Wo, method, alpha)
    if method == "fb":
        n1 = math.sqrt(1 + alpha ** 2 * float(S[0]) ** 2)
    else:
        V = np.linalg.inv((1 + alpha) * np.eye(h) - alpha * W)
        n1 = math.sqrt(1 + 2 * (2 * alpha * float(np.linalg.norm(V @ Ur, 2))) ** 2)
    assert Wu.shape[1] == (h if method == "fb" else 2 * h) + r
    return n1, float(np.linalg.norm(Wu, 2)), float(np.linalg.norm(Wf, 2))


def count_iterations(net, method: str, alpha: float, x: torch.Tensor, tol: float = 1e-3,
                     max_iter: int = 3000) -> int | None:
    """Iterations of the network's own FB/PR solver until the relative residual <= tol.

    Checked after every iteration (check_every=1); None if it diverges or
    does not converge within max_iter.
    """
    op = net.mon.operator
    split = SPLITTING_METHODS[method]

    def nonfinite(iters):
        raise FloatingPointError(iters)

    param = next(op.parameters())
    threads = torch.get_num_threads()
    if param.device.type == "cpu":
        torch.set_num_threads(1)  # tiny matmuls: two threads on two busy cores ran ~10x slower
    try:
        with torch.no_grad():
            bias = op.input_term(net.prepare(x.to(device=param.device, dtype=param.dtype)))
            resolvent = split.resolvent(op, alpha)
            _, stats = solve(split.forward_map(op, bias, alpha, resolvent), tol, max_iter, 1, 0, nonfinite)
    except FloatingPointError:
        return None
    finally:
        torch.set_num_threads(threads)
    return stats.iters if stats.converged else None


DEFAULT_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def unrolled(net, method: str, data: torch.Tensor, alphas=DEFAULT_ALPHAS, tol: float = 1e-3,
             max_iter: int = 3000) -> dict:
    """The naive bound of the unrolled monDEQ (paper Appendix D, Figure 7); FC monDEQs only.

    For each alpha: k = the iterations the network's own FB or PR solver
    needs on `data` (a batch of inputs) to reach relative residual `tol`;
    the equivalent depth-k network (`unrolled_layers`: W_1, then k-1 times
    W_u, then W_f with W_out) and its product of layer norms
    ||W_f|| ||W_u||^(k-1) ||W_1||.  This bounds the Lipschitz constant of
    the k-th iterate (which matches the monDEQ only up to `tol`), as in the
    paper.  Alphas where the solver diverges or does not converge get
    None.  Bounds can be astronomically large, so `log10` is reported too;
    `value` is the smallest bound over alphas.
    """
    _require_fc(net, "unrolled")
    if method not in ("fb", "pr"):
        raise ValueError(f"unknown splitting method {method!r}; choose 'fb' or 'pr'")
    start = time.perf_counter()
    W, U, Wo = _fc_matrices(net)
    alphas = [float(a) for a in alphas]
    iters, log10s, bounds, layer_norms = [], [], [], []
    for alpha in alphas:
        k = count_iterations(net, method, alpha, data, tol, max_iter)
        n1, nu, nf = _unrolled_norms(W, U, Wo, method, alpha)
        layer_norms.append({"first": n1, "middle": nu, "last": nf})
        iters.append(k)
        if k is None:
            log10s.append(None)
            bounds.append(None)
            continue
        lg = math.log10(nf) + math.log10(n1) + (k - 1) * math.log10(nu)
        log10s.append(lg)
        bounds.append(10.0 ** lg if lg < 300 else math.inf)
    finite = [b for b in bounds if b is not None]
    best = min(finite) if finite else None
    if best is not None and not math.isfinite(best):
        warnings.warn("unrolled: every bound overflows float64; see log10", RuntimeWarning)
        best = None
    return {"value": best, "method": method, "alphas": alphas, "iters": iters, "bound": bounds,
            "log10": log10s, "layer_norms": layer_norms, "tol": tol,
            "min_log10": min((v for v in log10s if v is not None), default=None),
            "seconds": time.perf_counter() - start}
