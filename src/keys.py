"""The vocabulary of config keys: a `Rule` (type, range, choices) and a `Key` (a rule and the results
it changes).  Every module that reads config values declares its keys with these (the splitting
settings in src/mondeq/splitting.py, a model's fields in src/models.py, the rest in src/schema.py),
so that a value is checked by one rule wherever it is read.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from omegaconf import ListConfig

from .errors import ConfigError

class Invalid(ValueError):
    """What a value must be (the rule's half of the message)."""


@dataclass(frozen=True)
class Rule:
    cast: Callable[[object], object]  # returns the checked value or raises Invalid


# The results a key can change: one per app that writes them.
RUN = "run"                        # src.run: the trained weights, metrics.json
BOUNDS = "bounds"                  # src.bound: the Lipschitz bounds of a checkpoint
GENERALIZATION = "generalization"  # src.bound: the generalization bound of a checkpoint
ROBUSTNESS = "robustness"          # src.robustness: the curves of a checkpoint
EVERY = frozenset({RUN, BOUNDS, GENERALIZATION, ROBUSTNESS})
# Says where or how fast (paths, devices, batch sizes of evaluation, logging), or which entries an
# app makes (each entry carries what identifies it): two values never give two different numbers.
NOTHING = frozenset()


@dataclass(frozen=True)
class Key:
    """A config key's rule and the results it changes: the one declaration a key has."""
    rule: Rule
    changes: frozenset[str]
    of_checkpoint: bool = False  # what a checkpoint is of (model, m, data): one recording another is refused
    mondeq_only: bool = False    # means nothing to a feed-forward network: left out of its results' settings

    def __init__(self, rule: Rule, changes, *, of_checkpoint: bool = False, mondeq_only: bool = False):
        unknown = set(changes) - EVERY
        if unknown:
            raise ValueError(f"Key.changes: {sorted(unknown)}; allowed: {sorted(EVERY)}")
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "changes", frozenset(changes))
        object.__setattr__(self, "of_checkpoint", of_checkpoint)
        object.__setattr__(self, "mondeq_only", mondeq_only)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False, null=False) -> Rule:
    kind = "a whole number" if integer else "a number"
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo if isinstance(lo, int) else f'{lo:g}'}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi if isinstance(hi, int) else f'{hi:g}'}")
    allowed = kind + (" " + " and ".join(bounds) if bounds else "") + (", or null" if null else "")

    def cast(v):
        if v is None and null:
            return None
        if not is_number(v) or not math.isfinite(v) or (integer and not float(v).is_integer()):
            raise Invalid(allowed)
        if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)):
            raise Invalid(allowed)
        return int(v) if integer else float(v)
    return Rule(cast)


def boolean(null=False) -> Rule:
    def cast(v):
        if v is None and null:
            return None
        if not isinstance(v, bool):
            raise Invalid("true or false" + (", or null" if null else ""))
        return v
    return Rule(cast)


def choice(*options, null=False) -> Rule:
    allowed = "one of " + ", ".join(str(o) for o in options) + (", or null" if null else "")

    def cast(v):
        if v is None and null:
            return None
        for o in options:
            if v == o and type(v) is type(o):
                return v
        raise Invalid(allowed)
    return Rule(cast)


def one_of(registry: Mapping) -> Rule:
    """A name declared in `registry`, read when a value is checked: a name registered later counts."""
    def cast(v):
        if isinstance(v, str) and v in registry:
            return v
        raise Invalid("one of " + ", ".join(registry))
    return Rule(cast)


def text(null=False) -> Rule:
    def cast(v):
        if v is None and null:
            return None
        if not isinstance(v, str) or not v:
            raise Invalid("a non-empty string" + (", or null" if null else ""))
        return v
    return Rule(cast)


def listed(item: Rule, *, min_len=1, length=None, null=False, what="") -> Rule:
    """A list of `item`s; a bare item is a list of one."""
    def cast(v):
        if v is None and null:
            return None
        values = list(v) if isinstance(v, (list, tuple, ListConfig)) else [v]
        try:
            out = [item.cast(x) for x in values]
        except Invalid as err:
            raise Invalid(f"{what or 'a list'} of {err}") from None
        if len(out) < min_len or (length is not None and len(out) != length):
            n = f"{length}" if length is not None else f"at least {min_len}"
            raise Invalid(f"{what or 'a list'} of {n} value(s)")
        return out
    return Rule(cast)


def anything() -> Rule:
    return Rule(lambda v: v)


POSITIVE = number(0, lo_open=True)
POS_INT = number(1, integer=True)
NONNEG_INT = number(0, integer=True)
SEED = number(0, 2**32 - 1, integer=True)  # numpy's (and so Lightning's) seeds are 32-bit
UNIT_OPEN = number(0, 1, lo_open=True, hi_open=True)
# radii: >= 0, and far below any overflow of eps / std (an l2 radius past the image box's diameter,
# 28 for MNIST and 55 for CIFAR-10 pixels, covers every image there is)
EPS = number(0, 1e3)
ANDERSON = Rule(lambda v: int(v) if is_count(v, lo=0) and v != 1 else fail("0 (off) or a history size >= 2"))
DEVICE = Rule(lambda v: v if isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
              else fail("auto, cpu or cuda[:N]"))
# 16-mixed / bf16-mixed would run the equilibrium solve in half precision: refused, not silently degraded
PRECISIONS = ("32-true", "32", 32)
LIMIT = Rule(lambda v: _limit(v))


def _limit(v):
    """Lightning's limit_*_batches: a fraction in (0, 1] or a whole number of batches >= 1."""
    if is_number(v) and math.isfinite(v) and ((isinstance(v, float) and 0 < v <= 1) or (isinstance(v, int) and v >= 1)):
        return v
    raise Invalid("a fraction in (0, 1] or a whole number of batches >= 1")


def fail(allowed: str):
    raise Invalid(allowed)


def is_count(v, lo: int = 1) -> bool:
    return is_number(v) and math.isfinite(v) and float(v).is_integer() and v >= lo


def checked(key: str, rule: Rule, value):
    """`value` cast by `rule`; ConfigError naming the key, the value and what is allowed."""
    try:
        return rule.cast(value)
    except Invalid as err:
        raise ConfigError(f"{key}={show(value)}: allowed: {err}") from None


def show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)
