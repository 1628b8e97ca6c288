"""The one dense float64 view of a monDEQ classifier, and its exact equilibrium.

Every bound and certificate that works with matrices reads the network here: W (with I - W >= m I
formed in float64), the input injection U and bias b, the read-out pulled back to the state
(C = (W_out R)^T), and the fixed point z = relu(W z + U x + b) solved exactly for an activation
pattern.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .fc import FullyConnectedOperator, monotone_weight
from .networks import readout_rows, require_mondeq

NEWTON_STEPS = 20  # pattern updates of the exact equilibrium (converges in 1-3 from the solver's state)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def fc_weights(net) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """W, U, b, W_out of an FC monDEQ in float64 on the CPU, from the weights themselves (no rounding
    beyond float64's in forming W = (1 - m) I - A^T A + B - B^T, so sym(I - W) >= m I to that accuracy)."""
    require_mondeq(net, "the dense view of an FC monDEQ", fc=True)
    op = net.mon.operator
    with torch.no_grad():
        W = monotone_weight(op.A.weight.detach().cpu().double(), op.B.weight.detach().cpu().double(), op.m)
        return (W, op.U.weight.detach().cpu().double(), op.U.bias.detach().cpu().double(),
                net.Wout.weight.detach().cpu().double())


def fc_matrices(net) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W, U, W_out of an FC monDEQ as float64 numpy arrays (the SDP and unrolled bounds)."""
    W, U, _, Wo = fc_weights(net)
    return W.numpy(), U.numpy(), Wo.numpy()


@dataclass
class DenseMonDEQ:
    """The dense float64 pieces of a monDEQ classifier, on the flattened input it is given."""
    W: torch.Tensor      # (h, h)
    U: torch.Tensor      # (h, d): the input injection, the network's own padding included
    b: torch.Tensor      # (h,)
    C: torch.Tensor      # (h, classes): W_out R pulled back to z
    b_out: torch.Tensor  # (classes,)
    G: torch.Tensor      # U U^T
    m: float


def live_units(net) -> torch.Tensor:
    """The units of a monDEQ classifier whose ReLU may be non-zero (conv operators' borders are pinned at zero)."""
    return net.mon.nonlinearity.live(net.mon.operator.state_size).cpu()


def dense_mondeq(net, in_shape=None) -> DenseMonDEQ:
    """float64 W, U, b, C of `net` for inputs of shape in_shape (before the network's own padding).

    FC: from the weights themselves (`fc_weights`; in_shape unused).  Otherwise U and b are read off
    input_term(prepare(.)) at zero and the unit vectors, so a padding is included; units that are zero
    whatever the input (masked borders) are left out: they feed nothing, and a principal submatrix of W
    keeps I - W >= m I.
    """
    require_mondeq(net, "the dense view of a monDEQ")
    op = net.mon.operator
    if isinstance(op, FullyConnectedOperator):
        W, U, b, _ = fc_weights(net)
        live = torch.ones(op.state_size, dtype=torch.bool)
    else:
        if in_shape is None:
            raise ValueError(f"dense_mondeq: the input shape of {type(op).__name__} is needed to read U off it")
        net64 = copy.deepcopy(net).cpu().double()
        op64 = net64.mon.operator
        d = math.prod(in_shape)
        with torch.no_grad():
            W = op64.dense_matrix()
            b = op64.input_term(net64.prepare(torch.zeros(1, *in_shape, dtype=torch.float64))).flatten(1)[0]
            unit = torch.eye(d, dtype=torch.float64).view(d, *in_shape)
            U = (op64.input_term(net64.prepare(unit)).flatten(1) - b).T
        live = live_units(net)
        W, U, b = W[live][:, live], U[live], b[live]
    return DenseMonDEQ(W=W, U=U, b=b, C=readout_rows(net).cpu()[live], b_out=net.Wout.bias.detach().cpu().double(),
                       G=U @ U.T, m=float(op.m))


def equilibrium(dm: DenseMonDEQ, x: torch.Tensor, z_start: torch.Tensor | None = None):
    """(z, v, ok): the exact fixed point z = relu(W z + U x + b) of each row of x (N, d).

    Semi-smooth Newton: solve the linear system of an activation pattern, take the pattern of the
    result, until it repeats; `ok` is False where it did not (a caller gives such rows no certificate
    and no gradient norm).  The pattern starts from z_start (the network's own solve), or else from
    Peaceman-Rachford iterations on the dense matrices to a relative residual of 1e-6.
    """
    u = x.double() @ dm.U.T + dm.b
    h = dm.W.shape[0]
    eye = torch.eye(h, dtype=torch.float64)
    start = _peaceman_rachford(dm, u) if z_start is None else z_start.double()
    active = start @ dm.W.T + u > 0
    for _ in range(NEWTON_STEPS):
        a = active.double()
        z = torch.linalg.solve(eye - dm.W * a[:, :, None] * a[:, None, :], (a * u).unsqueeze(-1)).squeeze(-1)
        v = z @ dm.W.T + u
        solved = active  # the pattern z was solved for
        active = v > 0
        if torch.equal(active, solved):
            break
    # z solves z_S = W_S z + u_S = v_S with z = 0 elsewhere, S the pattern solved for: the fixed point
    # iff v > 0 exactly on S (a row whose pattern still moved when the steps ran out is not one)
    return z, v, (active == solved).all(1)


def _peaceman_rachford(dm: DenseMonDEQ, u: torch.Tensor, tol: float = 1e-6, max_iter: int = 5000) -> torch.Tensor:
    """A start for Newton: z = relu(W z + u) to a relative residual <= tol (or max_iter iterations)."""
    h = dm.W.shape[0]
    eye = torch.eye(h, dtype=torch.float64)
    # step ~ 1 / sqrt(m ||I - W||), the usual choice for a strongly monotone, Lipschitz operator
    lip = float(torch.linalg.matrix_norm(eye - dm.W, ord=2))
    a = min(1.0, 1.0 / math.sqrt(max(dm.m, 1e-6) * max(lip, 1e-6)))
    V = torch.linalg.inv((1 + a) * eye - a * dm.W)
    z = torch.zeros_like(u)
    w = torch.zeros_like(u)
    for it in range(max_iter):
        half = 2 * z - w
        w = 2 * (half + a * u) @ V.T - half
        z = torch.relu(w)
        if it % 5 == 4:  # one host sync per five iterations
            residual = (z - torch.relu(z @ dm.W.T + u)).norm(dim=1) / (1e-12 + z.norm(dim=1) + u.norm(dim=1))
            if float(residual.max()) <= tol:
                break
    return z
