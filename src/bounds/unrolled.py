"""The naive bound of the unrolled monDEQ (paper Appendix D, Figure 7): the FB or PR iteration as a
deep network, bounded by the product of its layer norms.  FC monDEQs only.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from ..mondeq.dense import fc_matrices
from ..mondeq.networks import require_mondeq
from ..mondeq.splitting import SPLITTING_METHODS, solve


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
            _, stats = solve(split.forward_map(op, net.mon.nonlinearity, bias, alpha, resolvent), tol, max_iter, 1, 0, nonfinite)
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
    require_mondeq(net, "unrolled", fc=True)
    if method not in ("fb", "pr"):
        raise ValueError(f"unknown splitting method {method!r}; choose 'fb' or 'pr'")
    start = time.perf_counter()
    W, U, Wo = fc_matrices(net)
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
