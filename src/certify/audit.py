"""The audit of a certified curve: an attack inside each certified point's own ball, on the exact model.

Every point a curve certifies at some radius has its own certified ball (src/certify/rules.py:
certified_radii; a local curve's per-input radii).  The audit runs l2 PGD with restarts over the
whole ball (normalised inputs, no box: the certificate covers the whole ball, not only images)
on the float64 model solved tightly (src/certify/exact_model.py), and counts the points where it proves
a counterexample: the exact model's margin, bounded from above with the same allowance the
certificates subtract, is below zero.  A sound certificate has none; the test suite shows the
audit finds them as soon as the balls are 5% larger than a tight radius.
"""
from __future__ import annotations

import math

import torch

from .rules import margins
from .exact_model import ExactModel
from ..progress import ticking

INSIDE = 1 - 2.0 ** -20  # the balls are open (certified at eps < radius): attack just inside


def _project(x0: torch.Tensor, x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    delta = (x - x0).flatten(1)
    scale = (radius / delta.norm(dim=1).clamp_min(1e-300)).clamp(max=1)
    return x0 + (delta * scale[:, None]).view_as(x0)


def _pgd(net, x0, labels, radius, steps: int, start: torch.Tensor) -> torch.Tensor:
    """l2 PGD minimising the worst margin in each ball, steps of 2.5 radius / steps (Madry et al.)."""
    x = _project(x0, x0 + start, radius)
    step = (2.5 * radius / steps).view(-1, *[1] * (x0.dim() - 1))
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(margins(net(x), labels).sum(), x)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-300).view_as(step)
        x = _project(x0, (x - step * grad / norm).detach(), radius)
    return x.detach()


def audit(exact: ExactModel, x: torch.Tensor, labels: torch.Tensor, radii: torch.Tensor, steps: int,
          restarts: int, batch_size: int, seed: int = 0) -> dict:
    """Counterexamples inside the balls B(x_i, radii_i) (normalised units) of the points with radii_i > 0.

    Restart 0 starts at the centre, the others at uniform random points of the sphere of the ball.
    """
    rows = (radii > 0).nonzero().squeeze(1)
    record = {"points": int(len(rows)), "steps": int(steps), "restarts": int(restarts), "counterexamples": 0,
              "closest_margin": None}
    if len(rows) == 0 or steps == 0:
        return record
    device = exact.device
    g = torch.Generator().manual_seed(int(seed))
    found = torch.zeros(len(rows), dtype=torch.bool)
    closest = torch.full((len(rows),), math.inf, dtype=torch.float64)
    starts = range(0, len(rows), batch_size)
    for i in ticking(starts, len(starts), "audit"):
        r = rows[i:i + batch_size]
        x0 = x[r].to(device, torch.float64)
        radius = (radii[r] * INSIDE).to(device, torch.float64)
        y = labels[r].to(device)
        for k in range(restarts):
            start = torch.zeros_like(x0)
            if k:
                direction = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(device)
                start = direction * (radius / direction.flatten(1).norm(dim=1)).view(-1, *[1] * (x0.dim() - 1))
            adversarial = _pgd(exact.net, x0, y, radius, steps, start)
            margin = exact.evaluate(adversarial, batch_size).worst_margin_above(labels[r])
            found[i:i + batch_size] |= margin < 0
            closest[i:i + batch_size] = torch.minimum(closest[i:i + batch_size], margin)
    record.update(counterexamples=int(found.sum()), closest_margin=float(closest.min()))
    return record
