"""Branch and bound over the unstable neurons of a monDEQ's equilibrium: the exact certificate's stage for
balls with too many unstable neurons to enumerate their regions (src/certify/exact.py).

With pre-activation bounds l <= v <= u proved over a ball S (src/certify/balls.py), the set

    {(x, z, v) : x in S, v = W z + U x + b, l <= v <= u, z = relu(v)}

holds exactly one point per x, the equilibrium (a ReLU monDEQ has one).  Relaxing z = relu(v) of each
unstable neuron (l_i < 0 < u_i) to its triangle (z_i >= 0, z_i >= v_i, z_i <= s_i (v_i - l_i),
s_i = u_i / (u_i - l_i)) gives a linear programme whose minimum of a margin f_y - f_j is below the
margin's minimum over S.  Splitting a neuron (v_i >= 0 with z_i = v_i, or v_i <= 0 with z_i = 0) halves
the set and tightens both halves; with every neuron split, the programme of an l_inf ball is the exact
minimum over that activation region (an l2 ball enters the programme through its bounding box only).

HiGHS solves the programmes; its row multipliers y only propose.  The bound is Lagrangian duality
evaluated here in float64 (Neumaier and Shcherbina, Math. Programming 99, 2004): for every y of the
right signs, with A w the rows and r = c - A^T y,

    c^T w >= sum_rows y_r (the row's bound y_r points at) + sum_columns min over w_k's range of r_k w_k,

the input part over S itself by its support function; it must exceed ROUNDING of the magnitudes summed
(src/certify/rules.py), so neither the solver's tolerances nor rounding here can certify.

The bounds l, u at the root: the monotone bound over S (with d = dz the change of the state,
||dz|| <= ||U_K dx|| / m on the neurons K not provably inactive, src/certify/local.py), then each
unstable neuron's min and max of v_i by the programme itself, `tighten` passes.  Nodes are searched
depth first, splitting the neuron whose triangle costs the worst class's bound most (|y_i| times the
triangle's height); each programme's minimiser is tried as a counterexample on the exact model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..mondeq.dense import DenseMonDEQ
from .balls import Ball
from .rules import ROUNDING

ROBUST, NOT_ROBUST, UNDECIDED = 1, 0, -1


@dataclass
class Node:
    """Pre-activation bounds proved on a part of the ball, and the classes not yet excluded there."""
    lo: np.ndarray      # (h,)
    hi: np.ndarray
    classes: list[int]  # indices into the margins' columns


def monotone_bounds(dm: DenseMonDEQ, ball: Ball, v0: torch.Tensor):
    """(lo, hi) (h,) of the pre-activations over the ball (one row): |v_i - v0_i| <= ||W_iK|| R_K / m +
    max |U_i dx|, R_K bounding ||U_K dx|| by the rows' own maxima, K the neurons not provably inactive."""
    mag = ball.magnitude(dm.U[None])[0]                                              # (h,) max |U_i dx|
    keep = torch.ones_like(v0, dtype=torch.bool)
    for _ in range(len(v0) + 1):
        k = keep.double()
        radius = (mag.square() * k).sum().sqrt() / dm.m
        reach = (dm.W * k).norm(dim=1) * radius + mag
        reach = reach + ROUNDING * (reach + v0.abs())
        now = keep & ~(v0 + reach <= 0)
        if torch.equal(now, keep):
            break
        keep = now
    return (v0 - reach).numpy(), (v0 + reach).numpy()


class Relaxation:
    """The triangle programme of one point (one HiGHS model, rebuilt from bounds in place).

    Columns w = [dx (d), z (h), v (h)] with dx = x - x0; rows: v - W z - U dx = u0 (h), then per neuron
    z - v >= 0 and z - s v <= t (both free when the neuron is provably off).
    """

    def __init__(self, dm: DenseMonDEQ, ball: Ball):
        import highspy

        self.dm, self.ball = dm, ball
        W, U = dm.W.numpy(), dm.U.numpy()
        self.h, self.d = h, d = W.shape[0], U.shape[1]
        x0 = ball.centre[0].numpy()
        self.u0 = U @ x0 + dm.b.numpy()
        self.u0_size = np.abs(U) @ np.abs(x0) + np.abs(dm.b.numpy())
        self.U_abs_T, self.W_abs_T = np.abs(U).T, np.abs(W).T
        a, b = ball.interval((1, d))
        r = float(ball.radius[0])
        self.dx_lo = np.maximum(a.view(-1).numpy(), -r)   # an l2 ball's bounding box, for the programme
        self.dx_hi = np.minimum(b.view(-1).numpy(), r)
        eye = sp.identity(h, format="csr")
        self.s_set = np.ones(h)
        A = sp.bmat([[-sp.csr_matrix(U), -sp.csr_matrix(W), eye],
                     [None, eye, -eye],
                     [None, eye, -eye]], format="csc")
        self.rows_v = 2 * h + np.arange(h)                  # where s sits: row z_i - s_i v_i <= t_i
        self.cols_v = d + h + np.arange(h)
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        self.highs.setOptionValue("random_seed", 0)
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = d + 2 * h, 3 * h
        lp.col_cost_ = np.zeros(d + 2 * h)
        lp.col_lower_ = np.concatenate([self.dx_lo, np.zeros(2 * h)])
        lp.col_upper_ = np.concatenate([self.dx_hi, np.zeros(2 * h)])
        lp.row_lower_ = np.concatenate([self.u0, np.full(2 * h, -highspy.kHighsInf)])
        lp.row_upper_ = np.concatenate([self.u0, np.full(2 * h, highspy.kHighsInf)])
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr
        lp.a_matrix_.index_ = A.indices
        lp.a_matrix_.value_ = A.data
        self.highs.passModel(lp)
        self.inf = highspy.kHighsInf
        self.infeasible = highspy.HighsModelStatus.kInfeasible
        self.solves = 0

    def set_bounds(self, lo: np.ndarray, hi: np.ndarray):
        """The programme of the part of the ball where lo <= v <= hi."""
        h, d = self.h, self.d
        on, off = lo >= 0, hi <= 0
        unstable = ~on & ~off
        width = np.where(unstable, hi - lo, 1.0)
        s = np.where(unstable, hi / width, 1.0)
        t = np.where(unstable, -s * lo, 0.0)
        self.lo, self.hi, self.s, self.t = lo, hi, s, t
        self.z_lo, self.z_hi = np.maximum(lo, 0), np.maximum(hi, 0)
        self.z_hi = np.where(off, 0.0, self.z_hi)
        cols = np.arange(d, d + 2 * h)
        self.highs.changeColsBounds(2 * h, cols, np.concatenate([self.z_lo, lo]), np.concatenate([self.z_hi, hi]))
        free_lo, free_hi = np.full(h, -self.inf), np.full(h, self.inf)
        a_lo = np.where(off, free_lo, 0.0)
        b_hi = np.where(off, free_hi, t)
        rows = np.arange(h, 3 * h)
        self.highs.changeRowsBounds(2 * h, rows, np.concatenate([a_lo, free_lo]), np.concatenate([free_hi, b_hi]))
        for i in np.nonzero(s != self.s_set)[0]:  # the coefficients the model holds
            self.highs.changeCoeff(int(self.rows_v[i]), int(self.cols_v[i]), -float(s[i]))
        self.s_set = s
        self.off = off

    def minimise(self, c_z: np.ndarray, c_v: np.ndarray, const: float, size_c: np.ndarray):
        """(rigorous lower bound, its allowance, dx of the minimiser or None, multipliers of the triangles'
        upper rows) of c_z^T z + c_v^T v + const over the programme; size_c bounds |c_z| against cancellation."""
        h, d = self.h, self.d
        self.highs.changeColsCost(2 * h, np.arange(d, d + 2 * h), np.concatenate([c_z, c_v]))
        self.highs.run()
        self.solves += 1
        if self.highs.getModelStatus() == self.infeasible:
            if self.empty():
                return math.inf, 0.0, None, np.zeros(h)
            y, dx = np.zeros(3 * h), None   # the bound still holds for y = 0
        else:
            sol = self.highs.getSolution()
            y = np.asarray(sol.row_dual, dtype=np.float64)
            dx = np.asarray(sol.col_value[:d], dtype=np.float64) if sol.value_valid else None
        value, size = self.bound(y, c_z, c_v, const, size_c)
        return value, size, dx, -np.minimum(y[2 * h:], 0)

    def empty(self) -> bool:
        """The programme is proved infeasible (this part of the ball holds no equilibrium): its dual ray y
        (either sign) gives 0 >= a bound > 0 for the zero objective."""
        _, has_ray, ray = self.highs.getDualRay()
        if not has_ray:
            return False
        zero = np.zeros(self.h)
        return any(_proved(*self.bound(sign * np.asarray(ray, dtype=np.float64), zero, zero, 0.0, zero))
                   for sign in (1.0, -1.0))

    def bound(self, y: np.ndarray, c_z, c_v, const: float, size_c):
        """Lagrangian duality's bound for multipliers y (any values: signs are clipped), and its allowance."""
        h = self.h
        yE = y[:h]
        yA = np.where(self.off, 0.0, np.maximum(y[h:2 * h], 0))     # z - v >= 0
        yB = np.where(self.off, 0.0, np.minimum(y[2 * h:], 0))      # z - s v <= t
        U, W = self.dm.U.numpy(), self.dm.W.numpy()
        r_dx = U.T @ yE
        r_z = c_z + W.T @ yE - yA - yB
        r_v = c_v - yE + yA + self.s * yB
        dx_part = -float(self.ball.support(-torch.from_numpy(r_dx)[None])[0])
        z_part = np.minimum(r_z * self.z_lo, r_z * self.z_hi)
        v_part = np.minimum(r_v * self.lo, r_v * self.hi)
        value = const + yE @ self.u0 + yB @ self.t + dx_part + z_part.sum() + v_part.sum()
        mag_z = np.maximum(np.abs(self.z_lo), np.abs(self.z_hi))
        mag_v = np.maximum(np.abs(self.lo), np.abs(self.hi))
        size = (abs(const) + np.abs(yE) @ self.u0_size + np.abs(yB) @ np.abs(self.t)
                + float(self.ball.magnitude(torch.from_numpy(r_dx)[None])[0])
                + float(self.ball.magnitude(torch.from_numpy(self.U_abs_T @ np.abs(yE))[None])[0])
                + (size_c + self.W_abs_T @ np.abs(yE) + np.abs(yA) + np.abs(yB)) @ mag_z
                + (np.abs(c_v) + np.abs(yE) + np.abs(yA) + np.abs(self.s * yB)) @ mag_v)
        return float(value), float(size)


def _proved(value: float, size: float) -> bool:
    return value - ROUNDING * size > 0


def tighten(rel: Relaxation, lo: np.ndarray, hi: np.ndarray, passes: int):
    """Each unstable neuron's min and max of v_i over the programme, bounds replaced as soon as proved."""
    h = rel.h
    zero = np.zeros(h)
    lo, hi = lo.copy(), hi.copy()
    for _ in range(passes):
        moved = False
        for i in np.nonzero((lo < 0) & (hi > 0))[0]:
            for sign in (1.0, -1.0):
                if not (lo[i] < 0 < hi[i]):
                    break
                c_v = zero.copy()
                c_v[i] = sign
                rel.set_bounds(lo, hi)
                value, size, _, _ = rel.minimise(zero, c_v, 0.0, zero)
                proved = value - ROUNDING * size
                if sign > 0 and proved > lo[i]:
                    lo[i], moved = proved, True
                elif sign < 0 and -proved < hi[i]:
                    hi[i], moved = -proved, True
        if not moved:
            break
    return lo, hi


def branch_and_bound(dm: DenseMonDEQ, ball: Ball, label: int, v0: torch.Tensor, max_nodes: int, tighten_passes: int,
                     verify):
    """(status, counterexample dx + x0 (d,) or None, programmes solved) of one point (ball: its one row).

    verify(x (n, d)) -> (n,) bool: the exact model's verdict on candidate counterexamples.
    """
    lo, hi = monotone_bounds(dm, ball, v0)
    rel = Relaxation(dm, ball)
    lo, hi = tighten(rel, lo, hi, tighten_passes)
    others = [j for j in range(dm.C.shape[1]) if j != label]
    C, b_out = dm.C.numpy(), dm.b_out.numpy()
    objectives = [(C[:, label] - C[:, j], float(b_out[label] - b_out[j]),
                   np.abs(C[:, label]) + np.abs(C[:, j]) + 0.0) for j in others]
    zero = np.zeros(rel.h)
    x0 = ball.centre[0].numpy()
    stack = [Node(lo, hi, list(range(len(others))))]
    nodes = 0
    while stack:
        node = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            return UNDECIDED, None, rel.solves
        rel.set_bounds(node.lo, node.hi)
        still, worst, score = [], math.inf, None
        for k in node.classes:
            c_z, const, size_c = objectives[k]
            value, size, dx, tri = rel.minimise(c_z, zero, const, size_c)
            if value == math.inf:   # no equilibrium in this part of the ball: every class is excluded
                still = []
                break
            if _proved(value, size):
                continue
            still.append(k)
            if dx is not None:
                x = torch.from_numpy(x0 + dx)[None]
                if bool(verify(x)[0]):
                    return NOT_ROBUST, x[0], rel.solves
            if value < worst:
                worst, score = value, tri * rel.t
        if not still:
            continue
        unstable = (node.lo < 0) & (node.hi > 0)
        if not unstable.any():
            return UNDECIDED, None, rel.solves   # the exact region's minimum is not beyond rounding either way
        i = int(np.argmax(np.where(unstable, score + 1e-300, -1.0)))
        on_lo, off_hi = node.lo.copy(), node.hi.copy()
        on_lo[i], off_hi[i] = 0.0, 0.0
        stack.append(Node(node.lo, off_hi, still))
        stack.append(Node(on_lo, node.hi, still))
    return ROBUST, None, rel.solves
