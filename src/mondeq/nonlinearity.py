"""The layer's nonlinearity, apart from the operator W: z = prox(W z + b).

A splitting method needs three things of it: the proximal step itself, its reflection 2 prox - I
(Peaceman-Rachford), and its derivative at a point (the D of the adjoint equation u = D (W^T u + g)).
Any proximal operator of a convex function keeps the monDEQ theory (a unique equilibrium, convergent
splittings); a new one is a subclass here, and no operator changes.
"""
from __future__ import annotations

import torch
from torch import nn


class Nonlinearity(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """prox(z) on flat (batch, n) states."""
        raise NotImplementedError

    def reflect(self, u: torch.Tensor) -> torch.Tensor:
        """2 prox(u) - u."""
        return 2 * self(u) - u

    def derivative(self, pre: torch.Tensor) -> torch.Tensor:
        """prox'(pre), elementwise: the diagonal D of the adjoint equation at pre = W z + b."""
        raise NotImplementedError


class ReLU(Nonlinearity):
    """max(z, 0), and 0 wherever `mask` is 0 (the image borders a conv operator pins at zero: the
    proximal operator of the indicator of {z >= 0, z = 0 off the mask})."""

    def __init__(self, mask: torch.Tensor | None = None):
        super().__init__()
        # not persistent: checkpoints carry no such key (monotone_op_net's neither)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("live_units", None if mask is None else mask > 0, persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.relu(z)
        return z if self.mask is None else z * self.mask

    def reflect(self, u: torch.Tensor) -> torch.Tensor:
        # |u| on the live units, -u on the pinned ones: one pass over the state
        return u.abs() if self.mask is None else torch.where(self.live_units, u.abs(), -u)

    def derivative(self, pre: torch.Tensor) -> torch.Tensor:
        d = (pre > 0).to(pre.dtype)
        return d if self.mask is None else d * self.mask

    def live(self, n: int) -> torch.Tensor:
        """The units that may be non-zero, as a boolean (n,) tensor (on the mask's device)."""
        return torch.ones(n, dtype=torch.bool) if self.mask is None else self.live_units
