"""Circular convolutions in the Fourier domain.

A 3x3 convolution applied after circular padding is diagonalised by the 2-D
DFT: at each frequency it is a small (C_out x C_in) complex matrix.  Real
signals only need the half spectrum (rfft2), which halves every cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def circular_pad(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    return F.pad(x, (pad, pad, pad, pad), mode="circular")


def circular_conv(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Cross-correlation with a centred odd kernel, periodic boundary."""
    return F.conv2d(circular_pad(x, kernel.shape[-1] // 2), kernel, stride=stride)


def circular_conv_transpose(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Exact adjoint of `circular_conv`."""
    p = kernel.shape[-1] // 2
    y = F.conv_transpose2d(circular_pad(x, p), kernel)
    return y[..., 2 * p:-2 * p, 2 * p:-2 * p]


def conv_spectrum(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-frequency matrices of `circular_conv` on an H x W grid.

    Returns a complex tensor (H, W//2+1, C_out, C_in) such that
    rfft2(circular_conv(x, kernel))[..., k] = spectrum[k] @ rfft2(x)[..., k].
    """
    H, W = size
    c_out, c_in, kh, kw = kernel.shape
    # y[n] = sum_s K[s] x[n+s]  =>  Y[k] = conj(DFT of K placed at -s) ... placed at +s then conj
    embedded = kernel.new_zeros(c_out, c_in, H, W)
    rows = torch.arange(kh, device=kernel.device) - kh // 2
    cols = torch.arange(kw, device=kernel.device) - kw // 2
    embedded[:, :, (rows % H)[:, None], (cols % W)[None, :]] = kernel
    spectrum = torch.fft.rfft2(embedded).conj()
    return spectrum.permute(2, 3, 0, 1)


def apply_spectrum(spectrum: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply each frequency of x (batch, C_in, H, W) by its matrix."""
    H, W = x.shape[-2:]
    xf = torch.fft.rfft2(x).permute(2, 3, 1, 0)  # (H, W', C_in, batch)
    yf = (spectrum @ xf).permute(3, 2, 0, 1)
    return torch.fft.irfft2(yf, s=(H, W))
