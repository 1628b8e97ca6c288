"""Single-convolution monotone operator with FFT resolvents.

W = (1-m) I - g A^T A + B - B^T with A, B 3x3 circular convolutions divided
by their Frobenius norms and B scaled by h (monotone_op_net's MONSingleConv).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .operator import MonotoneOperator, Resolvent
from .spectral import apply_spectrum, circular_conv, circular_conv_transpose, conv_spectrum


def image_interior(channels: int, side: int, border: int = 1) -> torch.Tensor:
    """(channels * side * side,): 1 inside the image, 0 on its `border` outermost pixels."""
    mask = torch.zeros(channels, side, side)
    mask[:, border:side - border, border:side - border] = 1
    return mask.flatten()


class SpectralResolvent(Resolvent):
    def __init__(self, inverse: torch.Tensor, shape: tuple[int, int, int]):
        self.inverse = inverse
        self.shape = shape

    @functools.cached_property
    def adjoint(self) -> torch.Tensor:
        """The per-frequency conjugate transposes, stored: a product with the `.mH` view (conjugated lazily)
        conjugates the whole spectrum on every call (3 times the product's time at batch 4; same result)."""
        return self.inverse.mH.resolve_conj().contiguous()

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        return apply_spectrum(self.inverse, z.view(-1, *self.shape)).flatten(1)

    def apply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        return apply_spectrum(self.adjoint, z.view(-1, *self.shape)).flatten(1)


class SingleConvOperator(MonotoneOperator):
    """C-channel operator on side x side images; parameter names follow monotone_op_net."""

    def __init__(self, in_channels: int, channels: int, side: int, m: float, kernel_size: int = 3):
        super().__init__()
        self.U = nn.Conv2d(in_channels, channels, kernel_size)
        self.A = nn.Conv2d(channels, channels, kernel_size, bias=False)
        self.B = nn.Conv2d(channels, channels, kernel_size, bias=False)
        self.g = nn.Parameter(torch.tensor(1.0))
        self.h = nn.Parameter(torch.tensor(1.0))
        self.m = float(m)
        self.shape = (channels, side, side)
        self.state_size = channels * side * side
        self.input_shape = (in_channels, side, side)

    def border_mask(self) -> torch.Tensor:
        return image_interior(*self.shape[:2]).to(self.U.weight)

    def kernels(self) -> tuple[torch.Tensor, torch.Tensor]:
        A = self.A.weight / self.A.weight.norm()
        B = self.h * self.B.weight / self.B.weight.norm()
        return A, B

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        return (circular_conv(x, self.U.weight) + self.U.bias[:, None, None]).flatten(1)

    def _multiply(self, z: torch.Tensor, sign: int) -> torch.Tensor:
        A, B = self.kernels()
        z = z.view(-1, *self.shape)
        ata = circular_conv_transpose(circular_conv(z, A), A)
        skew = circular_conv(z, B) - circular_conv_transpose(z, B)
        return ((1 - self.m) * z - self.g * ata + sign * skew).flatten(1)

    def multiply(self, z: torch.Tensor) -> torch.Tensor:
        return self._multiply(z, 1)

    def multiply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        return self._multiply(z, -1)

    def spectrum(self) -> torch.Tensor:
        """Per-frequency matrices of W, shape (H, W//2+1, C, C)."""
        A, B = self.kernels()
        size = self.shape[1:]
        Af, Bf = conv_spectrum(A, size), conv_spectrum(B, size)
        eye = torch.eye(self.shape[0], dtype=Af.dtype, device=Af.device)
        return (1 - self.m) * eye - self.g * Af.mH @ Af + Bf - Bf.mH

    @torch.no_grad()
    def resolvent(self, alpha: float) -> SpectralResolvent:
        Wf = self.spectrum()
        eye = torch.eye(self.shape[0], dtype=Wf.dtype, device=Wf.device)
        return SpectralResolvent(torch.linalg.inv((1 + alpha) * eye - alpha * Wf), self.shape)
