"""Load weights from our checkpoints or from the original code's state dicts.

Layouts are told apart by their keys:
- ours (a Lightning checkpoint: `state_dict` with keys `model.<...>`),
- a bare state dict of our networks,
- monotone_op_net / lipschitz_mondeq monDEQs (`mon.linear_module.<...>`),
- DNN/CNN baselines saved as nn.Sequential (`1.weight`, ...), which is our layout.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

ORIGINAL_PREFIX = "mon.linear_module."
OUR_PREFIX = "mon.operator."
LIGHTNING_PREFIX = "model."


class CheckpointLayoutError(ValueError):
    pass


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def _candidates(raw: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Every reading of the keys that a known layout allows."""
    out = {"ours": dict(raw)}
    if any(k.startswith(LIGHTNING_PREFIX) for k in raw):
        out["lightning"] = {k[len(LIGHTNING_PREFIX):]: v for k, v in raw.items() if k.startswith(LIGHTNING_PREFIX)}
    if any(k.startswith(ORIGINAL_PREFIX) for k in raw):
        out["monotone_op_net"] = {(OUR_PREFIX + k[len(ORIGINAL_PREFIX):] if k.startswith(ORIGINAL_PREFIX) else k): v
                                  for k, v in raw.items()}
    return out


def load_weights(model: nn.Module, checkpoint: Mapping) -> str:
    """Load a checkpoint (Lightning dict or any known state-dict layout) into `model`.

    Returns the name of the layout found; raises CheckpointLayoutError listing
    the missing and unexpected keys when no layout matches.
    """
    raw = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    expected = set(model.state_dict())
    candidates = _candidates(raw)
    for layout, state in candidates.items():
        if set(state) == expected:
            model.load_state_dict(state)
            return layout
    closest = min(candidates.values(), key=lambda s: len(set(s) ^ expected))
    missing = sorted(expected - set(closest))
    unexpected = sorted(set(closest) - expected)
    raise CheckpointLayoutError(
        f"the checkpoint matches no known layout for {type(model).__name__} "
        f"(tried {sorted(candidates)}); missing keys: {missing}; unexpected keys: {unexpected}")
