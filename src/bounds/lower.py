"""Empirical lower bounds on the Lipschitz constant: the largest local Jacobian norm found.

For any point x where f is differentiable, ||J_f(x)||_2 <= L (the l2 Lipschitz
constant of the logit map), so the maximum over sampled points is a lower
bound (the paper's section 5.1).  `grad_norm` evaluates the Jacobian spectral
norm (max over output directions) exactly:

- FC monDEQ: the implicit Jacobian J = W_out (I - D W)^-1 D U at the
  equilibrium (D = diag(relu') there), batched: per point one h x h solve
  with the 10 rows of W_out as right-hand sides, then the 10 x 10 Gram
  J J^T = Y D (U U^T) D Y^T (Y = W_out (I - D W)^-1) and its eigvalsh.
  The equilibrium is solved in float64 to a tight tolerance.
- any other model (conv monDEQs, DNNs, CNNs): the 10 rows of J by
  vector-Jacobian products through autograd (for a monDEQ the layer's
  backward is the implicit adjoint solve, run here at a tight tolerance),
  then the same 10 x 10 Gram.

Then the best points are refined by a few steps of projected ascent on the
spectral norm inside the input box.  For ReLU networks the Jacobian is
piecewise constant, so its exact gradient is zero almost everywhere: the
step direction comes from a smoothed Jacobian (ReLU' replaced by a sigmoid,
ReLU by a softplus), and for FC monDEQs every step also tries moving just
across each unit's activation boundary (into each neighbouring linear
region); a point moves to its best candidate when that is better.  Every
value kept is the exact Jacobian norm at a point in the box.  Models with
no smoothing available here (conv monDEQs) are refined by random search.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch
from torch import nn

from ..mondeq.dense import dense_mondeq, equilibrium
from ..mondeq.fc import FullyConnectedOperator
from ..mondeq.networks import MonDEQNet
from ..progress import ticking


# --------------------------------------------------------------------------- sampling

def sample_points(test_x: torch.Tensor, n: int, box_low, box_high, seed: int = 0) -> torch.Tensor:
    """n points: up to n // 2 test inputs (random subset) and the rest uniform in the box.

    `box_low`/`box_high` are floats or tensors broadcastable to one input
    (e.g. (C, 1, 1) per channel): the normalised image range.
    """
    g = torch.Generator().manual_seed(int(seed))
    n_test = min(len(test_x), n // 2)
    idx = torch.randperm(len(test_x), generator=g)[:n_test]
    shape = (n - n_test, *test_x.shape[1:])
    low = torch.as_tensor(box_low, dtype=test_x.dtype)
    high = torch.as_tensor(box_high, dtype=test_x.dtype)
    noise = low + (high - low) * torch.rand(shape, generator=g, dtype=test_x.dtype)
    return torch.cat([test_x[idx], noise])


# --------------------------------------------------------------------------- FC monDEQ: exact implicit Jacobian

def _is_mondeq(model) -> bool:
    return isinstance(model, MonDEQNet)


def _is_fc_mondeq(model) -> bool:
    return _is_mondeq(model) and isinstance(model.mon.operator, FullyConnectedOperator)


class _FCJacobian:
    """An FC monDEQ's batched implicit Jacobian, on its dense float64 view (src/mondeq/dense.py)."""

    def __init__(self, net):
        self.dm = dense_mondeq(net)  # float64 on the CPU: h x h problems, no use for an accelerator
        self.W, self.U, self.Wo, self.UUt = self.dm.W, self.dm.U, self.dm.C.T, self.dm.G
        self.h = self.W.shape[0]
        self.eye = torch.eye(self.h, dtype=torch.float64)
        self.prepare = net.prepare

    def pre_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, v, ok) at the exact equilibrium of each point (`ok`: it was found, src/mondeq/dense.py)."""
        return equilibrium(self.dm, self.prepare(x).cpu().double())

    def norms_from_d(self, d: torch.Tensor) -> torch.Tensor:
        """||W_out (I - D W)^-1 D U||_2 for a batch of diagonals d (batch, h); differentiable in d."""
        A_t = self.eye - self.W.T * d[:, None, :]          # (I - D W)^T = I - W^T D
        rhs = self.Wo.T.expand(d.shape[0], -1, -1)          # (batch, h, classes)
        Yt = torch.linalg.solve(A_t, rhs)                   # Y^T, Y = W_out (I - D W)^-1
        Z = Yt * d[:, :, None]                              # (Y D)^T
        gram = Z.transpose(1, 2) @ self.UUt @ Z             # Y D U U^T D Y^T
        return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt()

    def norms(self, x: torch.Tensor) -> torch.Tensor:
        """The Jacobian norm at each point; 0 where the exact equilibrium was not found (a norm there
        would not be attained, so it never becomes the lower bound)."""
        _, v, ok = self.pre_activation(x)
        return self.norms_from_d((v > 0).double()).masked_fill(~ok, 0.0)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """The full (batch, classes, input_dim) Jacobian (tests and small batches)."""
        _, v, _ = self.pre_activation(x)
        d = (v > 0).double()
        Yt = torch.linalg.solve(self.eye - self.W.T * d[:, None, :], self.Wo.T.expand(d.shape[0], -1, -1))
        return (Yt * d[:, :, None]).transpose(1, 2) @ self.U

    @torch.no_grad()
    def crossings(self, x: torch.Tensor, overshoot: float = 1e-3) -> torch.Tensor:
        """For each unit i, x moved just across the boundary v_i = 0 of its linear region.

        The Jacobian is constant on each activation pattern, so the natural
        local moves of a piecewise-linear map are into neighbouring regions:
        x - (1 + overshoot) v_i / |grad v_i|^2 grad v_i, with
        grad v = W dz/dx + U = W (I - D W)^-1 D U + U (linearised at x).
        Returns (batch, h, *x.shape[1:]); units with grad v_i = 0 stay at x.
        """
        flat = self.prepare(x).double()
        z, v, _ = self.pre_activation(flat)
        d = (v > 0).double()
        dz_dx = torch.linalg.solve(self.eye - d[:, :, None] * self.W, d[:, :, None] * self.U)
        grad_v = self.W @ dz_dx + self.U                                  # (batch, h, input_dim)
        sq = (grad_v ** 2).sum(-1)
        coef = torch.where(sq > 0, (1 + overshoot) * v / sq.clamp_min(1e-300), torch.zeros_like(v))
        moved = flat[:, None, :] - coef[..., None] * grad_v
        return moved.to(x.dtype).view(x.shape[0], self.h, *x.shape[1:])

    def smooth_norms(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """A differentiable surrogate: D = sigmoid(v / t) with v linearised implicitly at x."""
        x = self.prepare(x).double()
        with torch.no_grad():
            z, v, _ = self.pre_activation(x)
            d = (v > 0).double()
            dz_dx = torch.linalg.solve(self.eye - d[:, :, None] * self.W, d[:, :, None] * self.U)
        x0 = x.detach()
        v_lin = v + ((self.W @ dz_dx + self.U) @ (x - x0).unsqueeze(-1)).squeeze(-1)
        scale = v.abs().mean(dim=1, keepdim=True).clamp_min(1e-6)
        return self.norms_from_d(torch.sigmoid(v_lin / (temperature * scale)))


# --------------------------------------------------------------------------- any model: autograd

@contextlib.contextmanager
def _tight_solver(model, tol: float = 1e-7, max_iter: int = 3000):
    """Temporarily solve a monDEQ's forward and adjoint problems to `tol`."""
    if not _is_mondeq(model):
        yield
        return
    layer = model.mon
    old = layer.solver
    layer.solver = dataclasses.replace(old, fwd_tol=tol, bwd_tol=tol, fwd_max_iter=max(max_iter, old.fwd_max_iter),
                                       bwd_max_iter=max(max_iter, old.bwd_max_iter))
    try:
        yield
    finally:
        layer.solver = old


def _autograd_norms(model, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Jacobian spectral norms by one vector-Jacobian product per output (the 10 rows of J)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    out = model(x)
    rows = []
    for k in range(out.shape[1]):
        e = torch.zeros_like(out)
        e[:, k] = 1
        (g,) = torch.autograd.grad(out, x, grad_outputs=e, retain_graph=True, create_graph=create_graph)
        rows.append(g.flatten(1))
    J = torch.stack(rows, dim=1).double()
    gram = J @ J.transpose(1, 2)
    return torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt()


class _SoftReLU(nn.Module):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return nn.functional.softplus(x, beta=self.beta)


@contextlib.contextmanager
def _smoothed(model: nn.Module, beta: float):
    """Swap every nn.ReLU submodule for softplus(beta) (feed-forward baselines)."""
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                swapped.append((parent, name, child))
                setattr(parent, name, _SoftReLU(beta))
    try:
        yield bool(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


# --------------------------------------------------------------------------- the lower bound

@contextlib.contextmanager
def _single_thread():
    """Many tiny batched solves: intra-op threads only add overhead (10x slower measured on 2 busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _batched(fn, points: torch.Tensor, batch_size: int) -> torch.Tensor:
    starts = range(0, len(points), batch_size)
    return torch.cat([fn(points[i:i + batch_size]) for i in ticking(starts, len(starts), "lower bound")])


def _clip(x, low, high):
    return torch.maximum(torch.minimum(x, high), low)


def grad_norm(model, points: torch.Tensor, ascent_steps: int = 20, ascent_top: int = 32,
              batch_size: int = 1024, box=None, step_size: float | None = None, seed: int = 0) -> dict:
    """Largest Jacobian spectral norm of the logits w.r.t. the input over `points`, then refined.

    `points`: inputs as the model takes them (normalised images).  `box`:
    (low, high) floats or broadcastable tensors; ascent iterates are kept
    inside it (default: the range of `points`).  The `ascent_top` best
    points are refined by `ascent_steps` steps of projected ascent (see the
    module docstring); `value` is the exact Jacobian norm at `argmax_point`,
    the best point seen, so it is attained and a valid lower bound.

    Returns value, value_points (before ascent), seconds, n_points, method,
    argmax_point (a tensor) and argmax_index (into points, or -1 if found by ascent).
    """
    if _is_fc_mondeq(model):  # evaluated on the CPU in float64
        points = points.detach().cpu()
        with _single_thread():
            return _grad_norm(model, points, ascent_steps, ascent_top, batch_size, box, step_size, seed)
    param = next(model.parameters(), None)
    if param is not None:
        points = points.detach().to(param.device)
    return _grad_norm(model, points, ascent_steps, ascent_top, batch_size, box, step_size, seed)


def _grad_norm(model, points, ascent_steps, ascent_top, batch_size, box, step_size, seed) -> dict:
    start = time.perf_counter()
    points = points.detach()
    low, high = (points.min(), points.max()) if box is None else box
    low = torch.as_tensor(low, dtype=points.dtype).to(points.device)
    high = torch.as_tensor(high, dtype=points.dtype).to(points.device)
    span = float((high - low).max())

    if _is_fc_mondeq(model):
        fc = _FCJacobian(model)
        method = "implicit_fc"
        with torch.no_grad():
            evaluate = fc.norms
            norms = _batched(evaluate, points, batch_size)
    else:
        method = "autograd_implicit" if _is_mondeq(model) else "autograd"
        fc = None

        def evaluate(x):
            with _tight_solver(model):
                return _autograd_norms(model, x).detach()

        norms = _batched(evaluate, points, min(batch_size, 256))
    t_points = time.perf_counter() - start

    best_val = float(norms.max())
    best_idx = int(norms.argmax())
    best_x = points[best_idx].clone()
    value_points = best_val

    if ascent_steps > 0 and len(points) > 0:
        top = torch.topk(norms, min(ascent_top, len(points))).indices
        x = points[top].clone()
        vals = norms[top].clone()
        step0 = step_size if step_size is not None else 0.02 * span * math.sqrt(x[0].numel())
        step = torch.full((len(x),), float(step0), dtype=x.dtype, device=x.device)
        g = torch.Generator().manual_seed(int(seed))  # on the CPU: the same directions on every device
        smooth = fc is not None or _has_relu(model)
        ones = [1] * (x.dim() - 1)
        for _ in range(ascent_steps):
            if smooth:
                direction = _ascent_direction(model, fc, x)
            else:
                direction = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *ones)
            cand = (x + step.view(-1, *ones) * direction)[:, None]
            if fc is not None:  # also: step just across each unit's activation boundary
                cand = torch.cat([cand, fc.crossings(x)], dim=1)
            cand = _clip(cand, low, high)
            with torch.no_grad() if fc is not None else contextlib.nullcontext():
                new = evaluate(cand.flatten(0, 1)).view(cand.shape[:2])
            new_best, which = new.max(dim=1)
            better = new_best > vals
            step = torch.where(new[:, 0] > vals, step, step * 0.5)  # shrink where the step did not help
            x[better] = cand[better, which[better]]
            vals[better] = new_best[better]
            if float(vals.max()) > best_val:
                best_val = float(vals.max())
                best_x = x[int(vals.argmax())].clone()
                best_idx = -1
    return {"value": best_val, "value_points": value_points, "method": method, "n_points": int(len(points)),
            "ascent_steps": int(ascent_steps), "argmax_point": best_x, "argmax_index": best_idx,
            "seconds_points": t_points, "seconds": time.perf_counter() - start}


def _has_relu(model) -> bool:
    return not _is_mondeq(model) and any(isinstance(mod, nn.ReLU) for mod in model.modules())


def _ascent_direction(model, fc, x: torch.Tensor, temperature: float = 0.1, beta: float = 10.0) -> torch.Tensor:
    """Gradient of a smoothed Jacobian spectral norm, summed over the batch."""
    xr = x.detach().double().requires_grad_(True) if fc is not None else x.detach().requires_grad_(True)
    if fc is not None:
        obj = fc.smooth_norms(xr, temperature).sum()
        (grad,) = torch.autograd.grad(obj, xr)
        return grad.to(x.dtype).view_as(x)
    with _smoothed(model, beta):
        obj = _autograd_norms(model, xr, create_graph=True).sum()
        (grad,) = torch.autograd.grad(obj, xr)
    return grad.view_as(x)
