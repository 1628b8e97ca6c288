"""The typed schema of every config key: checked before any data is read or any model trained.

`check(cfg)` walks every leaf of a composed config (all apps, every group) and applies the
rule of its key: type, range, choices.  Keys holding a list accept a bare value (`bound.methods=
theorem1` is `[theorem1]`) and are rewritten as lists in place; numbers are cast to their type.
A key without a rule is refused, so a key added to conf/ without one fails the tests
(tests/test_schema.py composes every config).  `trainer.*` keys beyond the known ones are
Lightning's to check (`+trainer.KEY=VALUE`).  Hydra's own keys are not ours.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from .errors import ConfigError


class Invalid(ValueError):
    """What a value must be (the rule's half of the message)."""


@dataclass(frozen=True)
class Rule:
    cast: Callable[[object], object]  # returns the checked value or raises Invalid


def _is_number(v) -> bool:
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
        if not _is_number(v) or not math.isfinite(v) or (integer and not float(v).is_integer()):
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
BOUND_METHODS = ("theorem1", "theorem1_pooled", "sdp_diag", "sdp_pairwise", "unrolled_fb", "unrolled_pr", "naive",
                 "autolip", "seqlip_greedy", "lipsdp_neuron", "lipsdp_layer", "grad_norm")
# 16-mixed / bf16-mixed would run the equilibrium solve in half precision: refused, not silently degraded
PRECISIONS = ("32-true", "32", 32)
LIMIT = Rule(lambda v: _limit(v))


def _limit(v):
    """Lightning's limit_*_batches: a fraction in (0, 1] or a whole number of batches >= 1."""
    if _is_number(v) and math.isfinite(v) and ((isinstance(v, float) and 0 < v <= 1) or (isinstance(v, int) and v >= 1)):
        return v
    raise Invalid("a fraction in (0, 1] or a whole number of batches >= 1")


RULES: dict[str, Rule] = {
    # config.yaml
    "m": POSITIVE,
    "seed": SEED,
    "ckpt": text(null=True),
    "margin_gamma": POSITIVE,
    "profile": text(),
    "optim.lr": POSITIVE,
    "optim.schedule": choice("step", "onecycle", "none"),
    "optim.step_size": POS_INT,
    "optim.gamma": number(0, 1, lo_open=True),
    "optim.epochs": POS_INT,
    # dataset
    "dataset.name": choice("mnist", "mnist5k", "fashion_mnist", "cifar10", "synthetic"),
    "dataset.root": text(null=True),
    "dataset.system_dir": text(null=True),
    "dataset.download": boolean(),
    "dataset.in_shape": listed(POS_INT, length=3, what="a list (channels, height, width)"),
    "dataset.num_classes": number(2, integer=True),
    "dataset.mean": listed(number(), what="a list (one per channel)"),
    "dataset.std": listed(POSITIVE, what="a list (one per channel)"),
    "dataset.batch_size": POS_INT,
    "dataset.test_batch_size": POS_INT,
    "dataset.num_workers": NONNEG_INT,
    "dataset.augment": boolean(),
    "dataset.seed": SEED,
    # synthetic images are made in memory: 10^6 of MNIST size are 0.8 GB
    "dataset.n_train": number(1, 10 ** 6, integer=True),
    "dataset.n_test": number(1, 10 ** 6, integer=True),
    # model (the fields per model name are build_model's to check)
    "model.name": choice("mon_fc", "mon_conv", "mon_multiconv", "dnn", "cnn"),
    "model.width": POS_INT,
    "model.depth": number(1, integer=True, null=True),
    "model.size": choice("sm", "med", "lg", null=True),
    # mon_conv: one count; mon_multiconv: one per tier (build_model checks which)
    "model.anderson": Rule(lambda v: int(v) if _is_count(v, lo=0) and v != 1
                           else _fail("0 (off) or a history size >= 2")),
    "model.channels": Rule(lambda v: v if (_is_count(v) or (isinstance(v, list) and v and all(map(_is_count, v))))
                           else _fail("a whole number >= 1 or a non-empty list of them")),
    # splitting
    "splitting.name": choice("pr", "fb"),
    "splitting.alpha": POSITIVE,
    "splitting.fwd_tol": POSITIVE,
    "splitting.bwd_tol": POSITIVE,
    "splitting.fwd_max_iter": POS_INT,
    "splitting.bwd_max_iter": POS_INT,
    "splitting.check_every": POS_INT,
    "splitting.tune_alpha": boolean(),
    "splitting.anderson": Rule(lambda v: int(v) if _is_count(v, lo=0) and v != 1
                               else _fail("0 (off) or a history size >= 2")),
    "splitting.on_nonconvergence": choice("warn", "error"),
    # protocol
    "protocol.name": choice("standard", "margin"),
    "protocol.n_train": number(1, integer=True, null=True),
    "protocol.threshold": number(0, 1, null=True),  # 0: never reached (train the cap)
    # trainer (more keys are Lightning's)
    "trainer.accelerator": choice("auto", "cpu", "gpu", "cuda", "mps"),
    "trainer.devices": Rule(lambda v: v if (v == "auto" or _is_count(v) or (isinstance(v, list) and v and all(
        _is_count(d, lo=0) for d in v))) else _fail("auto, a count >= 1 or a list of device ids")),
    # ddp_spawn is not among them: its processes' test counts would not reach the process that writes metrics.json
    "trainer.strategy": choice("auto", "ddp", "ddp_find_unused_parameters_true"),
    "trainer.num_nodes": POS_INT,
    "trainer.precision": choice(*PRECISIONS),
    "trainer.max_epochs": POS_INT,
    "trainer.deterministic": choice(True, False, "warn"),
    "trainer.enable_progress_bar": boolean(),
    "trainer.log_every_n_steps": POS_INT,
    "trainer.limit_train_batches": LIMIT,
    "trainer.limit_test_batches": LIMIT,
    "trainer.limit_val_batches": LIMIT,
    "trainer.num_sanity_val_steps": NONNEG_INT,
    # callbacks (Lightning checks their arguments)
    "callbacks.*._target_": text(),
    "callbacks.*.*": anything(),
    # logger
    "logger._target_": text(),
    "logger.name": text(),
    "logger.project": text(),
    "logger.entity": text(null=True),
    "logger.mode": choice("online", "offline", "disabled", null=True),
    # bound.yaml
    "bound.methods": listed(choice(*BOUND_METHODS), null=True, what="null (every method that applies) or a list"),
    "bound.test_error": boolean(),
    "bound.lower_points": POS_INT,
    "bound.ascent_steps": NONNEG_INT,
    "bound.unrolled_alphas": listed(POSITIVE, what="a list"),
    "bound.unrolled_tol": POSITIVE,
    "bound.unrolled_batch": POS_INT,
    "bound.accept_poor_model": boolean(),
    "generalization.enabled": boolean(),
    "generalization.M": number(1, integer=True, null=True),
    "generalization.gamma": POSITIVE,
    "generalization.delta": UNIT_OPEN,
    "generalization.c": POSITIVE,
    "generalization.B": POSITIVE,
    "generalization.B_from_data": boolean(),
    "generalization.norms_from": choice("zero", "init"),
    "generalization.h": number(1, integer=True, null=True),
    "generalization.unrolled_alphas": listed(POSITIVE, null=True, what="null (skip unrolled FB) or a list"),
    "generalization.unrolled_tol": POSITIVE,
    "generalization.unrolled_batch": POS_INT,
    # robustness.yaml
    "robustness.methods": listed(choice("certified", "pgd"), what="a non-empty list"),
    "robustness.n_test": number(1, integer=True, null=True),
    "robustness.batch_size": POS_INT,
    "robustness.device": Rule(lambda v: v if isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
                              else _fail("auto, cpu or cuda[:N]")),
    "robustness.progress": boolean(),
    "robustness.pgd.eps": listed(EPS, null=True, what="null (the dataset's grid) or a list of radii"),
    "robustness.pgd.steps": POS_INT,
    "robustness.pgd.rel_stepsize": POSITIVE,
    "robustness.pgd.abs_stepsize": number(0, lo_open=True, null=True),
    "robustness.pgd.random_start": boolean(),
    "robustness.audit.steps": NONNEG_INT,
    "robustness.audit.restarts": POS_INT,
    "robustness.grids.*.*": listed(EPS, what="a list of radii"),
    "certify.bound": listed(choice("auto", *BOUND_METHODS, "local"), what="auto, a bound method, local, or a list of them"),
    "certify.local.method": choice("vertex", "monotone"),
    # 2^n vertex solves per input: at 14 one input's batch of solves is ~120 MB
    "certify.local.max_unstable": number(0, 14, integer=True),
    "certify.local.refine": NONNEG_INT,
    "certify.local.steps": POS_INT,
    "certify.rule": listed(choice("paper", "tight"), what="a list"),
    "certify.lipschitz": anything(),  # checked in _cross: a number > 0 or a classes x classes matrix
    "certify.eps": listed(EPS, null=True, what="null (the dataset's grid) or a list of radii"),
    # bench.yaml
    "bench.batch": POS_INT,
    "bench.reps": POS_INT,
    "bench.warmup": NONNEG_INT,
    "bench.device": Rule(lambda v: v if isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
                         else _fail("auto, cpu or cuda[:N]")),
    "bench.threads": number(1, integer=True, null=True),
    "bench.bounds": listed(choice(*BOUND_METHODS), min_len=0, what="a list"),
    "bench.local": listed(choice("vertex", "monotone"), min_len=0, what="a list"),
    "bench.local_eps": listed(EPS, what="a list of radii"),
    "bench.anderson": listed(Rule(lambda v: int(v) if _is_count(v, lo=0) and v != 1
                                  else _fail("0 (off) or a history size >= 2")), min_len=0, what="a list"),
    "bench.images": POS_INT,
}


def _fail(allowed: str):
    raise Invalid(allowed)


def _is_count(v, lo: int = 1) -> bool:
    return _is_number(v) and math.isfinite(v) and float(v).is_integer() and v >= lo


def rule_of(key: str) -> Rule | None:
    if key in RULES:
        return RULES[key]
    for pattern, rule in RULES.items():
        if "*" in pattern and fnmatchcase(key, pattern) and key.count(".") == pattern.count("."):
            return rule
    return None


def _leaves(node: DictConfig, prefix: str = ""):
    """(dotted key, resolved value) of every leaf, a non-empty mapping being a branch; the values set
    directly first, then those taken from another key (so that a message names the key that was set)."""
    leaves = list(_walk(node, prefix))
    return [(k, v) for k, v, derived in leaves if not derived] + [(k, v) for k, v, derived in leaves if derived]


def _walk(node: DictConfig, prefix: str):
    for key in node:
        path = f"{prefix}{key}"
        if path == "hydra":
            continue  # Hydra's own keys, checked by Hydra
        child = node[key]
        if isinstance(child, DictConfig) and len(child) and path != "certify.lipschitz":
            yield from _walk(child, path + ".")
        else:
            yield path, child, OmegaConf.is_interpolation(node, key)


def _trainer_arguments() -> set[str]:
    import inspect

    from lightning import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self", "logger", "callbacks", "default_root_dir"}


def _cross(cfg: DictConfig) -> None:
    """Rules between keys."""
    ds = cfg.get("dataset")
    if ds is not None and "in_shape" in ds:
        channels = int(ds.in_shape[0])
        for key in ("mean", "std"):
            if key in ds and len(ds[key]) not in (1, channels):
                raise ConfigError(f"dataset.{key}={list(ds[key])}: allowed: one value for every channel, or one per "
                                  f"channel ({channels}, from dataset.in_shape)")
    protocol = cfg.get("protocol")
    if protocol is not None and protocol.get("name") == "margin" and protocol.get("threshold") is None:
        raise ConfigError("protocol=margin needs protocol.threshold (the margin error to reach, in [0, 1])")
    lipschitz = cfg.get("certify", {}).get("lipschitz") if "certify" in cfg else None
    if lipschitz is not None:
        _check_given_lipschitz(OmegaConf.to_container(lipschitz) if OmegaConf.is_config(lipschitz) else lipschitz,
                               ds.get("num_classes") if ds is not None else None,
                               OmegaConf.to_container(cfg.certify.get("bound")) if "bound" in cfg.certify else [])


def is_lipschitz_value(plain, classes, failed_pairs: bool = False) -> bool:
    """A Lipschitz constant a certificate can rest on: a finite number > 0, or a classes x classes matrix,
    symmetric and finite, > 0 off the diagonal (None there too with `failed_pairs`: an SDP pair that failed)."""
    if _is_number(plain):
        return math.isfinite(plain) and plain > 0
    square = (isinstance(plain, list) and len(plain) == (classes or len(plain)) and len(plain) >= 2
              and all(isinstance(r, list) and len(r) == len(plain) for r in plain))

    def entry_ok(i, j):
        v = plain[i][j]
        if v is None:
            return failed_pairs and i != j and plain[j][i] is None
        return _is_number(v) and math.isfinite(v) and v == plain[j][i] and (i == j or v > 0)
    return square and all(entry_ok(i, j) for i in range(len(plain)) for j in range(len(plain)))


def _check_given_lipschitz(plain, classes, bounds) -> None:
    """certify.lipschitz replaces every bound, so it cannot stand beside certify.bound=local (whose global
    constants it would silently change)."""
    if not is_lipschitz_value(plain, classes):
        raise ConfigError(f"certify.lipschitz={plain!r}: allowed: a number > 0, a {classes or 'classes'} x "
                          f"{classes or 'classes'} matrix (dataset.num_classes), symmetric, > 0 off the diagonal, "
                          f"or null")
    if "local" in (bounds if isinstance(bounds, list) else [bounds]):
        raise ConfigError("certify.lipschitz replaces every bound, and certify.bound=local needs the global "
                          "class-pair constants it computes: give one of them, not both")


def check(cfg: DictConfig) -> None:
    """Check and normalise every key of `cfg` in place; raises ConfigError naming the first bad key."""
    updates = []
    try:
        leaves = _leaves(cfg)
    except InterpolationResolutionError as err:
        raise ConfigError(f"{err.full_key}: {str(err.msg).splitlines()[0]}") from None
    for key, value in leaves:
        rule = rule_of(key)
        if rule is None:
            if key.startswith("trainer.") and key.count(".") == 1 and key[8:] in _trainer_arguments():
                continue  # Lightning's own keyword arguments, checked by Lightning
            raise ConfigError(f"{key}: unknown key (no app reads it)")
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        try:
            checked = rule.cast(plain)
        except Invalid as err:
            raise ConfigError(f"{key}={_show(plain)}: allowed: {err}") from None
        if checked is not plain and checked != plain or type(checked) is not type(plain):
            updates.append((key, checked))
    with open_dict(cfg):
        for key, value in updates:
            OmegaConf.update(cfg, key, value, merge=False)
    _cross(cfg)


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)
