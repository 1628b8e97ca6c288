"""The typed schema of every config key: checked before any data is read or any model trained.

Every key is declared once, in KEYS: its rule (type, range, choices) and the results it changes
(`Key.changes`).  From that declaration alone come the run dir's name (the keys that change
src.run's result: `names_the_run`), what a checkpoint records and is compared with (`values`),
and the settings recorded with every bounds.json and robustness.json entry, compared before one
is reused (`settings`).

`check(cfg)` walks every leaf of a composed config (all apps, every group) and applies the
rule of its key.  Keys holding a list accept a bare value (`bound.methods=
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

from .bounds.registry import LOCAL_METHODS, METHODS as BOUND_METHODS, select_methods
from .certify.rules import RULES as CERTIFY_RULES
from .data import DATASETS
from .errors import ConfigError
from .models import MODELS
from .mondeq.splitting import SPLITTING_METHODS


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
ANDERSON = Rule(lambda v: int(v) if _is_count(v, lo=0) and v != 1 else _fail("0 (off) or a history size >= 2"))
DEVICE = Rule(lambda v: v if isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
              else _fail("auto, cpu or cuda[:N]"))
# 16-mixed / bf16-mixed would run the equilibrium solve in half precision: refused, not silently degraded
PRECISIONS = ("32-true", "32", 32)
LIMIT = Rule(lambda v: _limit(v))


def _limit(v):
    """Lightning's limit_*_batches: a fraction in (0, 1] or a whole number of batches >= 1."""
    if _is_number(v) and math.isfinite(v) and ((isinstance(v, float) and 0 < v <= 1) or (isinstance(v, int) and v >= 1)):
        return v
    raise Invalid("a fraction in (0, 1] or a whole number of batches >= 1")


KEYS: dict[str, Key] = {
    # config.yaml
    "m": Key(POSITIVE, EVERY, of_checkpoint=True, mondeq_only=True),
    "seed": Key(SEED, EVERY),
    "ckpt": Key(text(null=True), NOTHING),
    "margin_gamma": Key(POSITIVE, {RUN}),
    "profile": Key(text(), NOTHING),
    "optim.lr": Key(POSITIVE, {RUN}),
    "optim.schedule": Key(choice("step", "onecycle", "none"), {RUN}),
    "optim.step_size": Key(POS_INT, {RUN}),
    "optim.gamma": Key(number(0, 1, lo_open=True), {RUN}),
    "optim.epochs": Key(POS_INT, {RUN}),
    # dataset
    "dataset.name": Key(choice(*DATASETS), EVERY, of_checkpoint=True),
    "dataset.root": Key(text(null=True), NOTHING),
    "dataset.system_dir": Key(text(null=True), NOTHING),
    "dataset.download": Key(boolean(), NOTHING),
    "dataset.in_shape": Key(listed(POS_INT, length=3, what="a list (channels, height, width)"), EVERY, of_checkpoint=True),
    "dataset.num_classes": Key(number(2, integer=True), EVERY, of_checkpoint=True),
    "dataset.mean": Key(listed(number(), what="a list (one per channel)"), EVERY, of_checkpoint=True),
    "dataset.std": Key(listed(POSITIVE, what="a list (one per channel)"), EVERY, of_checkpoint=True),
    "dataset.batch_size": Key(POS_INT, {RUN}),
    "dataset.test_batch_size": Key(POS_INT, NOTHING),
    "dataset.num_workers": Key(NONNEG_INT, NOTHING),
    "dataset.augment": Key(boolean(), {RUN}),
    "dataset.seed": Key(SEED, EVERY, of_checkpoint=True),
    # synthetic images are made in memory: 10^6 of MNIST size are 0.8 GB
    "dataset.n_train": Key(number(1, 10 ** 6, integer=True), EVERY, of_checkpoint=True),
    "dataset.n_test": Key(number(1, 10 ** 6, integer=True), EVERY),
    # model (the fields per model name are build_model's to check)
    "model.name": Key(choice(*MODELS), EVERY, of_checkpoint=True),
    "model.width": Key(POS_INT, EVERY, of_checkpoint=True),
    "model.depth": Key(number(1, integer=True, null=True), EVERY, of_checkpoint=True),
    "model.size": Key(choice("sm", "med", "lg", null=True), EVERY, of_checkpoint=True),
    # mon_conv: one count; mon_multiconv: one per tier (build_model checks which)
    "model.anderson": Key(ANDERSON, EVERY, of_checkpoint=True),
    "model.channels": Key(Rule(lambda v: v if (_is_count(v) or (isinstance(v, list) and v and all(map(_is_count, v))))
                           else _fail("a whole number >= 1 or a non-empty list of them")), EVERY, of_checkpoint=True),
    # splitting
    "splitting.name": Key(choice(*SPLITTING_METHODS), EVERY, mondeq_only=True),
    "splitting.alpha": Key(POSITIVE, EVERY, mondeq_only=True),
    "splitting.fwd_tol": Key(POSITIVE, EVERY, mondeq_only=True),
    "splitting.bwd_tol": Key(POSITIVE, EVERY, mondeq_only=True),
    "splitting.fwd_max_iter": Key(POS_INT, EVERY, mondeq_only=True),
    "splitting.bwd_max_iter": Key(POS_INT, EVERY, mondeq_only=True),
    "splitting.check_every": Key(POS_INT, EVERY, mondeq_only=True),
    "splitting.tune_alpha": Key(boolean(), EVERY, mondeq_only=True),
    "splitting.anderson": Key(ANDERSON, EVERY, mondeq_only=True),
    "splitting.on_nonconvergence": Key(choice("warn", "error"), NOTHING),
    # protocol
    "protocol.name": Key(choice("standard", "margin"), {RUN}),
    "protocol.n_train": Key(number(1, integer=True, null=True), {RUN}),
    "protocol.threshold": Key(number(0, 1, null=True), {RUN}),  # 0: never reached (train the cap)
    # trainer (more keys are Lightning's)
    "trainer.accelerator": Key(choice("auto", "cpu", "gpu", "cuda", "mps"), NOTHING),
    "trainer.devices": Key(Rule(lambda v: v if (v == "auto" or _is_count(v) or (isinstance(v, list) and v and all(
        _is_count(d, lo=0) for d in v))) else _fail("auto, a count >= 1 or a list of device ids")), {RUN}),
    # ddp_spawn is not among them: its processes' test counts would not reach the process that writes metrics.json
    "trainer.strategy": Key(choice("auto", "ddp", "ddp_find_unused_parameters_true"), NOTHING),
    "trainer.num_nodes": Key(POS_INT, {RUN}),
    "trainer.precision": Key(choice(*PRECISIONS), {RUN}),
    # a cap, recorded by the run as its `epochs`: a larger one continues the run in its dir
    "trainer.max_epochs": Key(POS_INT, NOTHING),
    "trainer.deterministic": Key(choice(True, False, "warn"), {RUN}),
    "trainer.enable_progress_bar": Key(boolean(), NOTHING),
    "trainer.log_every_n_steps": Key(POS_INT, NOTHING),
    "trainer.limit_train_batches": Key(LIMIT, {RUN}),
    "trainer.limit_test_batches": Key(LIMIT, {RUN}),
    "trainer.limit_val_batches": Key(LIMIT, NOTHING),
    "trainer.num_sanity_val_steps": Key(NONNEG_INT, NOTHING),
    "trainer.check_val_every_n_epoch": Key(POS_INT, NOTHING),  # the test error watched while training (src/lit.py)
    # callbacks (Lightning checks their arguments)
    "callbacks.*._target_": Key(text(), {RUN}),
    "callbacks.*.*": Key(anything(), {RUN}),
    # logger
    "logger._target_": Key(text(), NOTHING),
    "logger.name": Key(text(), NOTHING),
    "logger.project": Key(text(), NOTHING),
    "logger.entity": Key(text(null=True), NOTHING),
    "logger.mode": Key(choice("online", "offline", "disabled", null=True), NOTHING),
    # bound.yaml
    "bound.methods": Key(listed(choice(*BOUND_METHODS), null=True, what="null (every method that applies) or a list"), NOTHING),
    "bound.test_error": Key(boolean(), NOTHING),
    "bound.lower_points": Key(POS_INT, {BOUNDS}),
    "bound.ascent_steps": Key(NONNEG_INT, {BOUNDS}),
    "bound.unrolled_alphas": Key(listed(POSITIVE, what="a list"), {BOUNDS}),
    "bound.unrolled_tol": Key(POSITIVE, {BOUNDS}),
    "bound.unrolled_batch": Key(POS_INT, {BOUNDS}),
    "bound.accept_poor_model": Key(boolean(), NOTHING),
    "generalization.enabled": Key(boolean(), NOTHING),
    "generalization.M": Key(number(1, integer=True, null=True), {GENERALIZATION}),
    "generalization.gamma": Key(POSITIVE, {GENERALIZATION}),
    "generalization.delta": Key(UNIT_OPEN, {GENERALIZATION}),
    "generalization.c": Key(POSITIVE, {GENERALIZATION}),
    "generalization.B": Key(POSITIVE, {GENERALIZATION}),
    "generalization.B_from_data": Key(boolean(), {GENERALIZATION}),
    "generalization.norms_from": Key(choice("zero", "init"), {GENERALIZATION}),
    "generalization.h": Key(number(1, integer=True, null=True), {GENERALIZATION}),
    "generalization.unrolled_alphas": Key(listed(POSITIVE, null=True, what="null (skip unrolled FB) or a list"), {GENERALIZATION}),
    "generalization.unrolled_tol": Key(POSITIVE, {GENERALIZATION}),
    "generalization.unrolled_batch": Key(POS_INT, {GENERALIZATION}),
    # robustness.yaml
    "robustness.methods": Key(listed(choice("certified", "pgd"), what="a non-empty list"), NOTHING),
    "robustness.n_test": Key(number(1, integer=True, null=True), {ROBUSTNESS}),
    "robustness.batch_size": Key(POS_INT, NOTHING),
    "robustness.device": Key(DEVICE, NOTHING),
    "robustness.progress": Key(boolean(), NOTHING),
    "robustness.pgd.eps": Key(listed(EPS, null=True, what="null (the dataset's grid) or a list of radii"), {ROBUSTNESS}),
    "robustness.pgd.steps": Key(POS_INT, {ROBUSTNESS}),
    "robustness.pgd.rel_stepsize": Key(POSITIVE, {ROBUSTNESS}),
    "robustness.pgd.abs_stepsize": Key(number(0, lo_open=True, null=True), {ROBUSTNESS}),
    "robustness.pgd.random_start": Key(boolean(), {ROBUSTNESS}),
    "robustness.audit.steps": Key(NONNEG_INT, {ROBUSTNESS}),
    "robustness.audit.restarts": Key(POS_INT, {ROBUSTNESS}),
    "robustness.grids.*.*": Key(listed(EPS, what="a list of radii"), NOTHING),
    "certify.bound": Key(listed(choice("auto", *BOUND_METHODS, "local"), what="auto, a bound method, local, or a list of them"), NOTHING),
    "certify.local.method": Key(choice(*LOCAL_METHODS), {ROBUSTNESS}),
    # 2^n vertex solves per input: at 14 one input's batch of solves is ~120 MB
    "certify.local.max_unstable": Key(number(0, 14, integer=True), {ROBUSTNESS}),
    "certify.local.refine": Key(NONNEG_INT, {ROBUSTNESS}),
    "certify.local.steps": Key(POS_INT, {ROBUSTNESS}),
    "certify.rule": Key(listed(choice(*CERTIFY_RULES), what="a list"), NOTHING),
    "certify.lipschitz": Key(anything(), {ROBUSTNESS}),  # checked in _cross: a number > 0 or a classes x classes matrix
    "certify.eps": Key(listed(EPS, null=True, what="null (the dataset's grid) or a list of radii"), NOTHING),
    # bench.yaml
    "bench.batch": Key(POS_INT, NOTHING),
    "bench.reps": Key(POS_INT, NOTHING),
    "bench.warmup": Key(NONNEG_INT, NOTHING),
    "bench.device": Key(DEVICE, NOTHING),
    "bench.threads": Key(number(1, integer=True, null=True), NOTHING),
    "bench.bounds": Key(listed(choice(*BOUND_METHODS), min_len=0, what="a list"), NOTHING),
    "bench.local": Key(listed(choice(*LOCAL_METHODS), min_len=0, what="a list"), NOTHING),
    "bench.local_eps": Key(listed(EPS, what="a list of radii"), NOTHING),
    "bench.anderson": Key(listed(ANDERSON, min_len=0, what="a list"), NOTHING),
    "bench.images": Key(POS_INT, NOTHING),
}


def _fail(allowed: str):
    raise Invalid(allowed)


def _is_count(v, lo: int = 1) -> bool:
    return _is_number(v) and math.isfinite(v) and float(v).is_integer() and v >= lo


# Lightning's own keyword arguments beyond those declared above (`+trainer.KEY=VALUE`): Lightning checks
# them, and they may change the training (gradient clipping, accumulation)
LIGHTNING = Key(anything(), {RUN})
# The config groups, chosen on the command line as `GROUP=OPTION`: the keys they set are declared above;
# a group's own name says whether it names the run (experiment: the run dir's parent already does)
GROUPS: dict[str, frozenset[str]] = {
    "dataset": EVERY, "model": EVERY, "splitting": EVERY, "profile": frozenset({RUN}), "protocol": frozenset({RUN}),
    "trainer": frozenset({RUN}), "callbacks": frozenset({RUN}), "logger": NOTHING, "experiment": NOTHING,
}


def declaration(key: str) -> Key | None:
    """The declaration of a dotted config key, None for a key no app reads."""
    if key in KEYS:
        return KEYS[key]
    for pattern, declared in KEYS.items():
        if "*" in pattern and fnmatchcase(key, pattern) and key.count(".") == pattern.count("."):
            return declared
    if key.startswith("trainer.") and key.count(".") == 1 and key[8:] in _trainer_arguments():
        return LIGHTNING
    return None


def names_the_run(override: str) -> bool:
    """Whether a command-line override (`key=value`, `+key=value`, `group=option`) is in the run dir's
    name: it is when it changes src.run's result, so that runs of other weights never share a dir, and
    the apps that read a run's checkpoint (src.bound, src.robustness) find it under the same overrides.
    A key no app reads is in the name (the schema refuses it before any run dir is made)."""
    key = override.split("=", 1)[0].lstrip("+~")
    if key in GROUPS:
        return RUN in GROUPS[key]
    declared = declaration(key)
    return declared is None or RUN in declared.changes


def values(plain, result: str, *, mondeq: bool = True, prefix: str = "", of_checkpoint: bool = False) -> dict:
    """The leaves of the plain (resolved) config `plain` whose keys change `result`, nested as in the config:
    what a result of that kind records as its settings and is compared with before it is reused.
    `prefix`: the dotted key of `plain` when it is one section; `mondeq`: whether the model is a monDEQ;
    `of_checkpoint`: only the keys that say what a checkpoint is of."""
    out = {}
    for key, value in plain.items():
        path = f"{prefix}{key}"
        declared = declaration(path)
        if declared is None and isinstance(value, dict) and value and path != "certify.lipschitz":
            inner = values(value, result, mondeq=mondeq, prefix=path + ".", of_checkpoint=of_checkpoint)
            if inner:
                out[key] = inner
        elif (declared is not None and result in declared.changes and (mondeq or not declared.mondeq_only)
              and (declared.of_checkpoint or not of_checkpoint)):
            out[key] = value
    return out


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
    model = cfg.get("model")
    for key, requested in (("bound.methods", OmegaConf.select(cfg, "bound.methods")),
                           ("certify.bound", OmegaConf.select(cfg, "certify.bound"))):
        named = [m for m in requested or () if m in BOUND_METHODS]  # certify.bound: auto and local are no bound
        if model is not None and named:
            try:
                select_methods(model.name, named)
            except ValueError as err:
                raise ConfigError(str(err).replace("bound.methods", key)) from None
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
        declared = declaration(key)
        if declared is None:
            raise ConfigError(f"{key}: unknown key (no app reads it)")
        rule = declared.rule
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
