"""The certificates that are not a global bound's rule, declared once.

A global certificate is any upper bound of src/bounds/registry.py with a rule of src/certify/rules.py
(`certify.bound=<bound>`, `certify.rule=...`).  The others are declared here: the models each applies
to, the bound whose (class-pair) constants it rests on, and its settings (`certify.<name>.<key>`).
`certify.bound` takes its choices from here and from the bound methods.  The certificate `name` is
computed by src/certify/<name>.py: `check_applies(net)` (what the config cannot tell, as a state size)
and `curve(net, x, labels, constant, eps, settings, pixels=, mean=, std=)`, its certified-accuracy curve.  Like the
bounds' registry, this module imports no certificate: the schema, and so training, depend on it only.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..keys import NONNEG_INT, POS_INT, ROBUSTNESS, Key, boolean, choice, number, one_of
from ..models import MODELS


@dataclass(frozen=True)
class Certificate:
    applies: Callable[[str], bool]          # to a model name of src/models.py
    rests_on: Callable[[str], str]          # the bound method whose constants it uses, per model name
    keys: Mapping[str, Key]                 # certify.<name>.<key>
    rule: Callable[[Mapping], str]          # its curve's name after "<name>/", from its settings
    named_by: tuple[str, ...] = ()          # the settings rule() carries: other values make another curve


# The local certificate's ways of bounding the network over a ball (src/certify/local.py)
LOCAL_METHODS = ("vertex", "monotone")
# The balls of the exact certificate (src/certify/balls.py; declared here so that the schema imports no
# certificate)
NORMS = ("l2", "linf")

CERTIFICATES: dict[str, Certificate] = {
    "local": Certificate(
        applies=lambda model: MODELS[model].mondeq,
        rests_on=lambda model: MODELS[model].local_global,
        keys={"method": Key(one_of(LOCAL_METHODS), {ROBUSTNESS}),
              # 2^n vertex solves per input: at 14 one input's batch of solves is ~120 MB
              "max_unstable": Key(number(0, 14, integer=True), {ROBUSTNESS}),
              "refine": Key(NONNEG_INT, {ROBUSTNESS}),
              "steps": Key(POS_INT, {ROBUSTNESS})},
        rule=lambda settings: "local"),
    "exact": Certificate(
        applies=lambda model: MODELS[model].mondeq,
        rests_on=lambda model: MODELS[model].local_global,
        keys={"norm": Key(choice(*NORMS), {ROBUSTNESS}),
              "box": Key(boolean(), {ROBUSTNESS}),
              # 2^n regions per undecided input, each with a (P, classes, d) gradient block
              "max_unstable": Key(number(0, 14, integer=True), {ROBUSTNESS}),
              "max_solves": Key(NONNEG_INT, {ROBUSTNESS}),
              "refine": Key(NONNEG_INT, {ROBUSTNESS}),
              "attack_steps": Key(NONNEG_INT, {ROBUSTNESS}),
              "restarts": Key(POS_INT, {ROBUSTNESS}),
              "steps": Key(NONNEG_INT, {ROBUSTNESS}),
              "max_nodes": Key(NONNEG_INT, {ROBUSTNESS}),
              "tighten": Key(NONNEG_INT, {ROBUSTNESS})},
        rule=lambda settings: settings["norm"] if settings["box"] else f"{settings['norm']}_nobox",
        named_by=("norm", "box")),
}
