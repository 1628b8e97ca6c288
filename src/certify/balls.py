"""The perturbation sets of the exact certificate: an l2 or l_inf ball, with or without the pixel box.

S = {x : ||x - x0|| <= eps} (intersected with lo <= x <= hi when there is a box), per point, in the
inputs' own (normalised) units.  What the certificates need of S is its support function
sigma(g) = max_{x in S} g^T (x - x0), bounded from ABOVE (a bound below it would certify too much):

- l2, no box: eps ||g||_2 (exact);
- l_inf (with or without box): S - x0 is the box [a, b] (a = max(-eps, lo - x0), b = min(eps, hi - x0)),
  sigma(g) = sum_j max(g_j a_j, g_j b_j) (exact);
- l2 with box: for every mu > 0, sigma(g) <= mu eps^2 / 2 + sum_j max_{a_j <= t <= b_j} (g_j t - mu t^2 / 2)
  (Lagrangian duality for the ball constraint; each term at t = clip(g_j / mu, a_j, b_j)).  Any mu gives an
  upper bound; mu is found by bisection on ||clip(g / mu, a, b)|| = eps, which makes it tight, and the
  bound is also capped by the two sets' own supports (eps ||g||, the box's).

`magnitude(g)` bounds max |g^T (x - x0)| over S from above: the scale for rounding allowances.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import NORMS

# Balls are attacked, and counterexamples checked, this much inside (rounding at the sphere never decides)
INSIDE = 1 - 2.0 ** -20


@dataclass
class Ball:
    """Per point: centre (N, d), radius (N,); lo, hi (d,) the box, or None."""
    centre: torch.Tensor
    radius: torch.Tensor
    norm: str
    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")

    def rows(self, rows) -> "Ball":
        return Ball(self.centre[rows], self.radius[rows], self.norm, self.lo, self.hi)

    def interval(self, shape):
        """a, b (N, 1.., d): the coordinate-wise range of x - x0 (l_inf: radius and box; l2: box only)."""
        n, d = self.centre.shape
        view = (n,) + (1,) * (len(shape) - 2) + (d,)
        r = self.radius.view(n, *(1,) * (len(shape) - 1))
        if self.norm == "linf":
            a, b = -r.expand(view), r.expand(view)
        else:
            a = torch.full(view, -torch.inf, dtype=self.centre.dtype)
            b = torch.full(view, torch.inf, dtype=self.centre.dtype)
        if self.lo is not None:
            a = torch.maximum(a, (self.lo - self.centre).view(view))
            b = torch.minimum(b, (self.hi - self.centre).view(view))
        return a, b

    def support(self, g: torch.Tensor) -> torch.Tensor:
        """(N, ...) upper bounds of max_{x in S} g^T (x - x0) for g (N, ..., d)."""
        r = self.radius.view(-1, *(1,) * (g.dim() - 2))
        if self.norm == "l2" and self.lo is None:
            return r * g.norm(dim=-1)
        a, b = self.interval(g.shape)
        box = torch.maximum(g * a, g * b).sum(-1)
        if self.norm == "linf":
            return box
        mu = _ball_multiplier(g, a, b, r)
        t = (g / mu[..., None]).clamp(a, b)
        dual = mu * r * r / 2 + (g * t - mu[..., None] * t * t / 2).sum(-1)
        return torch.minimum(torch.minimum(dual, r * g.norm(dim=-1)), box)

    def maximiser(self, g: torch.Tensor) -> torch.Tensor:
        """A point x - x0 of S where g^T (x - x0) is (about) sigma(g), for g (N, ..., d)."""
        r = self.radius.view(-1, *(1,) * (g.dim() - 1))
        if self.norm == "l2" and self.lo is None:
            return r * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        a, b = self.interval(g.shape)
        if self.norm == "linf":
            return torch.where(g > 0, b, a)
        t = (g / _ball_multiplier(g, a, b, r.squeeze(-1))[..., None]).clamp(a, b)
        return t * (r / t.norm(dim=-1, keepdim=True).clamp_min(1e-300)).clamp(max=1)

    def magnitude(self, g: torch.Tensor) -> torch.Tensor:
        return torch.maximum(self.support(g), self.support(-g))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """A point of S near x (N, d): the exact projection for l_inf; for l2 the box's, then scaled
        towards x0 into the ball (inside the box, as x0 is)."""
        delta = x - self.centre
        if self.lo is not None:
            delta = torch.minimum(torch.maximum(delta, self.lo - self.centre), self.hi - self.centre)
        if self.norm == "linf":
            r = self.radius[:, None]
            return self.centre + torch.minimum(torch.maximum(delta, -r), r)
        scale = (self.radius / delta.norm(dim=1).clamp_min(1e-300)).clamp(max=1)
        return self.centre + delta * scale[:, None]

    def descend(self, x: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """One PGD step of length `step` (N,) against grad in the ball's norm (the normalised gradient for
        l2, its sign for l_inf), projected back into S."""
        if self.norm == "linf":
            return self.project(x - step[:, None] * grad.sign())
        return self.project(x - step[:, None] * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300))

    def pulled(self, x: torch.Tensor) -> torch.Tensor:
        """x moved INSIDE of the way from the centre (a point of S stays in S, away from its sphere)."""
        return self.centre + (x - self.centre) * INSIDE

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        return distance(delta, torch.zeros_like(delta), self.norm)

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) x lies in S, compared in float64 as given."""
        inside = distance(x, self.centre, self.norm) <= self.radius
        if self.lo is not None:
            inside &= ((x >= self.lo) & (x <= self.hi)).all(1)
        return inside


def distance(x: torch.Tensor, centre: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x - centre).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def _ball_multiplier(g, a, b, r):
    """mu > 0 with ||clip(g / mu, a, b)|| = r (the l2-with-box support's multiplier; a <= 0 <= b), exactly
    up to rounding: with lambda = 1 / mu, ||clip(lambda g, a, b)||^2 is P_k + lambda^2 Q_k between the
    sorted lambdas at which the coordinates reach their bound (P_k: the k reached, squared; Q_k: g^2 of
    the others), so the piece where it crosses r^2 gives lambda in closed form.  Where even every
    coordinate at its bound stays inside the ball, a tiny mu (the box's support is then the bound).
    Any mu > 0 gives a valid bound (weak duality): its precision only makes the bound tighter."""
    a, b = a.expand_as(g), b.expand_as(g)
    reach = torch.where(g > 0, b / g, torch.where(g < 0, a / g, torch.inf))  # lambda where |g_i| saturates
    bound = torch.where(g > 0, b, torch.where(g < 0, a, torch.zeros_like(g)))
    reach, order = reach.sort(dim=-1)
    g2 = (g * g).gather(-1, order)
    sat2 = (bound * bound).gather(-1, order)
    before = sat2.cumsum(-1) - sat2                               # P_k: the coordinates reached before k
    rest = g2.flip(-1).cumsum(-1).flip(-1)                        # Q_k: g^2 of k and after
    r2 = (r * r)[..., None]
    at_k = before + torch.where(rest > 0, reach.clamp(max=1e300) ** 2 * rest, torch.zeros_like(rest))
    k = (at_k < r2).sum(-1, keepdim=True).clamp(max=g.shape[-1] - 1)  # the first piece that reaches r^2
    p_k, q_k = before.gather(-1, k).squeeze(-1), rest.gather(-1, k).squeeze(-1)
    crosses = (at_k >= r2).any(-1) & (q_k > 0)
    lam = ((r * r - p_k).clamp_min(0) / q_k.clamp_min(1e-300)).sqrt()
    tiny = g.abs().amax(-1).clamp_min(1e-300) / r.clamp_min(1e-300) * 1e-12
    return torch.where(crosses & (lam > 0), 1 / lam.clamp_min(1e-300), tiny)
