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

from .errors import CheckpointError

ORIGINAL_PREFIX = "mon.linear_module."
OUR_PREFIX = "mon.operator."
LIGHTNING_PREFIX = "model."


class CheckpointLayoutError(CheckpointError):
    """A state dict whose keys match no known layout of the configured model."""


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


def load_model(cfg, run_dir: Path):
    """The model of `cfg` with the weights of cfg.ckpt (else <run_dir>/model.ckpt), in eval mode, and its path."""
    from .models import build_model

    path = Path(cfg.ckpt) if cfg.ckpt else run_dir / "model.ckpt"
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if hparams and "m" in hparams and hparams["m"] is not None and cfg.model.name.startswith("mon"):
        if float(hparams["m"]) != float(cfg.m):
            raise ValueError(f"checkpoint {path} was trained with m={hparams['m']}, but m={cfg.m} was given")
    model = build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    layout = load_weights(model, checkpoint)
    print(f"loaded {path} ({layout} layout)", flush=True)
    return model.eval(), str(path)


def model_from_checkpoint(path: str | Path) -> nn.Module:
    """The network of one of our Lightning checkpoints, rebuilt from its saved hyperparameters alone."""
    from .models import build_model

    checkpoint = read_checkpoint(path)
    h = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not h:
        raise CheckpointError(f"{path} holds no hyperparameters (not a checkpoint of src.run); "
                              f"give the model's config instead")
    model = build_model(h["model"], float(h["m"]), h["splitting"], tuple(h["dataset"]["in_shape"]),
                        int(h["dataset"]["num_classes"]))
    load_weights(model, checkpoint)
    return model.eval()
