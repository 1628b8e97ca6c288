"""monDEQ classifiers: an implicit layer followed by a linear read-out.

Attribute names (`mon`, `Wout`) follow monotone_op_net so that its state
dicts map onto ours by renaming `mon.linear_module.` to `mon.operator.`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import SingleConvOperator
from .fc import FullyConnectedOperator
from .layer import MonDEQLayer
from .multiconv import MultiTierConvOperator
from .splitting import SolverConfig


class MonDEQNet(nn.Module):
    def __init__(self, operator, solver: SolverConfig, name: str, out_dim: int, num_classes: int):
        super().__init__()
        self.mon = MonDEQLayer(operator, solver, name)
        self.Wout = nn.Linear(out_dim, num_classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """Map the equilibrium to the features the output layer sees (linear)."""
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Wout(self.readout(self.mon(self.prepare(x))))

    def solver_stats(self) -> dict[str, float]:
        f, b = self.mon.fwd_stats, self.mon.bwd_stats
        return {"fwd_iters": float(f.iters), "fwd_residual": f.residual, "fwd_seconds": f.seconds,
                "bwd_iters": float(b.iters), "bwd_residual": b.residual, "bwd_seconds": b.seconds}

    def convergence(self) -> dict[str, dict]:
        """Every forward and backward solve since the last reset_convergence()."""
        return {what: tally.record() for what, tally in self.mon.tallies.items()}

    def reset_convergence(self) -> None:
        self.mon.reset_tallies()

    def tune_alpha(self, x: torch.Tensor, max_alpha: float = 1.0) -> float:
        return self.mon.tune_alpha(self.prepare(x), max_alpha)


class MonFCNet(MonDEQNet):
    def __init__(self, in_shape, num_classes: int, width: int, m: float, solver: SolverConfig):
        in_dim = int(torch.tensor(in_shape).prod())
        super().__init__(FullyConnectedOperator(in_dim, width, m), solver, f"mon_fc(width={width})",
                         width, num_classes)

    def prepare(self, x):
        return x.flatten(1)


class _PaddedConvNet(MonDEQNet):
    """Conv monDEQs see the image zero-padded by one pixel (28 -> 30), as the original."""

    def prepare(self, x):
        return F.pad(x, (1, 1, 1, 1))


class MonConvNet(_PaddedConvNet):
    pool = 4

    def __init__(self, in_shape, num_classes: int, channels: int, m: float, solver: SolverConfig):
        c_in, side = in_shape[0], in_shape[1] + 2
        self.side = side
        op = SingleConvOperator(c_in, channels, side, m)
        super().__init__(op, solver, f"mon_conv(channels={channels})",
                         channels * (side // self.pool) ** 2, num_classes)

    def readout(self, z):
        z = z.view(-1, *self.mon.operator.shape)
        return F.avg_pool2d(z, self.pool).flatten(1)


class MonMultiConvNet(_PaddedConvNet):
    def __init__(self, in_shape, num_classes: int, channels, m: float, solver: SolverConfig):
        channels = tuple(int(c) for c in channels)
        op = MultiTierConvOperator(in_shape[0], channels, in_shape[1] + 2, m)
        self.last_size = channels[-1] * op.sides[-1] ** 2
        super().__init__(op, solver, f"mon_multiconv(channels={list(channels)})", self.last_size, num_classes)

    def readout(self, z):
        return z[:, -self.last_size:]


def readout_rows(net) -> torch.Tensor:
    """R^T W_out^T as a (state_size, classes) float64 matrix on the output layer's device: the output
    layer pulled back to z.

    R (net.readout) is linear and parameter-free, so one vector-Jacobian
    product per class at z = 0 gives it exactly.
    """
    n = net.mon.operator.state_size
    Wo = net.Wout.weight.detach().to(torch.float64)
    z = torch.zeros(1, n, dtype=torch.float64, device=Wo.device, requires_grad=True)
    feats = net.readout(z)
    rows = [torch.autograd.grad(feats, z, grad_outputs=Wo[k].view(1, -1), retain_graph=True)[0][0]
            for k in range(Wo.shape[0])]
    return torch.stack(rows, dim=1)


def require_mondeq(net, what: str, fc: bool = False) -> None:
    """TypeError unless `net` is a monDEQ classifier (`fc`: a fully connected one): the bounds' own check."""
    if not isinstance(net, MonDEQNet):
        raise TypeError(f"{what} applies to monDEQ classifiers, got {type(net).__name__}")
    if fc and not isinstance(net.mon.operator, FullyConnectedOperator):
        raise TypeError(f"{what} is implemented for fully connected monDEQs only, "
                        f"got operator {type(net.mon.operator).__name__}")
