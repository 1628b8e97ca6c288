"""Fully connected monotone operator: W = (1-m) I - A^T A + B - B^T."""
from __future__ import annotations

import torch
from torch import nn

from .operator import MonotoneOperator, Resolvent


class DenseResolvent(Resolvent):
    def __init__(self, inverse: torch.Tensor):
        self.inverse, self.inverse_t = inverse, inverse.T
        # 2R - I, so that a Peaceman-Rachford step is one addmm
        self.reflection = 2 * inverse - torch.eye(inverse.shape[0], dtype=inverse.dtype, device=inverse.device)
        self.reflection_t = self.reflection.T  # a view, taken once: a solve's iterations take none

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return torch.mm(z, self.inverse_t)

    def apply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        return torch.mm(z, self.inverse)

    def reflect(self, w: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return torch.addmm(shift, w, self.reflection_t)

    def reflect_transpose(self, w: torch.Tensor) -> torch.Tensor:
        return torch.mm(w, self.reflection)


class FullyConnectedOperator(MonotoneOperator):
    """Width-h operator on flattened inputs; parameter names follow monotone_op_net."""

    def __init__(self, in_dim: int, width: int, m: float):
        super().__init__()
        self.U = nn.Linear(in_dim, width)
        self.A = nn.Linear(width, width, bias=False)
        self.B = nn.Linear(width, width, bias=False)
        self.m = float(m)
        self.state_size = width
        self.input_shape = (in_dim,)

    def weight(self) -> torch.Tensor:
        return monotone_weight(self.A.weight, self.B.weight, self.m)

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        return self.U(x.flatten(1))

    def _matrix(self) -> torch.Tensor:
        # inside a solve (no grad) W is formed once per weight version, not once per iteration
        return self.weight() if torch.is_grad_enabled() else self.frozen("W", self.weight)

    def multiply(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self._matrix().T

    def multiply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self._matrix()

    @torch.no_grad()
    def resolvent(self, alpha: float) -> DenseResolvent:
        W = self.weight()
        eye = torch.eye(self.state_size, dtype=W.dtype, device=W.device)
        return DenseResolvent(torch.linalg.inv((1 + alpha) * eye - alpha * W))

    def dense_matrix(self) -> torch.Tensor:
        return self.weight()

    def dense_input_matrix(self) -> torch.Tensor:
        return self.U.weight


def monotone_weight(A: torch.Tensor, B: torch.Tensor, m: float) -> torch.Tensor:
    """W = (1 - m) I - A^T A + B - B^T: sym(I - W) = m I + A^T A >= m I for any A, B (the one place it is formed)."""
    eye = torch.eye(A.shape[1], dtype=A.dtype, device=A.device)
    return (1 - m) * eye - A.T @ A + B - B.T
