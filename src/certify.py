"""Lipschitz-margin certificates of l2 robustness (paper 5.3, Appendix H).

A classifier f with ||f(x) - f(x')||_2 <= L ||x - x'||_2 keeps its prediction
y on the whole ball ||x' - x||_2 <= eps' when the logit margin clears a rule:

- `paper`: margin(x) = f_y - max_{j != y} f_j > 2 L eps'  (the paper's rule:
  every logit moves by at most ||f(x) - f(x')||_inf <= L eps', so a gap
  closes by at most 2 L eps');
- `tight`: margin(x) > sqrt(2) L eps'  (also sound and tighter: the gap
  f_y - f_j = (e_y - e_j)^T f moves by at most ||e_y - e_j||_2 L eps' =
  sqrt(2) L eps');
- class pairs (`pairwise_certified`, for `sdp_pairwise`): with L_yj a
  Lipschitz constant of f_y - f_j itself, y is kept when
  f_y - f_j > L_yj eps' for every j != y.  No rule applies; with every
  L_yj = sqrt(2) L it is exactly the `tight` rule.

The comparisons are strict, in float64: a gap that could close to exactly zero is a tie,
not a certificate (the paper writes `>=`; the two differ on a set of measure
zero).  At eps = 0 a point counts when it is classified correctly.

Units.  The networks see normalised inputs x = (p - mean) / std, and every L
of bounds.json is with respect to x (l2).  Radii are given in [0, 1] pixel
units p.  Per channel c, a pixel perturbation d maps to d / std_c, so the l2
ball ||d||_2 <= eps in pixel space maps into an ellipsoid in normalised
space contained in the ball of radius eps / min_c std_c, and touching it along
the channel of smallest std.  `normalised_radius` returns that radius: the
certificate then covers the whole pixel-space ball the attack searches
(`src.attack` attacks in pixel space), sound for any number of channels and
exact (eps / std) for one channel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

RULES: dict[str, float] = {"paper": 2.0, "tight": math.sqrt(2.0)}


def normalised_radius(eps: float, std: Sequence[float]) -> float:
    """The l2 radius in normalised units that contains the pixel-unit l2 ball of radius eps."""
    std = [float(s) for s in std]
    if not std or min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return float(eps) / min(std)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """f_y - max_{j != y} f_j per row (negative when misclassified, 0 on a tie)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got {tuple(logits.shape)}")
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return own - others.max(1).values


def rule_factor(rule: str) -> float:
    if rule not in RULES:
        raise ValueError(f"unknown certify.rule {rule!r}; choose one of {sorted(RULES)}")
    return RULES[rule]


def certified(logits: torch.Tensor, labels: torch.Tensor, lipschitz: float, eps_norm: float,
              rule: str = "paper") -> torch.Tensor:
    """Boolean (N,): the points certified at normalised radius eps_norm by a scalar L and a rule."""
    lipschitz = float(lipschitz)
    if not lipschitz >= 0:  # also rejects nan
        raise ValueError(f"Lipschitz constant must be >= 0, got {lipschitz}")
    threshold = (rule_factor(rule) * lipschitz) * float(eps_norm)
    return margins(logits.double(), labels) > threshold


def pair_matrix(matrix, num_classes: int) -> torch.Tensor:
    """A classes x classes tensor of L_ij; None (a failed solve) becomes +inf (never certifies)."""
    rows = [[math.inf if v is None else float(v) for v in row] for row in matrix]
    mat = torch.tensor(rows, dtype=torch.float64)
    if mat.shape != (num_classes, num_classes):
        raise ValueError(f"class-pair matrix must be {num_classes}x{num_classes}, got {tuple(mat.shape)}")
    if (mat < 0).any() or mat.isnan().any():
        raise ValueError("class-pair Lipschitz constants must be >= 0")
    return mat


def pairwise_certified(logits: torch.Tensor, labels: torch.Tensor, matrix, eps_norm: float) -> torch.Tensor:
    """Boolean (N,): f_y - f_j > L_yj eps_norm for every j != y."""
    logits = logits.double()
    mat = pair_matrix(matrix, logits.shape[1])
    gaps = logits.gather(1, labels.view(-1, 1)) - logits            # (N, C): f_y - f_j
    eps_norm = float(eps_norm)
    need = mat[labels] * eps_norm if eps_norm > 0 else torch.zeros_like(gaps)  # (N, C): L_yj eps (inf * 0: 0)
    ok = gaps > need
    ok.scatter_(1, labels.view(-1, 1), True)                         # j = y imposes nothing
    return ok.all(1)


def certified_at(logits, labels, lipschitz, eps_norm: float, rule: str) -> torch.Tensor:
    """Dispatch: a scalar L uses `rule`, a class-pair matrix (list of lists) the pairwise rule."""
    if isinstance(lipschitz, (list, tuple)):
        return pairwise_certified(logits, labels, lipschitz, eps_norm)
    return certified(logits, labels, lipschitz, eps_norm, rule)


def curve_certified(curve: dict, logits, labels, eps_norm: float) -> torch.Tensor:
    """Boolean (N,): the points a curve of robustness.json certifies at normalised radius eps_norm;
    a `local` curve by its per-input radii (certified where eps < radius), the others by their L."""
    if curve["rule"] == "local":
        return torch.tensor(curve["radii_normalised"], dtype=torch.float64) > float(eps_norm)
    return certified_at(logits, labels, curve["lipschitz"], eps_norm, curve["rule"])


def certified_curve(logits: torch.Tensor, labels: torch.Tensor, lipschitz, eps: Sequence[float],
                    std: Sequence[float], rule: str = "paper") -> dict:
    """Certified accuracy over pixel-unit radii `eps`.

    Returns {eps, eps_normalised, accuracy, rule, lipschitz}, `rule` being
    "pairwise" for a class-pair matrix.
    """
    pairwise = isinstance(lipschitz, (list, tuple))
    if not pairwise:
        rule_factor(rule)  # an unknown rule fails here, with the choices
    logits = logits.detach().to(torch.float64)
    eps = [float(e) for e in eps]
    eps_norm = [normalised_radius(e, std) for e in eps]
    accuracy = [float(certified_at(logits, labels, lipschitz, e, rule).double().mean()) for e in eps_norm]
    return {"eps": eps, "eps_normalised": eps_norm, "accuracy": accuracy,
            "rule": "pairwise" if pairwise else rule,
            "lipschitz": [list(r) for r in lipschitz] if pairwise else float(lipschitz)}
