"""The contract every monotone operator W implements.

The splitting methods only ever see flat states of shape (batch, n): an
operator owns the layout of its state (one tier or several, images or
vectors) and reshapes internally.  This keeps the solvers free of per-tier
Python loops and lets one elementwise op cover every tier at once.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


class Resolvent:
    """(I + alpha (I - W))^-1 and its transpose for frozen weights.

    Built by `MonotoneOperator.resolvent`, once per weight version and alpha (`MonotoneOperator.frozen`,
    src/mondeq/layer.py); it holds no autograd graph.
    """

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reflect(self, w: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """(2R - I) w + shift: Peaceman-Rachford's reflected resolvent step."""
        return 2 * self.apply(w) - w + shift

    def reflect_transpose(self, w: torch.Tensor) -> torch.Tensor:
        """(2R^T - I) w."""
        return 2 * self.apply_transpose(w) - w


class MonotoneOperator(nn.Module):
    """W with I - W >= m I for every value of its parameters.

    Subclasses set `state_size` (n) and `m` and implement the methods below.
    All maps act on rows: `multiply(z)` returns (W z^T)^T for z of shape
    (batch, n).  The nonlinearity is not the operator's (nonlinearity.py).
    """

    m: float
    state_size: int
    input_shape: tuple[int, ...]

    def input_term(self, x: torch.Tensor) -> torch.Tensor:
        """U x + b as a flat (batch, n) state."""
        raise NotImplementedError

    def multiply(self, z: torch.Tensor) -> torch.Tensor:
        """W z."""
        raise NotImplementedError

    def multiply_transpose(self, z: torch.Tensor) -> torch.Tensor:
        """W^T z."""
        raise NotImplementedError

    def resolvent(self, alpha: float) -> Resolvent:
        """(I + alpha (I - W))^-1 for the current weights, without autograd."""
        raise NotImplementedError

    def border_mask(self) -> torch.Tensor | None:
        """(n,) with 0 on the units the layer pins at zero (the image borders of a circular convolution,
        as monotone_op_net's MONBorderReLU), 1 elsewhere, in the weights' dtype and on their device;
        None when there are none."""
        return None

    def dense_matrix(self) -> torch.Tensor:
        """W as an (n, n) matrix, built column by column (small sizes only)."""
        eye = torch.eye(self.state_size, dtype=self._dtype(), device=self._device())
        return self.multiply(eye).T

    def dense_input_matrix(self) -> torch.Tensor:
        """U as an (n, d) matrix acting on the flattened input (small sizes only)."""
        d = int(torch.tensor(self.input_shape).prod())
        eye = torch.eye(d, dtype=self._dtype(), device=self._device())
        zero = torch.zeros(1, *self.input_shape, dtype=eye.dtype, device=eye.device)
        cols = self.input_term(eye.reshape(d, *self.input_shape)) - self.input_term(zero)
        return cols.T

    def frozen(self, name: str, build: Callable[[], T], *settings) -> T:
        """build(), once per version of the weights: the one value kept under `name` is reused while no
        parameter of the operator changed (an optimizer step, load_state_dict or any in-place change bumps
        a tensor's version; .to() makes new tensors) and m and `settings` (as alpha) are the same.  Changes
        through `.data` are invisible here, as they are to autograd.  For what holds no autograd graph
        (resolvents, W for solves without grad)."""
        version = (self.m, settings, *((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters()))
        cache = self.__dict__.setdefault("_frozen", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == version:
            return hit[1]
        cache.pop(name, None)  # the old value goes before the new one is built (peak memory)
        start = time.perf_counter()
        value = build()
        count, seconds = self.builds
        # src.bench's share spent building; no sync: on a GPU this is mostly the launches' time
        self.__dict__["_builds"] = (count + 1, seconds + time.perf_counter() - start)
        cache[name] = (version, value)
        return value

    @property
    def builds(self) -> tuple[int, float]:
        """(count, seconds) of the values frozen() built since the operator was made (src.bench reads them)."""
        return self.__dict__.get("_builds", (0, 0.0))

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device
