"""Evaluating a classifier on tensors in memory: the device, logits in batches, test error, and
the convergence record of the equilibrium solves behind them (monDEQs)."""
from __future__ import annotations

import logging

import torch

from .errors import ConfigError
from .progress import ticking

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """`auto`: cuda when available, else cpu; a cuda device asked for must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


@torch.no_grad()
def test_error(model, x: torch.Tensor, y: torch.Tensor, batch: int = 400) -> float:
    starts = range(0, len(x), batch)
    wrong = sum(int((model(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum())
                for i in ticking(starts, len(starts), "test error"))
    return wrong / len(x)


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    starts = range(0, len(x), batch_size)
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in ticking(starts, len(starts), "logits")])


def reset_convergence(model) -> None:
    if hasattr(model, "reset_convergence"):
        model.reset_convergence()


def convergence(model) -> dict | None:
    """{forward, backward}: solves since the last reset, the fraction that reached the tolerance and the
    worst final residual; None for a network without equilibrium solves."""
    return model.convergence() if hasattr(model, "convergence") else None


def warn_unconverged(record: dict | None, where: str) -> None:
    """One console line per direction in which some solve ended above its tolerance."""
    for what, r in (record or {}).items():
        if r["samples"] and r["converged_fraction"] < 1:
            failed = r["samples"] - round(r["converged_fraction"] * r["samples"])
            log.warning(f"warning: {where}: {failed} of {r['samples']} samples' {what} solves ended above the tolerance "
                        f"(worst relative residual {r['worst_residual']:.3g}); the numbers rest on unconverged "
                        f"equilibria (splitting.on_nonconvergence=error refuses them)")
