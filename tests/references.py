"""Independent references the tests compare the project's code with: exact but too slow (or too
limited) to be methods of the project.

- `seqlip_exact`: SeqLip with the max over activation patterns enumerated (`brute_force_pattern`), a
  guaranteed upper bound for small nets; the greedy SeqLip of src/bounds/feedforward.py never exceeds it.
- `random_search`: random points of each pixel ball, a second attack beside PGD.
- `exact_radius`: a monDEQ's exact distance to its decision boundary, l2 or l_inf, with or without a
  box, as the smallest of one convex problem per activation pattern of every neuron and class.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import cvxpy as cp
import numpy as np
import torch
from torch import nn

from src.bounds import feedforward as ff


def brute_force_pattern(a: np.ndarray, b: np.ndarray, max_units: int = 20) -> dict:
    """Exact max over sigma in {0,1}^n of ||a diag(sigma) b||_2 by enumeration (n <= max_units)."""
    n = a.shape[1]
    if n > max_units:
        raise ValueError(f"{n} units: 2^{n} patterns is too many to enumerate (max_units={max_units})")
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    best, best_sigma = -1.0, None
    patterns = itertools.product((0.0, 1.0), repeat=n)
    while True:
        chunk = list(itertools.islice(patterns, 4096))
        if not chunk:
            break
        sig = torch.tensor(chunk, dtype=torch.float64)
        vals = torch.linalg.matrix_norm(at[None] * sig[:, None, :] @ bt[None], ord=2)
        j = int(vals.argmax())
        if float(vals[j]) > best:
            best, best_sigma = float(vals[j]), sig[j].numpy().astype(bool)
    return {"value": best, "sigma": best_sigma}


def seqlip_exact(model: nn.Module, in_shape: Sequence[int] | None = None, max_units: int = 20,
                 seed: int = 0) -> dict:
    """SeqLip with the max over activation patterns enumerated exactly (hidden widths <= max_units).

    With exact SVDs (no truncation) this is a guaranteed upper bound on the
    Lipschitz constant; `guaranteed` says whether that holds.
    """
    maps = ff.linear_maps(model, in_shape)
    wide = [f.n_out for f in maps[:-1] if f.n_out > max_units]
    if wide:
        raise ValueError(f"hidden layers of {wide} units: exact SeqLip enumerates 2^n patterns "
                         f"(max_units={max_units})")
    n_sv = max(max(f.n_in, f.n_out) for f in maps)
    return ff._seqlip(model, in_shape, n_sv, lambda a, b: brute_force_pattern(a, b, max_units), "seqlip_exact",
                   True, seed)


@torch.no_grad()
def random_search(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
                  mean: Sequence[float], std: Sequence[float], samples: int = 100,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) bool: some of `samples` random points of the pixel ball (on its sphere, then clipped
    to the box, which only moves them closer) is not classified as the label."""
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor([float(v) for v in mean]).view(shape)
    std_t = torch.tensor([float(v) for v in std]).view(shape)
    fooled = torch.zeros(len(labels), dtype=torch.bool)
    for _ in range(int(samples)):
        d = torch.randn(images.shape, generator=generator)
        d = d * (float(eps) / d.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
        p = (images + d).clamp(0.0, 1.0)
        fooled |= model((p - mean_t) / std_t).argmax(1) != labels
    return fooled


def exact_radius(dm, x0: np.ndarray, label: int, norm: str = "l2", box: tuple[float, float] | None = None) -> float:
    """The exact distance (l2 or l_inf) from x0 to a point of the box where some f_j >= f_y: the minimum
    over all 2^h activation patterns S (z affine on S's region) and classes j of a convex problem,
    infeasible ones skipped.  No stable set, no bound: every pattern is solved."""
    h, d = dm.U.shape
    W, U, b, C, bo = (t.numpy() for t in (dm.W, dm.U, dm.b, dm.C, dm.b_out))
    x = cp.Variable(d)
    A, a = cp.Parameter((h, d)), cp.Parameter(h)
    g, c0 = cp.Parameter(d), cp.Parameter()
    size = cp.sum_squares(x - x0) if norm == "l2" else cp.norm(x - x0, "inf")
    cons = [A @ x <= a, g @ x + c0 <= 0] + ([] if box is None else [x >= box[0], x <= box[1]])
    problem = cp.Problem(cp.Minimize(size), cons)
    best = math.inf
    for pattern in itertools.product([0.0, 1.0], repeat=h):
        E = np.diag(pattern)
        Z = np.linalg.solve(np.eye(h) - E @ W @ E, E)           # z = Z (U x + b) on this pattern
        V = W @ Z + np.eye(h)                                   # v = V (U x + b)
        sign = 1 - 2 * np.asarray(pattern)                      # v_i >= 0 where active: -v_i <= 0
        A.value, a.value = (sign[:, None] * (V @ U)), -(sign * (V @ b))
        for j in range(C.shape[1]):
            if j == label:
                continue
            row = (C[:, label] - C[:, j]) @ Z                   # margin = row (U x + b) + bo_y - bo_j
            g.value, c0.value = row @ U, row @ b + bo[label] - bo[j]
            problem.solve(solver=cp.CLARABEL)
            if problem.status == cp.OPTIMAL:
                value = max(problem.value, 0.0)
                best = min(best, math.sqrt(value) if norm == "l2" else value)
    return best
