"""One way to build every network of the project from plain config values."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .baselines import CNN, DNN
from .mondeq.networks import MonConvNet, MonFCNet, MonMultiConvNet
from .mondeq.splitting import SolverConfig

MONDEQ_MODELS = {"mon_fc": MonFCNet, "mon_conv": MonConvNet, "mon_multiconv": MonMultiConvNet}
MODEL_FIELDS = {
    # anderson: the family's default splitting.anderson (conf/model/), which reaches the solver there
    "mon_fc": {"width", "anderson"},
    "mon_conv": {"channels", "anderson"},
    "mon_multiconv": {"channels", "anderson"},
    "dnn": {"depth", "width"},
    "cnn": {"depth", "size"},
}


def _positive_int(name: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model {name}: {key} must be a positive integer, got {value!r}")
    return value


def build_model(model_cfg: Mapping, m: float | None, splitting_cfg: Mapping | None,
                in_shape, num_classes: int) -> nn.Module:
    """Build the classifier `model_cfg.name` for inputs of shape `in_shape` (C, H, W).

    monDEQs take the strong-monotonicity parameter `m` (> 0) and the
    splitting settings; the baselines ignore both.
    """
    name = model_cfg.get("name")
    if name not in MODEL_FIELDS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_FIELDS)}")
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    unknown = set(params) - MODEL_FIELDS[name]
    if unknown:
        raise ValueError(f"model {name}: unknown keys {sorted(unknown)}; known: {sorted(MODEL_FIELDS[name])}")
    in_shape = tuple(int(s) for s in in_shape)
    if name == "dnn":
        return DNN(in_shape, num_classes, _positive_int(name, "depth", params["depth"]),
                   _positive_int(name, "width", params["width"]))
    if name == "cnn":
        return CNN(in_shape, num_classes, depth=params.get("depth"), size=params.get("size"))
    if m is None or not float(m) > 0:
        raise ValueError(f"model {name}: m (strong monotonicity) must be > 0, got {m!r}")
    solver = SolverConfig.from_mapping(splitting_cfg or {})
    if name == "mon_fc":
        size = _positive_int(name, "width", params["width"])
    elif name == "mon_conv":
        size = _positive_int(name, "channels", params["channels"])
    else:
        size = [_positive_int(name, "channels", c) for c in params["channels"]]
    return MONDEQ_MODELS[name](in_shape, num_classes, size, float(m), solver)
