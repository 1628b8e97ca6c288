"""The multi-tier convolutional monotone operator (MONMultiConv of monotone_op_net).

Tier i holds a (c_i, s_i, s_i) image; s_i = (image_size - 2) // 2**i + 2.  A
stride-2 convolution A_n(i) couples tier i to tier i+1, so W is block lower
triangular:

    W_ii     = (1-m) I - A_i^T A_i + B_i - B_i^T - A_n(i)^T A_n(i)
    W_i,i-1  = -2 A_i^T P A_n(i-1)          (P: zero-pad bottom/right by 1)

and the quadratic form of I - W is m|z|^2 + sum_i |A_i z_i + P A_n(i-1) z_{i-1}|^2,
so I - W >= m I for any weights.  All convolutions are circular (3x3).

The resolvent is solved tier by tier.  A_n^T A_n is only invariant under
shifts by 2, so a tier with a next tier is written in polyphase form (its 4
pixel phases on the half grid become 4c channels): every block is then an
ordinary circular convolution on that grid and is diagonalised by one 2-D
FFT into per-frequency (4c x 4c) matrices.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .conv import image_interior
from .operator import MonotoneOperator, Resolvent
from .spectral import circular_conv as _conv, circular_conv_transpose as _conv_t, circular_pad as _cpad


def _conv_t_stride(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Adjoint of `_conv(x, k, stride=2)` for an even side n = 2 * y's side.

    conv_transpose2d yields n+1 rows whose row 0 is pixel n-1 (the circular
    pad's wrap-around): fold it onto the last row/column, without in-place ops.
    """
    t = F.conv_transpose2d(y, k, stride=2)
    t = torch.cat([t[..., :, 1:-1], t[..., :, -1:] + t[..., :, :1]], dim=-1)
    return torch.cat([t[..., 1:-1, :], t[..., -1:, :] + t[..., :1, :]], dim=-2)


def _zpad(y: torch.Tensor) -> torch.Tensor:
    return F.pad(y, (0, 1, 0, 1))


def _to_poly(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, c, n, n) -> (B, c*r*r, n/r, n/r); channel index c*r*r + py*r + px."""
    b, c, n, _ = x.shape
    h = n // r
    return x.reshape(b, c, h, r, h, r).permute(0, 1, 3, 5, 2, 4).reshape(b, c * r * r, h, h)


def _from_poly(x: torch.Tensor, r: int) -> torch.Tensor:
    b, cr, h, _ = x.shape
    c = cr // (r * r)
    return x.reshape(b, c, r, r, h, h).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * r, h * r)


def _symbol(k: torch.Tensor, r: int, stride: int, h: int) -> torch.Tensor:
    """Per-frequency matrix of x -> _conv(x, k, stride), both sides in r-phase form.

    Returns (h, h//2+1, o*ro*ro, c*r*r) complex, ro = r // stride, on the rfft2
    grid of the h x h half grid.  Output pixel ro*Y + q reads input pixel
    stride*(ro*Y + q) + d - 1 = r*(Y + u) + p: phase p shifted by u in
    {-1, 0, 1}, whose FFT factor exp(+2 pi i f u / h) is separable in y, x.
    """
    o, c = k.shape[:2]
    ro = r // stride
    ctype = torch.complex128 if k.dtype == torch.float64 else torch.complex64
    kp = k.new_zeros(o, ro, ro, c, r, r, 3, 3)  # polyphase kernel, taps u + 1
    for qy in range(ro):
        for dy in range(3):
            uy, py = divmod(stride * qy + dy - 1, r)
            for qx in range(ro):
                for dx in range(3):
                    ux, px = divmod(stride * qx + dx - 1, r)
                    kp[:, qy, qx, :, py, px, uy + 1, ux + 1] = k[:, :, dy, dx]
    kp = kp.reshape(o * ro * ro, c * r * r, 3, 3).to(ctype)
    u = torch.arange(-1, 2, device=k.device, dtype=k.dtype)
    ey = torch.exp(2j * math.pi * torch.outer(torch.arange(h, device=k.device, dtype=k.dtype), u) / h)
    ex = ey[: h // 2 + 1]
    return torch.einsum("ya,xb,oiab->yxoi", ey, ex, kp)


def _apply_freq(mat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spatial (B, in, h, h) -> spatial (B, out, h, h) through per-frequency `mat`."""
    h = x.shape[-1]
    y = torch.einsum("hwoi,bihw->bohw", mat, torch.fft.rfft2(x))
    return torch.fft.irfft2(y, s=(h, h))


def _hermitian(m: torch.Tensor) -> torch.Tensor:
    return m.transpose(-1, -2).conj()


class MultiConvResolvent(Resolvent):
    """Forward (transpose: backward) substitution over the tiers.

    Per tier the stacked matrices map [z_i ; coupling in] to [x_i ; coupling
    out] in one batched matmul per frequency, so apply() is FFTs and matmuls.
    """

    def __init__(self, op: "MultiTierConvOperator", fwd: list, bwd: list):
        self.op = op
        self.fwd, self.bwd = fwd, bwd

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        op = self.op
        out, carry = [], None
        for i, zi in enumerate(op._split(z)):
            r, ci = op._phases[i], op.channels[i] * op._phases[i] ** 2
            inp = zi if carry is None else torch.cat([zi, _zpad(carry)], 1)
            y = _apply_freq(self.fwd[i], _to_poly(inp, r))
            out.append(_from_poly(y[:, :ci], r))
            carry = y[:, ci:] if i < len(op.channels) - 1 else None  # A_n(i) x_i, half grid
        return op._join(out)

    def apply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        op = self.op
        gs = op._split(z)
        out, carry = [None] * len(gs), None
        for i in reversed(range(len(gs))):
            r, ci = op._phases[i], op.channels[i] * op._phases[i] ** 2
            inp = _to_poly(gs[i], r)
            if carry is not None:
                inp = torch.cat([inp, carry], 1)
            y = _apply_freq(self.bwd[i], inp)
            out[i] = _from_poly(y[:, :ci], r)
            carry = _from_poly(y[:, ci:], r)[..., :-1, :-1] if i > 0 else None  # P^T A_i x_i
        return op._join(out)


class MultiTierConvOperator(MonotoneOperator):
    """W of MONMultiConv; parameter names match its state dict."""

    def __init__(self, in_channels: int, channels, image_size: int, m: float = 1.0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one tier")
        sides = tuple((image_size - 2) // 2 ** i + 2 for i in range(len(channels)))
        if image_size < 3:
            raise ValueError(f"image_size must be >= 3, got {image_size}")
        for i, s in enumerate(sides[:-1]):
            if s % 2:
                raise ValueError(
                    f"tier {i} has odd side {s} (image_size={image_size}, sides {sides}): "
                    "a stride-2 coupling to the next tier needs an even side")
        self.channels, self.sides, self.m = channels, sides, float(m)
        self.input_shape = (in_channels, image_size, image_size)
        self._sizes = [c * s * s for c, s in zip(channels, sides)]
        self.state_size = sum(self._sizes)
        # Tiers with a stride-2 coupling are shift-invariant by 2 only.
        self._phases = [2] * (len(channels) - 1) + [1]

        self.U = nn.Conv2d(in_channels, channels[0], 3)
        self.A0 = nn.ModuleList(nn.Conv2d(c, c, 3, bias=False) for c in channels)
        self.B0 = nn.ModuleList(nn.Conv2d(c, c, 3, bias=False) for c in channels)
        self.A_n0 = nn.ModuleList(nn.Conv2d(c1, c2, 3, stride=2, bias=False)
                                  for c1, c2 in zip(channels[:-1], channels[1:]))
        self.g = nn.ParameterList(nn.Parameter(torch.tensor(1.0)) for _ in channels)
        self.gn = nn.ParameterList(nn.Parameter(torch.tensor(1.0)) for _ in channels[1:])
        self.h = nn.ParameterList(nn.Parameter(torch.tensor(1.0)) for _ in channels)

    def border_mask(self) -> torch.Tensor:
        return torch.cat([image_interior(c, s) for c, s in zip(self.channels, self.sides)]).to(self.U.weight)

    # normalised weights, as in the original
    def A(self, i: int) -> torch.Tensor:
        w = self.A0[i].weight
        return torch.sqrt(self.g[i]) * w / w.norm()

    def A_n(self, i: int) -> torch.Tensor:
        w = self.A_n0[i].weight
        return torch.sqrt(self.gn[i]) * w / w.norm()

    def B(self, i: int) -> torch.Tensor:
        w = self.B0[i].weight
        return self.h[i] * w / w.norm()

    def _split(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [t.reshape(-1, c, s, s) for t, c, s in
                zip(torch.split(z, self._sizes, dim=1), self.channels, self.sides)]

    def _join(self, zs) -> torch.Tensor:
        return torch.cat([t.reshape(t.shape[0], -1) for t in zs], dim=1)

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, *self.input_shape)
        z0 = F.conv2d(_cpad(x), self.U.weight, self.U.bias)
        rest = z0.new_zeros(x.shape[0], self.state_size - self._sizes[0])
        return torch.cat([z0.reshape(x.shape[0], -1), rest], dim=1)

    def multiply(self, z: torch.Tensor) -> torch.Tensor:
        zs, last = self._split(z), len(self.channels) - 1
        out = []
        for i, zi in enumerate(zs):
            a, b = self.A(i), self.B(i)
            az = _conv(zi, a)
            if i > 0:  # A_i^T (A_i z_i + 2 P A_n z_{i-1}): one adjoint for both terms
                az = az + 2 * _zpad(_conv(zs[i - 1], self.A_n(i - 1), stride=2))
            o = (1 - self.m) * zi - _conv_t(az, a) + _conv(zi, b) - _conv_t(zi, b)
            if i < last:
                an = self.A_n(i)
                o = o - _conv_t_stride(_conv(zi, an, stride=2), an)
            out.append(o)
        return self._join(out)

    def multiply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        gs, last = self._split(z), len(self.channels) - 1
        out = []
        for i, gi in enumerate(gs):
            a, b = self.A(i), self.B(i)
            o = (1 - self.m) * gi - _conv_t(_conv(gi, a), a) - _conv(gi, b) + _conv_t(gi, b)
            if i < last:
                an = self.A_n(i)
                s = _conv(gi, an, stride=2) + 2 * _conv(gs[i + 1], self.A(i + 1))[..., :-1, :-1]
                o = o - _conv_t_stride(s, an)
            out.append(o)
        return self._join(out)

    @torch.no_grad()
    def resolvent(self, alpha: float) -> MultiConvResolvent:
        """Per-tier frequency matrices of the substitution, built in float64."""
        alpha = float(alpha)
        dt = self._dtype()
        ctype = torch.complex128 if dt == torch.float64 else torch.complex64
        last = len(self.channels) - 1
        fwd, bwd = [], []
        for i, (c, s, r) in enumerate(zip(self.channels, self.sides, self._phases)):
            h = s // r
            a_hat = _symbol(self.A(i).double(), r, 1, h)
            b_hat = _symbol(self.B(i).double(), r, 1, h)
            eye = torch.eye(c * r * r, dtype=torch.complex128, device=a_hat.device)
            d_hat = ((1 + alpha * self.m) * eye
                     + alpha * (_hermitian(a_hat) @ a_hat - b_hat + _hermitian(b_hat)))
            if i < last:
                s_hat = _symbol(self.A_n(i).double(), 2, 2, h)
                d_hat = d_hat + alpha * _hermitian(s_hat) @ s_hat
            d_inv = torch.linalg.inv(d_hat)
            d_inv_h = _hermitian(d_inv)

            # forward: x_i = D^-1 (z_i - 2 alpha A_i^T u), u = P A_n(i-1) x_{i-1};
            # also emit A_n(i) x_i for the next tier.
            rows = d_inv if i == last else torch.cat([d_inv, s_hat @ d_inv], -2)
            if i > 0:
                rows = torch.cat([rows, -2 * alpha * rows @ _hermitian(a_hat)], -1)
            fwd.append(rows.to(ctype))

            # transpose: x_i = D^-T (g_i - 2 alpha A_n(i)^T v), v = P^T A_{i+1} x_{i+1};
            # also emit A_i x_i for the previous tier.
            rows = d_inv_h if i == 0 else torch.cat([d_inv_h, a_hat @ d_inv_h], -2)
            if i < last:
                rows = torch.cat([rows, -2 * alpha * rows @ _hermitian(s_hat)], -1)
            bwd.append(rows.to(ctype))
        return MultiConvResolvent(self, fwd, bwd)
