"""Every network of the project, declared once (MODELS), and one way to build it from plain config values.

A new model is a network class, one line in MODELS (its config fields and their rules, whether it is a
monDEQ, the bound the paper certifies it with) and its conf/model/<name>.yaml; the schema reads the
names and the rules from here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .baselines import CNN, CNN_SIZES, DNN
from .errors import ConfigError
from .keys import ANDERSON, POS_INT, POSITIVE, Rule, checked, choice, listed, number, one_of
from .mondeq.networks import MonConvNet, MonFCNet, MonMultiConvNet
from .mondeq.splitting import SolverConfig


@dataclass(frozen=True)
class ModelKind:
    network: type
    fields: Mapping[str, Rule]  # its keys under model. (besides name), passed to `network` by name
    mondeq: bool               # takes m and the splitting settings
    certify_with: str          # certify.bound=auto: the paper's bound for this family (src/bounds/registry.py)
    local_global: str | None = None  # certify.bound=local: the global constants beside the local radii

    @property
    def keys(self) -> dict[str, Rule]:
        """Every key under model. (besides name): a monDEQ's also names its family's default
        splitting.anderson (conf/model/), which reaches the solver through the splitting config."""
        return {**self.fields, **({"anderson": ANDERSON} if self.mondeq else {})}


MODELS: dict[str, ModelKind] = {
    "mon_fc": ModelKind(MonFCNet, {"width": POS_INT}, True, "theorem1", "sdp_pairwise"),
    "mon_conv": ModelKind(MonConvNet, {"channels": POS_INT}, True, "theorem1", "theorem1_pooled"),
    "mon_multiconv": ModelKind(MonMultiConvNet, {"channels": listed(POS_INT, what="a list (one per tier)")}, True,
                               "theorem1", "theorem1_pooled"),
    "dnn": ModelKind(DNN, {"depth": POS_INT, "width": POS_INT}, False, "lipsdp_neuron"),
    # exactly one of depth (3x3 convolutions) and size (the paper's CIFAR models): CNN checks it
    "cnn": ModelKind(CNN, {"depth": number(1, integer=True, null=True), "size": choice(*CNN_SIZES, null=True)},
                     False, "seqlip_greedy"),
}
MONDEQ_MODELS = frozenset(name for name, kind in MODELS.items() if kind.mondeq)


def name_of(model: nn.Module) -> str:
    """The MODELS name of a network built by build_model."""
    return next(name for name, kind in MODELS.items() if type(model) is kind.network)


def model_keys(name: str, given) -> dict[str, Rule]:
    """The rules of model `name`'s keys; ConfigError for a key it does not have or a field it lacks."""
    keys = MODELS[name].keys
    unknown = sorted(set(given) - set(keys) - {"name"})
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not a key of model {name}; its keys: {', '.join(keys)}")
    missing = [k for k in MODELS[name].fields if k not in given]
    if missing:
        raise ConfigError(f"model {name} needs model.{missing[0]}; its keys: {', '.join(keys)}")
    return keys


def build_model(model_cfg: Mapping, m: float | None, splitting_cfg: Mapping | None,
                in_shape, num_classes: int) -> nn.Module:
    """Build the classifier `model_cfg.name` for inputs of shape `in_shape` (C, H, W), its keys checked by
    the rules declared in MODELS.

    monDEQs take the strong-monotonicity parameter `m` (> 0) and the
    splitting settings; the baselines ignore both.
    """
    name = checked("model.name", one_of(MODELS), model_cfg.get("name"))
    kind, rules = MODELS[name], model_keys(name, model_cfg)
    fields = {k: checked(f"model.{k}", rules[k], model_cfg[k]) for k in kind.fields}
    in_shape = tuple(int(s) for s in in_shape)
    if not kind.mondeq:
        return kind.network(in_shape, num_classes, **fields)
    return kind.network(in_shape, num_classes, **fields, m=checked("m", POSITIVE, m),
                        solver=SolverConfig.from_mapping(splitting_cfg or {}))
