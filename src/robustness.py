"""`python -m src.robustness`: certified and PGD accuracy curves of a checkpoint (paper 5.3, App. H).

    python -m src.robustness model=mon_fc m=20 dataset=mnist5k profile=smoke
    python -m src.robustness ... certify.bound=[theorem1,sdp_diag,sdp_pairwise] certify.rule=[paper,tight]
    python -m src.robustness ... robustness.methods=[pgd] robustness.n_test=500

Reads the run dir's model.ckpt (or ckpt=PATH) and writes <run dir>/robustness.json:

- `certified` {eps, accuracy, lipschitz, bound, rule, ...}: the curve of the
  first certify.bound and certify.rule; `certified_curves` {"bound/rule": curve}
  holds every combination asked for (`sdp_pairwise` gives one curve, rule
  "pairwise", its `lipschitz` the class-pair matrix).  L is read from the run
  dir's bounds.json (`upper[bound]`, when that file is of this checkpoint) or
  computed here with src.bound's method, or given as certify.lipschitz.
- `pgd` {eps, accuracy, ...}: foolbox's l2 PGD (src/attack.py).
- `certified_model`: what the certificates are of (the exact model, src/certify/exact_model.py), the
  largest proved distance of a solve from the exact equilibrium, the rounding allowance, and
  `disagreements`: test points where the float32 network as evaluated predicts another class.
- each certified curve's `audit` (src/certify/audit.py): l2 PGD inside every certified point's own ball on
  the exact model; `counterexamples` is 0 for a sound certificate, and any other count ends the
  app with an error once the file is written.
- `clean_accuracy`, `n_test`, `dataset`, `profile`, `model`, `m`, `ckpt`,
  `ckpt_sha256`, `seconds`, and `checks`: for each certified curve and PGD
  radius, how many points certified at that radius foolbox's PGD (on the float32 network) still
  fooled.

Radii are l2 norms in [0, 1] pixel units (src/certify/rules.py explains how the
certificate converts them).  A robustness.json of the same checkpoint, test points and settings
is updated, not replaced: curves not recomputed (another certify.bound, or `pgd` under
robustness.methods=[certified]) are kept; curves of other settings are dropped with a line
naming what differs.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import attack, files, loggers, provenance, summary
from .certify import audit, exact_model, rules as certify
from .certify.registry import CERTIFICATES
from .errors import SolverError, UnsoundCertificateError
from .evaluation import convergence, logits_of, pick_device, reset_convergence, warn_unconverged
from .keys import ROBUSTNESS
from .models import MODELS
from .schema import is_lipschitz_value

log = logging.getLogger(__name__)


def default_grid(cfg: DictConfig, which: str) -> list[float]:
    """The radii of `which` (certified or pgd): the explicit override, else the dataset's grid."""
    given = cfg.certify.eps if which == "certified" else cfg.robustness.pgd.eps
    if given is not None:
        return [float(e) for e in given]
    grids = cfg.robustness.grids
    name = cfg.dataset.name
    family = name if name in grids else ("cifar10" if int(cfg.dataset.in_shape[0]) == 3 else "mnist")
    return [float(e) for e in grids[family][which]]


def certificate_module(name: str):
    """src/certify/<name>.py: the computation of the certificate `name` (src/certify/registry.py)."""
    return importlib.import_module(f"{__package__}.certify.{name}")


def bounds_to_use(cfg: DictConfig) -> list[str]:
    return [MODELS[cfg.model.name].certify_with if b == "auto" else str(b) for b in cfg.certify.bound]


def bounds_record(run_dir: Path, origin: dict, bound: str) -> dict | None:
    """The run dir's bounds.json, when its entry `bound` is of this checkpoint and these settings
    (`origin`: {ckpt_sha256, settings} as src.bound records them: model, m, dataset, bound settings)."""
    path = run_dir / "bounds.json"
    record = files.read_json(path)
    if record is None:
        return None
    recorded = record.get("provenance", {}).get(bound)
    why = "absent" if recorded is None else provenance.why_not_same(origin, recorded)
    if why:
        log.info(f"{path}: its {bound} is not reused ({why})")
        return None
    return record


def _bound_cfg(cfg: DictConfig, method: str) -> DictConfig:
    """cfg (its `bound` section composed from conf/bound.yaml) restricted to one method."""
    return OmegaConf.merge(cfg, {"bound": {"methods": [method], "test_error": False}})


def lipschitz_constant(cfg: DictConfig, model, bound: str, sha256: str, run_dir: Path, test_x: torch.Tensor):
    """(L, source): a float, or the class-pair matrix for sdp_pairwise."""
    record = bounds_record(run_dir, {"ckpt_sha256": sha256, "settings": provenance.bound_settings(cfg, bound)}, bound)
    value = None if record is None else record.get("upper", {}).get(bound)
    if is_lipschitz_value(value, int(cfg.dataset.num_classes), failed_pairs=True):
        return value, "bounds.json"
    if value is not None:
        log.info(f"{run_dir / 'bounds.json'}: its {bound} ({value!r}) is no Lipschitz constant: not reused")
    from .bounds.compute import compute_bounds

    log.info(f"{bound}: computing it")
    record = compute_bounds(model, _bound_cfg(cfg, bound), test_x, None)
    value = record["upper"].get(bound)
    if value is None:
        raise SolverError(f"certify.bound={bound}: the bound failed ({record.get('failed', {}).get(bound)}); "
                          f"choose another certify.bound or give certify.lipschitz")
    return value, "computed"


def entry_settings(settings: dict, name: str) -> dict:
    """The part of the robustness settings that one entry of robustness.json depends on (`name`: "pgd" or a
    certified curve's "<bound>/<rule>"): a certified curve on its own certificate's section
    (certify.<bound>.*, less the keys its name carries) and not on the attack's, PGD on no certificate's; so
    that a run of one certificate keeps the curves of the others."""
    bound = None if name == "pgd" else name.split("/")[0]
    robustness = {k: v for k, v in settings.get("robustness", {}).items() if k != ("audit" if bound is None else "pgd")}
    certify = {k: v for k, v in settings.get("certify", {}).items()
               if bound is not None and (k not in CERTIFICATES or k == bound)}
    if bound in CERTIFICATES and bound in certify:
        certify[bound] = {k: v for k, v in certify[bound].items() if k not in CERTIFICATES[bound].named_by}
    return {**{k: v for k, v in settings.items() if k not in ("robustness", "certify")},
            **({"robustness": robustness} if robustness else {}), **({"certify": certify} if certify else {})}


def _merge(previous: dict | None, record: dict, origin: dict) -> dict:
    """`record`, plus the entries of an earlier robustness.json that it did not recompute and that are of the
    checkpoint and settings of `origin` (the provenance of record's run, each entry compared on its own part
    of the settings, entry_settings); the others are dropped with a line naming what differs."""
    if not previous:
        return record
    merged = dict(record)

    def kept(name: str, entry: dict) -> bool:
        now = {**origin, "settings": entry_settings(origin["settings"], name)}
        why = provenance.why_not_same(now, entry.get("provenance", {}))
        if entry.get("audit", {}).get("counterexamples"):
            why = "its audit found counterexamples"
        if why:
            log.info(f"dropped {name} from the earlier robustness.json: {why}")
        return not why

    curves = {name: c for name, c in previous.get("certified_curves", {}).items()
              if name not in record.get("certified_curves", {}) and kept(name, c)}
    curves.update(record.get("certified_curves", {}))
    if curves:
        merged["certified_curves"] = curves
        merged.setdefault("certified", next(iter(curves.values())))
    if "pgd" not in record and "pgd" in previous and kept("pgd", previous["pgd"]):
        merged["pgd"] = previous["pgd"]
        if "checks" in previous:
            merged["checks"] = previous["checks"]
    merged["seconds"] = {**previous.get("seconds", {}), **record.get("seconds", {})}
    return merged


def _save_counterexamples(path: Path, found: dict) -> None:
    """The verified counterexamples of a curve: test index, distance (pixel units), the input in pixels, and
    whether the float32 network as evaluated is fooled there too."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        np.savez(f, **found)
    path.with_suffix(".tmp").replace(path)
    log.info(f"wrote {path} ({len(found['index'])} counterexamples)")


def _box(curve: dict, mean, std):
    """The pixel box [0, 1] in normalised units, for a curve that speaks of images only (`box`), else None."""
    if not curve.get("box"):
        return None
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def evaluate(cfg: DictConfig, model, sha256: str, run_dir: Path, images: torch.Tensor, labels: torch.Tensor,
             check_model=None) -> dict:
    """The robustness.json record of `model` on pixel images (N, C, H, W) in [0, 1]."""

    r = cfg.robustness
    methods = list(r.methods)
    mean, std = [float(v) for v in cfg.dataset.mean], [float(v) for v in cfg.dataset.std]
    shape = (1, -1, 1, 1)
    x = (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    sources, bound_seconds = [], 0.0  # (bound, L, where from), found while the model is on the CPU
    if "certified" in methods:
        start = time.perf_counter()
        given = cfg.certify.lipschitz
        if given is not None:
            sources.append(("given", OmegaConf.to_container(given) if OmegaConf.is_config(given) else given,
                            "given"))
        found: dict = {}  # each constant once, though `local` reuses another bound's

        def constant(name):
            if name not in found:
                found[name] = lipschitz_constant(cfg, model.cpu(), name, sha256, run_dir, x)
            return found[name]

        for bound in ([] if given is not None else bounds_to_use(cfg)):
            if bound in CERTIFICATES:
                certificate_module(bound).check_applies(model)
                rests_on = CERTIFICATES[bound].rests_on(cfg.model.name)
                value, source = constant(rests_on)
                source = f"{rests_on} ({source})"
            else:
                value, source = constant(bound)
            sources.append((bound, value, source))
        bound_seconds = time.perf_counter() - start
    device = pick_device(str(r.device))
    model = model.to(device).eval()
    batch = int(r.batch_size)
    reset_convergence(model)
    logits = logits_of(model, x, batch, device)
    clean = float((logits.argmax(1) == labels).double().mean())
    if check_model is not None:
        check_model(1 - clean)
    record: dict = {"clean_accuracy": clean,
                    "n_test": len(labels), "seconds": {},
                    "eps_units": "l2 norm in [0, 1] pixel units; certificates use eps / min(std) "
                                 "in normalised units (src/certify/rules.py)"}
    curves: dict[str, dict] = {}
    if "certified" in methods:
        exact = exact_model.ExactModel(model, device)
        found_exact = exact.evaluate(x, batch)
        gaps = found_exact.gaps(labels)
        record["certified_model"] = {
            "what": "the exact model: float64, a monDEQ at its exact equilibrium (margins lowered by a "
                    "proved bound on the float64 solve's distance from it, src/certify/exact_model.py)",
            "state_error_max": float(found_exact.state_error.max()) if len(labels) else 0.0,
            "rounding": certify.ROUNDING,
            "disagreements": int((found_exact.logits.argmax(1) != logits.argmax(1)).sum()),
            "disagreements_of": "test points where the network as evaluated (clean accuracy, PGD) predicts "
                                "another class than the exact model"}
        start = time.perf_counter()
        eps = default_grid(cfg, "certified")
        rules = [str(v) for v in cfg.certify.rule]
        for bound, value, source in sources:
            if bound in CERTIFICATES:
                settings = OmegaConf.to_container(cfg.certify[bound])
                curve = certificate_module(bound).curve(model, x, labels, value, eps, settings,
                                                        pixels=images, mean=mean, std=std)
                curve.update(bound=bound, source=source, rule=CERTIFICATES[bound].rule(settings))
                found = curve.pop("_counterexamples", None)
                if found is not None:
                    _save_counterexamples(run_dir / f"counterexamples_{bound}_{curve['rule']}.npz", found)
                curves[f"{bound}/{curve['rule']}"] = curve
                log.info(f"certified [{bound}/{curve['rule']}]: "
                         + " ".join(f"{e:g}:{a:.3f}" for e, a in zip(eps, curve["accuracy"])))
                continue
            for rule in ([None] if isinstance(value, (list, tuple)) else rules):
                curve = certify.certified_curve(gaps, labels, value, eps, std, rule or "paper")
                curve.update(bound=bound, source=source)
                curves[f"{bound}/{curve['rule']}"] = curve
                log.info(f"certified [{bound}/{curve['rule']}]: "
                         + " ".join(f"{e:g}:{a:.3f}" for e, a in zip(eps, curve["accuracy"])))
        record["certified"] = next(iter(curves.values()))
        record["certified_curves"] = curves
        record["seconds"]["certified"] = time.perf_counter() - start + bound_seconds
        start = time.perf_counter()
        for name, curve in curves.items():
            curve["audit"] = audit.audit(exact, x, labels, certify.certified_radii(curve, gaps, labels),
                                         int(r.audit.steps), int(r.audit.restarts), batch, int(cfg.seed),
                                         norm=curve.get("norm", "l2"), box=_box(curve, mean, std))
            log.info(f"audit [{name}]: {curve['audit']['counterexamples']} counterexamples in "
                     f"{curve['audit']['points']} certified balls")
        record["seconds"]["audit"] = time.perf_counter() - start
    if "pgd" in methods:
        start = time.perf_counter()
        p = r.pgd
        eps = default_grid(cfg, "pgd")
        torch.manual_seed(int(cfg.seed))  # the random starts
        out = attack.pgd_accuracy(model, images, labels, eps, mean, std, batch_size=batch, steps=p.steps,
                                  rel_stepsize=p.rel_stepsize, abs_stepsize=p.abs_stepsize,
                                  random_start=p.random_start, device=device, progress=bool(r.progress))
        record["pgd"] = {"eps": out["eps"], "accuracy": out["accuracy"],
                         "accuracy_per_run": out["accuracy_per_run"], "clean_accuracy": out["clean_accuracy"],
                         "attack": "foolbox.attacks.L2ProjectedGradientDescentAttack", "steps": int(p.steps),
                         "rel_stepsize": float(p.rel_stepsize),
                         "abs_stepsize": None if p.abs_stepsize is None else float(p.abs_stepsize),
                         "random_start": bool(p.random_start)}
        record["seconds"]["pgd"] = time.perf_counter() - start
        log.info("pgd: " + " ".join(f"{e:g}:{a:.3f}" for e, a in zip(eps, out["accuracy"])))
        if curves:  # soundness: points certified at a PGD radius must survive the attack there
            checks = {}
            for name, curve in curves.items():
                if curve.get("norm", "l2") != "l2":
                    continue  # foolbox's attack is l2's
                flipped, counted = [], []
                for k, e in enumerate(eps):
                    cert = certify.curve_certified(curve, gaps, labels, certify.normalised_radius(e, std))
                    counted.append(int(cert.sum()))
                    flipped.append(int((cert & ~out["robust"][k]).sum()))
                checks[name] = {"eps": eps, "certified": counted, "certified_but_attacked": flipped}
                if any(flipped):
                    log.warning(f"WARNING: {name}: PGD fooled {sum(flipped)} certified points "
                                f"(solver tolerance, or an unsound bound)")
            record["checks"] = checks
    return record


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    return run_on(cfg, Path(HydraConfig.get().runtime.output_dir))


def run_on(cfg: DictConfig, run_dir: Path) -> dict:
    """The app's job on `run_dir` (its own, or src.run's when it follows training): robustness.json and its logs."""
    from .cli import given_keys

    with provenance.locked(run_dir):
        record = robustness(cfg, run_dir, m_given="m" in given_keys())
        loggers.report(cfg, run_dir, "robustness", {**summary.robustness(record, keep=list), **summary.seconds(record)},
                       [("robustness/curves", ["curve", "eps", "accuracy"], summary.curves(record))])
        return record


def robustness(cfg: DictConfig, run_dir: Path, m_given: bool = True) -> dict:
    """Certified and PGD curves of cfg's checkpoint, written to <run_dir>/robustness.json."""
    from .checkpoints import check_not_poor, load_model
    from .cli import keep_config
    from .data import load_splits

    torch.manual_seed(cfg.seed)
    loaded = load_model(cfg, run_dir, m_given)
    path = run_dir / "robustness.json"
    previous = files.read_json(path)  # now: a damaged file refuses the run before its work, not after
    files.check_json(run_dir / "bounds.json", run_dir / loggers.RUN_FILE)
    keep_config(cfg, run_dir, "robustness")
    _, test = load_splits(cfg.dataset)
    n = len(test.labels) if cfg.robustness.n_test is None else min(int(cfg.robustness.n_test), len(test.labels))
    images = test.images[:n].to(torch.float32) / 255
    labels = test.labels[:n]
    record = evaluate(cfg, loaded.model, loaded.sha256, run_dir, images, labels,
                      check_model=lambda error: check_not_poor(loaded, error, bool(cfg.bound.accept_poor_model)))
    solves = convergence(loaded.model)
    warn_unconverged(solves, "src.robustness")
    origin = {"ckpt_sha256": loaded.sha256, "settings": provenance.settings(cfg, ROBUSTNESS), "convergence": solves}
    for name, entry in [*record.get("certified_curves", {}).items(), ("pgd", record.get("pgd"))]:
        if entry is not None:
            entry["provenance"] = {**origin, "settings": entry_settings(origin["settings"], name)}
    record.update(dataset=cfg.dataset.name, profile=cfg.get("profile"), model=OmegaConf.to_container(cfg.model),
                  m=cfg.m, ckpt=loaded.path, ckpt_sha256=loaded.sha256, convergence=solves)
    record = _merge(previous, record, origin)
    files.write_json(path, record)
    summary.write(run_dir, "robustness", summary.robustness(record))
    log.info(f"wrote {path}")
    unsound = {name: c["audit"]["counterexamples"] for name, c in record.get("certified_curves", {}).items()
               if c.get("audit", {}).get("counterexamples")}
    if unsound:
        raise UnsoundCertificateError(f"the audit found counterexamples inside certified balls ({unsound}; "
                                      f"kept in {path}): a certificate of this run is wrong")
    return record


def main() -> None:
    from .cli import hydra_app

    hydra_app("robustness")(run)()


if __name__ == "__main__":
    main()
