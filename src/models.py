"""Every network of the project, declared once (MODELS), and one way to build it from plain config values.

A new model is a network class, one line in MODELS (its config fields, whether it is a monDEQ, the
bound the paper certifies it with) and its conf/model/<name>.yaml; the schema reads the names from here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .baselines import CNN, DNN
from .mondeq.networks import MonConvNet, MonFCNet, MonMultiConvNet
from .mondeq.splitting import SolverConfig

@dataclass(frozen=True)
class ModelKind:
    network: type
    fields: frozenset[str]     # its keys under model. (besides name)
    mondeq: bool               # takes m and the splitting settings
    certify_with: str          # certify.bound=auto: the paper's bound for this family (src/bounds/registry.py)
    local_global: str | None = None  # certify.bound=local: the global constants beside the local radii


MODELS: dict[str, ModelKind] = {
    # anderson: the family's default splitting.anderson (conf/model/), which reaches the solver there
    "mon_fc": ModelKind(MonFCNet, frozenset({"width", "anderson"}), True, "theorem1", "sdp_pairwise"),
    "mon_conv": ModelKind(MonConvNet, frozenset({"channels", "anderson"}), True, "theorem1", "theorem1_pooled"),
    "mon_multiconv": ModelKind(MonMultiConvNet, frozenset({"channels", "anderson"}), True, "theorem1",
                               "theorem1_pooled"),
    "dnn": ModelKind(DNN, frozenset({"depth", "width"}), False, "lipsdp_neuron"),
    "cnn": ModelKind(CNN, frozenset({"depth", "size"}), False, "seqlip_greedy"),
}
MONDEQ_MODELS = frozenset(name for name, kind in MODELS.items() if kind.mondeq)


def name_of(model: nn.Module) -> str:
    """The MODELS name of a network built by build_model."""
    return next(name for name, kind in MODELS.items() if type(model) is kind.network)


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
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    params = {k: v for k, v in model_cfg.items() if k != "name"}
    unknown = set(params) - MODELS[name].fields
    if unknown:
        raise ValueError(f"model {name}: unknown keys {sorted(unknown)}; known: {sorted(MODELS[name].fields)}")
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
    return MODELS[name].network(in_shape, num_classes, size, float(m), solver)
