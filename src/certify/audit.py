"""The audit of a certified curve: an attack inside each certified point's own ball, on the exact model.

Every point a curve certifies at some radius has its own certified ball (src/certify/rules.py:
certified_radii; the per-input radii of a local or exact curve).  The audit runs PGD with restarts over
the whole ball (normalised inputs; l2 and no box unless the curve names its `norm` and `box`: the
global and local certificates cover the whole l2 ball, not only images)
on the float64 model solved tightly (src/certify/exact_model.py), and counts the points where it proves
a counterexample: the exact model's margin, bounded from above with the same allowance the
certificates subtract, is below zero.  A sound certificate has none; the test suite shows the
audit finds them as soon as the balls are 5% larger than a tight radius.
"""
from __future__ import annotations

import math

import torch

from .balls import INSIDE, Ball
from .rules import margins
from .exact_model import ExactModel
from ..progress import ticking

def _pgd(net, ball: Ball, labels, steps: int, start: torch.Tensor, shape) -> torch.Tensor:
    """PGD minimising the worst margin in each ball, steps of 2.5 radius / steps (Madry et al.): along the
    normalised gradient (l2) or its sign (l_inf), projected back into the ball (and box)."""
    x = ball.project(ball.centre + start)
    step = 2.5 * ball.radius / steps
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(margins(net(x.view(-1, *shape)), labels).sum(), x)
        x = ball.descend(x.detach(), grad, step)
    return x.detach().view(-1, *shape)


def audit(exact: ExactModel, x: torch.Tensor, labels: torch.Tensor, radii: torch.Tensor, steps: int,
          restarts: int, batch_size: int, seed: int = 0, norm: str = "l2", box=None) -> dict:
    """Counterexamples inside the balls B(x_i, radii_i) (normalised units; `norm`, intersected with the box
    (lo, hi) where given) of the points with radii_i > 0.

    Restart 0 starts at the centre, the others at uniform random points of the ball's sphere (l2) or
    of its cube (l_inf).
    """
    rows = (radii > 0).nonzero().squeeze(1)
    record = {"points": int(len(rows)), "steps": int(steps), "restarts": int(restarts), "counterexamples": 0,
              "closest_margin": None, "norm": norm, "box": box is not None}
    if len(rows) == 0 or steps == 0:
        return record
    device = exact.device
    shape = tuple(x.shape[1:])
    lo, hi = (None, None) if box is None else (torch.broadcast_to(b.to(device, torch.float64), shape).flatten()
                                               for b in box)
    g = torch.Generator().manual_seed(int(seed))
    found = torch.zeros(len(rows), dtype=torch.bool)
    closest = torch.full((len(rows),), math.inf, dtype=torch.float64)
    starts = range(0, len(rows), batch_size)
    for i in ticking(starts, len(starts), "audit"):
        r = rows[i:i + batch_size]
        x0 = x[r].to(device, torch.float64).flatten(1)
        ball = Ball(x0, (radii[r] * INSIDE).to(device, torch.float64), norm, lo, hi)  # the balls are open
        y = labels[r].to(device)
        for k in range(restarts):
            start = torch.zeros_like(x0)
            if k:
                direction = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(device)
                if norm == "linf":
                    direction = direction.sign()
                start = direction * (ball.radius / ball.norm_of(direction))[:, None]
            adversarial = _pgd(exact.net, ball, y, steps, start, shape)
            margin = exact.evaluate(adversarial, batch_size).worst_margin_above(labels[r])
            found[i:i + batch_size] |= margin < 0
            closest[i:i + batch_size] = torch.minimum(closest[i:i + batch_size], margin)
    record.update(counterexamples=int(found.sum()), closest_margin=float(closest.min()))
    return record
