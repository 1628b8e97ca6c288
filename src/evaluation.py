"""Evaluating a classifier on tensors in memory: the device, logits in batches, test error."""
from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(name: str) -> torch.device:
    """`auto`: cuda when available, else cpu; a cuda device asked for must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


@torch.no_grad()
def test_error(model, x: torch.Tensor, y: torch.Tensor, batch: int = 400) -> float:
    wrong = sum(int((model(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return wrong / len(x)


@torch.no_grad()
def logits_of(model, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
