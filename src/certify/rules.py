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

What is certified is the exact model (src/certify/exact_model.py): the float64 network, for a monDEQ
with its exact equilibrium, whose gaps are bounded from below with a proved allowance for the
solve.  The comparisons are strict, in float64, with an allowance of ROUNDING relative to the
magnitudes compared: a gap that could close to zero, or that rounding could tip, is not a
certificate (the paper writes `>=`).  At eps = 0 a point counts when the exact model provably
classifies it correctly.

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
from dataclasses import dataclass

import torch

RULES: dict[str, float] = {"paper": 2.0, "tight": math.sqrt(2.0)}
# Relative allowance for float64 rounding in every final comparison and in the exact model's state
# (src/certify/exact_model.py says how large and what it does not cover: sums that cancel far below their terms).
ROUNDING = 2.0 ** -26


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


@dataclass
class Gaps:
    """Lower bounds of the certified model's f_y - f_j at each test point (N, C): the comparisons'
    left-hand sides.  `size` (|f_y| + |f_j|) scales the rounding allowance; `own` marks j = y."""
    low: torch.Tensor
    size: torch.Tensor
    own: torch.Tensor


def gaps_of(logits: torch.Tensor, labels: torch.Tensor, spread: torch.Tensor | None = None) -> Gaps:
    """The gaps of float64 logits, less a proved allowance `spread` (N, C) where given
    (src/certify/exact_model.py: the distance of a solve from the exact equilibrium)."""
    logits = logits.double()
    own_logit = logits.gather(1, labels.view(-1, 1))
    low = own_logit - logits
    if spread is not None:
        low = low - spread
    own = torch.zeros_like(low, dtype=torch.bool).scatter_(1, labels.view(-1, 1), True)
    return Gaps(low=low, size=own_logit.abs() + logits.abs(), own=own)


def clears(gaps: Gaps, need: torch.Tensor) -> torch.Tensor:
    """Boolean (N,): every gap exceeds its need (N, C) by more than float64's rounding could hide.

    The comparison is strict and allows ROUNDING relative to the magnitudes compared, so a gap of the
    order of float64's rounding of those magnitudes is not a certificate.
    """
    return ((gaps.low - need > ROUNDING * (gaps.size + need)) | gaps.own).all(1)


def certified(gaps: Gaps, lipschitz: float, eps_norm: float, rule: str = "paper") -> torch.Tensor:
    """Boolean (N,): the points certified at normalised radius eps_norm by a scalar L and a rule."""
    lipschitz = float(lipschitz)
    if not lipschitz >= 0:  # also rejects nan
        raise ValueError(f"Lipschitz constant must be >= 0, got {lipschitz}")
    threshold = (rule_factor(rule) * lipschitz) * float(eps_norm)
    return clears(gaps, torch.full_like(gaps.low, threshold))


def pair_matrix(matrix, num_classes: int) -> torch.Tensor:
    """A classes x classes tensor of L_ij; None (a failed solve) becomes +inf (never certifies)."""
    rows = [[math.inf if v is None else float(v) for v in row] for row in matrix]
    mat = torch.tensor(rows, dtype=torch.float64)
    if mat.shape != (num_classes, num_classes):
        raise ValueError(f"class-pair matrix must be {num_classes}x{num_classes}, got {tuple(mat.shape)}")
    if (mat < 0).any() or mat.isnan().any():
        raise ValueError("class-pair Lipschitz constants must be >= 0")
    return mat


def pairwise_certified(gaps: Gaps, labels: torch.Tensor, matrix, eps_norm: float) -> torch.Tensor:
    """Boolean (N,): f_y - f_j > L_yj eps_norm for every j != y."""
    mat = pair_matrix(matrix, gaps.low.shape[1])
    eps_norm = float(eps_norm)
    need = mat[labels] * eps_norm if eps_norm > 0 else torch.zeros_like(gaps.low)  # (N, C): L_yj eps (inf * 0: 0)
    return clears(gaps, need)


def certified_at(gaps: Gaps, labels, lipschitz, eps_norm: float, rule: str) -> torch.Tensor:
    """Dispatch: a scalar L uses `rule`, a class-pair matrix (list of lists) the pairwise rule."""
    if isinstance(lipschitz, (list, tuple)):
        return pairwise_certified(gaps, labels, lipschitz, eps_norm)
    return certified(gaps, lipschitz, eps_norm, rule)


def curve_certified(curve: dict, gaps: Gaps, labels, eps_norm: float) -> torch.Tensor:
    """Boolean (N,): the points a curve of robustness.json certifies at normalised radius eps_norm;
    a curve with per-input radii (local, exact) by them (certified where eps < radius), the others by their L."""
    if "radii_normalised" in curve:
        return torch.tensor(curve["radii_normalised"], dtype=torch.float64) > float(eps_norm)
    return certified_at(gaps, labels, curve["lipschitz"], eps_norm, curve["rule"])


def radius(gaps: Gaps, per_pair: torch.Tensor) -> torch.Tensor:
    """(N,) the supremum of the radii eps that `clears` certifies with constants per_pair (N, C) (L_yj:
    f_y - f_j moves by at most L_yj eps): min_j (low - ROUNDING size) / ((1 + ROUNDING) L_yj), >= 0."""
    per_j = (gaps.low - ROUNDING * gaps.size) / ((1 + ROUNDING) * per_pair)
    return torch.where(gaps.own, torch.inf, per_j).amin(1).clamp_min(0)


def certified_radii(curve: dict, gaps: Gaps, labels) -> torch.Tensor:
    """(N,) each point's certified radius in normalised units (certified at eps < radius; 0: none)."""
    if "radii_normalised" in curve:
        return torch.tensor(curve["radii_normalised"], dtype=torch.float64)
    if isinstance(curve["lipschitz"], (list, tuple)):
        per_pair = pair_matrix(curve["lipschitz"], gaps.low.shape[1])[labels]
    else:
        per_pair = torch.full_like(gaps.low, rule_factor(curve["rule"]) * float(curve["lipschitz"]))
    return radius(gaps, per_pair)


def certified_curve(gaps: Gaps, labels, lipschitz, eps: Sequence[float], std: Sequence[float],
                    rule: str = "paper") -> dict:
    """Certified accuracy over pixel-unit radii `eps`.

    Returns {eps, eps_normalised, accuracy, rule, lipschitz}, `rule` being
    "pairwise" for a class-pair matrix.
    """
    pairwise = isinstance(lipschitz, (list, tuple))
    if not pairwise:
        rule_factor(rule)  # an unknown rule fails here, with the choices
    eps = [float(e) for e in eps]
    eps_norm = [normalised_radius(e, std) for e in eps]
    accuracy = [float(certified_at(gaps, labels, lipschitz, e, rule).double().mean()) for e in eps_norm]
    return {"eps": eps, "eps_normalised": eps_norm, "accuracy": accuracy,
            "rule": "pairwise" if pairwise else rule,
            "lipschitz": [list(r) for r in lipschitz] if pairwise else float(lipschitz)}
