"""Every Lipschitz estimate and certificate method of the project, declared once.

A bound method names its kind (an upper or a lower bound), the models it applies to and whether
it needs test data; its function of the same name in src/bounds/compute.py computes it.  The
schema reads the names and rules from here, so this module imports no bound: a change of a bound
never counts as a change of training (DVC's train stages depend on this file, not on src/bounds).

A new bound is its function in compute.py (over the module that holds its mathematics) and one
line in METHODS (with its settings, if it has any, and their rules).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..keys import BOUNDS, NONNEG_INT, POS_INT, POSITIVE, Key, listed
from ..models import MODELS


@dataclass(frozen=True)
class Method:
    kind: str  # "upper" or "lower"
    applies: Callable[[str], bool]  # to a model name of src/models.py
    needs_data: bool = False
    keys: Mapping[str, Key] = field(default_factory=dict)  # its settings, bound.<key>: only its entries record them


def _mondeq(name: str) -> bool:
    return MODELS[name].mondeq


def _fc_mondeq(name: str) -> bool:
    return name == "mon_fc"


def _conv_mondeq(name: str) -> bool:
    return _mondeq(name) and not _fc_mondeq(name)


def _feedforward(name: str) -> bool:
    return not _mondeq(name)


_UNROLLED = {"unrolled_alphas": Key(listed(POSITIVE, what="a list"), {BOUNDS}),
             "unrolled_tol": Key(POSITIVE, {BOUNDS}), "unrolled_batch": Key(POS_INT, {BOUNDS})}

METHODS: dict[str, Method] = {
    "theorem1": Method("upper", _mondeq),
    "theorem1_pooled": Method("upper", _conv_mondeq),
    "sdp_diag": Method("upper", _fc_mondeq),
    "sdp_pairwise": Method("upper", _fc_mondeq),
    "unrolled_fb": Method("upper", _fc_mondeq, needs_data=True, keys=_UNROLLED),
    "unrolled_pr": Method("upper", _fc_mondeq, needs_data=True, keys=_UNROLLED),
    "naive": Method("upper", _feedforward),
    "autolip": Method("upper", _feedforward),
    "seqlip_greedy": Method("upper", _feedforward),
    "lipsdp_neuron": Method("upper", lambda name: name == "dnn"),
    "lipsdp_layer": Method("upper", lambda name: name == "dnn"),
    "grad_norm": Method("lower", lambda name: True, needs_data=True,
                        keys={"lower_points": Key(POS_INT, {BOUNDS}), "ascent_steps": Key(NONNEG_INT, {BOUNDS})}),
}
# every method's settings, as the schema declares them (bound.<key>)
METHOD_KEYS: dict[str, Key] = {key: declared for method in METHODS.values() for key, declared in method.keys.items()}


def select_methods(model_name: str, requested: Iterable[str] | None) -> list[str]:
    """The methods of `requested` (None: every one that applies) for the model `model_name`;
    ValueError naming those that do not apply."""
    if requested is None:
        return [name for name, method in METHODS.items() if method.applies(model_name)]
    requested = list(requested)
    unknown = [r for r in requested if r not in METHODS]
    if unknown:
        raise ValueError(f"unknown bound.methods {unknown}; known: {sorted(METHODS)}")
    wrong = [r for r in requested if not METHODS[r].applies(model_name)]
    if wrong:
        fits = [name for name, method in METHODS.items() if method.applies(model_name)]
        raise ValueError(f"bound.methods {wrong} do not apply to model {model_name}; those that do: {fits}")
    return requested
