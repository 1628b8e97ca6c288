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
from fnmatch import fnmatchcase

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from .bounds.registry import METHOD_KEYS, METHODS as BOUND_METHODS, select_methods
from .certify.registry import CERTIFICATES, LOCAL_METHODS, NORMS
from .certify.rules import RULES as CERTIFY_RULES
from .cli import FOLLOWERS
from .data import DATASETS
from .errors import ConfigError
from .keys import (ANDERSON, DEVICE, EPS, EVERY, GENERALIZATION, LIMIT, NONNEG_INT, NOTHING, POS_INT,
                   POSITIVE, PRECISIONS, ROBUSTNESS, RUN, SEED, UNIT_OPEN, Key, Rule, anything, boolean,
                   checked, choice, fail, is_count, is_number, listed, number, one_of, text)
from .models import MODELS, model_keys
from .mondeq.splitting import SPLITTING_KEYS


KEYS: dict[str, Key] = {
    # config.yaml
    "m": Key(POSITIVE, EVERY, of_checkpoint=True, mondeq_only=True),
    "seed": Key(SEED, EVERY),
    "ckpt": Key(text(null=True), NOTHING),
    "margin_gamma": Key(POSITIVE, {RUN}),
    "profile": Key(text(), NOTHING),
    "then": Key(listed(choice(*FOLLOWERS), min_len=0, what="a list of apps"), NOTHING),
    "optim.lr": Key(POSITIVE, {RUN}),
    "optim.schedule": Key(choice("step", "onecycle", "none"), {RUN}),
    "optim.step_size": Key(POS_INT, {RUN}),
    "optim.gamma": Key(number(0, 1, lo_open=True), {RUN}),
    "optim.epochs": Key(POS_INT, {RUN}),
    # dataset
    "dataset.name": Key(one_of(DATASETS), EVERY, of_checkpoint=True),
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
    # model: its name, then the keys of that model, by the rules declared with it in src/models.py
    "model.name": Key(one_of(MODELS), EVERY, of_checkpoint=True),
    "model.*": Key(anything(), EVERY, of_checkpoint=True),
    # splitting
    **{f"splitting.{key}": declared for key, declared in SPLITTING_KEYS.items()},
    # protocol
    "protocol.name": Key(choice("standard", "margin"), {RUN}),
    "protocol.n_train": Key(number(1, integer=True, null=True), {RUN}),
    "protocol.threshold": Key(number(0, 1, null=True), {RUN}),  # 0: never reached (train the cap)
    # trainer (more keys are Lightning's)
    "trainer.accelerator": Key(choice("auto", "cpu", "gpu", "cuda", "mps"), NOTHING),
    "trainer.devices": Key(Rule(lambda v: v if (v == "auto" or is_count(v) or (isinstance(v, list) and v and all(
        is_count(d, lo=0) for d in v))) else fail("auto, a count >= 1 or a list of device ids")), {RUN}),
    # ddp_spawn is not among them: its processes' test counts would not reach the process that writes metrics.json
    "trainer.strategy": Key(choice("auto", "ddp", "ddp_find_unused_parameters_true"), NOTHING),
    "trainer.num_nodes": Key(POS_INT, {RUN}),
    "trainer.precision": Key(choice(*PRECISIONS), {RUN}),
    # a cap, recorded by the run as its `epochs`: a larger one continues the run in its dir
    "trainer.max_epochs": Key(POS_INT, NOTHING),
    "trainer.deterministic": Key(choice(True, False, "warn"), {RUN}),
    "trainer.enable_progress_bar": Key(boolean(), NOTHING),
    "trainer.enable_model_summary": Key(boolean(), NOTHING),
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
    "bound.methods": Key(listed(one_of(BOUND_METHODS), min_len=0, null=True,
                               what="null (every method that applies) or a list"), NOTHING),
    "bound.test_error": Key(boolean(), NOTHING),
    **{f"bound.{key}": declared for key, declared in METHOD_KEYS.items()},  # with their methods (registry.py)
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
    "certify.bound": Key(listed(choice("auto", *BOUND_METHODS, *CERTIFICATES),
                                what=f"auto, a bound method, {', '.join(CERTIFICATES)}, or a list of them"), NOTHING),
    **{f"certify.{name}.{key}": declared for name, certificate in CERTIFICATES.items()
       for key, declared in certificate.keys.items()},  # with their certificates (src/certify/registry.py)
    "certify.rule": Key(listed(one_of(CERTIFY_RULES), what="a list"), NOTHING),
    "certify.lipschitz": Key(anything(), {ROBUSTNESS}),  # checked in _cross: a number > 0 or a classes x classes matrix
    "certify.eps": Key(listed(EPS, null=True, what="null (the dataset's grid) or a list of radii"), NOTHING),
    # bench.yaml
    "bench.batch": Key(POS_INT, NOTHING),
    "bench.reps": Key(POS_INT, NOTHING),
    "bench.warmup": Key(NONNEG_INT, NOTHING),
    "bench.device": Key(DEVICE, NOTHING),
    "bench.threads": Key(number(1, integer=True, null=True), NOTHING),
    "bench.bounds": Key(listed(one_of(BOUND_METHODS), min_len=0, what="a list"), NOTHING),
    "bench.local": Key(listed(one_of(LOCAL_METHODS), min_len=0, what="a list"), NOTHING),
    "bench.local_eps": Key(listed(EPS, what="a list of radii"), NOTHING),
    "bench.frozen": Key(boolean(), NOTHING),
    "bench.pgd_steps": Key(POS_INT, NOTHING),
    "bench.exact": Key(listed(choice(*NORMS), min_len=0, what="a list"), NOTHING),
    "bench.exact_eps.*": Key(listed(EPS, what="a list of radii"), NOTHING),
    "bench.anderson": Key(listed(ANDERSON, min_len=0, what="a list"), NOTHING),
    "bench.images": Key(POS_INT, NOTHING),
}


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
    if model is not None:
        model_keys(model.name, model)  # a field the model lacks (those it has are checked with their rules)
    for key, requested in (("bound.methods", OmegaConf.select(cfg, "bound.methods")),
                           ("certify.bound", OmegaConf.select(cfg, "certify.bound"))):
        named = [m for m in requested or () if m in BOUND_METHODS]  # certify.bound: auto and local are no bound
        if model is not None and named:
            try:
                select_methods(model.name, named)
            except ValueError as err:
                raise ConfigError(str(err).replace("bound.methods", key)) from None
    for name in OmegaConf.select(cfg, "certify.bound") or ():
        if model is not None and name in CERTIFICATES and not CERTIFICATES[name].applies(model.name):
            fits = [c for c, certificate in CERTIFICATES.items() if certificate.applies(model.name)]
            raise ConfigError(f"certify.bound={name}: does not apply to model {model.name}; the certificates "
                              f"that do: {fits or 'none'} (or any of its bounds: bound.methods)")
    std = OmegaConf.select(cfg, "dataset.std")
    if "exact" in (OmegaConf.select(cfg, "certify.bound") or ()) and std is not None and len(set(std)) > 1:
        raise ConfigError(f"certify.bound=exact: dataset.std={list(std)} differs between channels, and the exact "
                          f"certificate's balls (and their audit) are pixel balls of one scale; allowed: datasets "
                          f"with one std (mnist, mnist5k, fashion_mnist, 1-channel synthetic)")
    lipschitz = cfg.get("certify", {}).get("lipschitz") if "certify" in cfg else None
    if lipschitz is not None:
        _check_given_lipschitz(OmegaConf.to_container(lipschitz) if OmegaConf.is_config(lipschitz) else lipschitz,
                               ds.get("num_classes") if ds is not None else None,
                               OmegaConf.to_container(cfg.certify.get("bound")) if "bound" in cfg.certify else [])


def is_lipschitz_value(plain, classes, failed_pairs: bool = False) -> bool:
    """A Lipschitz constant a certificate can rest on: a finite number > 0, or a classes x classes matrix,
    symmetric and finite, > 0 off the diagonal (None there too with `failed_pairs`: an SDP pair that failed)."""
    if is_number(plain):
        return math.isfinite(plain) and plain > 0
    square = (isinstance(plain, list) and len(plain) == (classes or len(plain)) and len(plain) >= 2
              and all(isinstance(r, list) and len(r) == len(plain) for r in plain))

    def entry_ok(i, j):
        v = plain[i][j]
        if v is None:
            return failed_pairs and i != j and plain[j][i] is None
        return is_number(v) and math.isfinite(v) and v == plain[j][i] and (i == j or v > 0)
    return square and all(entry_ok(i, j) for i in range(len(plain)) for j in range(len(plain)))


def _check_given_lipschitz(plain, classes, bounds) -> None:
    """certify.lipschitz replaces every bound, so it cannot stand beside a certificate of CERTIFICATES (whose
    global constants it would silently change)."""
    if not is_lipschitz_value(plain, classes):
        raise ConfigError(f"certify.lipschitz={plain!r}: allowed: a number > 0, a {classes or 'classes'} x "
                          f"{classes or 'classes'} matrix (dataset.num_classes), symmetric, > 0 off the diagonal, "
                          f"or null")
    for name in (bounds if isinstance(bounds, list) else [bounds]):
        if name in CERTIFICATES:
            raise ConfigError(f"certify.lipschitz replaces every bound, and certify.bound={name} needs the global "
                              f"class-pair constants it computes: give one of them, not both")


def _model_key(cfg: DictConfig, key: str) -> Rule:
    """The rule of `key` (model.<field>) for the model cfg.model.name names (anything while the name is
    not a model's: its own rule refuses it)."""
    name = cfg.model.get("name")
    return model_keys(name, cfg.model)[key[len("model."):]] if name in MODELS else anything()


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
        rule = _model_key(cfg, key) if declared is KEYS["model.*"] else declared.rule
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        cast = checked(key, rule, plain)
        if cast is not plain and cast != plain or type(cast) is not type(plain):
            updates.append((key, cast))
    with open_dict(cfg):
        for key, value in updates:
            OmegaConf.update(cfg, key, value, merge=False)
    _cross(cfg)

