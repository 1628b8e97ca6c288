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
- `clean_accuracy`, `n_test`, `dataset`, `profile`, `model`, `m`, `ckpt`,
  `ckpt_sha256`, `seconds`, and `checks`: for each certified curve and PGD
  radius, how many points certified at that radius PGD still fooled (0 for a
  sound certificate; see src/certify.py about the solver tolerance).

Radii are l2 norms in [0, 1] pixel units (src/certify.py explains how the
certificate converts them).  A robustness.json of the same checkpoint and the
same test points is updated, not replaced: curves not recomputed (another
certify.bound, or `pgd` under robustness.methods=[certified]) are kept.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import attack, certify
from .errors import ConfigError
from .evaluation import logits_of, pick_device

METHODS = ("certified", "pgd")
AUTO_BOUND = {"mon_fc": "theorem1", "mon_conv": "theorem1", "mon_multiconv": "theorem1",
              "dnn": "lipsdp_neuron", "cnn": "seqlip_greedy"}  # the paper's choice per family


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def check_config(cfg: DictConfig) -> None:
    """Reject wrong robustness/certify values before loading anything."""
    r = cfg.robustness
    methods = _as_list(r.methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ConfigError(f"robustness.methods must be a non-empty subset of {list(METHODS)}, got {methods}")
    for rule in _as_list(cfg.certify.rule):
        try:
            certify.rule_factor(rule)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if r.n_test is not None and (isinstance(r.n_test, bool) or int(r.n_test) < 1):
        raise ConfigError(f"robustness.n_test must be a positive integer or null, got {r.n_test!r}")
    if int(r.batch_size) < 1:
        raise ConfigError(f"robustness.batch_size must be >= 1, got {r.batch_size}")


def default_grid(cfg: DictConfig, which: str) -> list[float]:
    """The radii of `which` (certified or pgd): the explicit override, else the dataset's grid."""
    given = cfg.certify.eps if which == "certified" else cfg.robustness.pgd.eps
    if given is not None:
        return [float(e) for e in _as_list(given)]
    grids = cfg.robustness.grids
    name = cfg.dataset.name
    family = name if name in grids else ("cifar10" if int(cfg.dataset.in_shape[0]) == 3 else "mnist")
    return [float(e) for e in grids[family][which]]


def bounds_to_use(cfg: DictConfig) -> list[str]:
    names = [str(b) for b in _as_list(cfg.certify.bound)]
    return [AUTO_BOUND[cfg.model.name] if b == "auto" else b for b in names] or [AUTO_BOUND[cfg.model.name]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_file(a, b) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (TypeError, OSError):
        return False


def bounds_record(run_dir: Path, ckpt: str) -> dict | None:
    """The run dir's bounds.json, when it was computed from this checkpoint (and after it was written)."""
    path = run_dir / "bounds.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if not _same_file(record.get("ckpt"), ckpt):
        print(f"ignoring {path}: it is of checkpoint {record.get('ckpt')}, not {ckpt}", flush=True)
        return None
    if Path(ckpt).stat().st_mtime > path.stat().st_mtime:
        print(f"ignoring {path}: older than {ckpt}", flush=True)
        return None
    return record


def _bound_cfg(cfg: DictConfig, method: str) -> DictConfig:
    """cfg (its `bound` section composed from conf/bound.yaml) restricted to one method."""
    return OmegaConf.merge(cfg, {"bound": {"methods": [method], "test_error": False}})


def lipschitz_constant(cfg: DictConfig, model, bound: str, ckpt: str, run_dir: Path, test_x: torch.Tensor):
    """(L, source): a float, or the class-pair matrix for sdp_pairwise."""
    record = bounds_record(run_dir, ckpt)
    if record is not None and record.get("upper", {}).get(bound) is not None:
        return record["upper"][bound], "bounds.json"
    from .bounds.registry import compute_bounds

    print(f"{bound} not in a bounds.json of this checkpoint: computing it", flush=True)
    record = compute_bounds(model, _bound_cfg(cfg, bound), test_x, None)
    value = record["upper"].get(bound)
    if value is None:
        raise RuntimeError(f"bound {bound} failed: {record.get('failed', {}).get(bound)}")
    return value, "computed"


def _merge(previous: dict | None, record: dict) -> dict:
    """Keep the curves of an earlier robustness.json of the same checkpoint and test points."""
    if not previous:
        return record
    same = all(previous.get(k) == record.get(k) for k in ("ckpt_sha256", "n_test", "dataset"))
    if not same:
        return record
    merged = dict(record)
    curves = dict(previous.get("certified_curves", {}))
    curves.update(record.get("certified_curves", {}))
    if curves:
        merged["certified_curves"] = curves
    for key in ("certified", "pgd"):
        if key not in record and key in previous:
            merged[key] = previous[key]
    seconds = dict(previous.get("seconds", {}))
    seconds.update(record.get("seconds", {}))
    merged["seconds"] = seconds
    if "checks" not in record and "checks" in previous:
        merged["checks"] = previous["checks"]
    return merged


def evaluate(cfg: DictConfig, model, ckpt: str, run_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """The robustness.json record of `model` on pixel images (N, C, H, W) in [0, 1]."""
    check_config(cfg)
    r = cfg.robustness
    methods = _as_list(r.methods)
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
        for bound in ([] if given is not None else bounds_to_use(cfg)):
            value, source = lipschitz_constant(cfg, model.cpu(), bound, ckpt, run_dir, x)
            sources.append((bound, value, source))
        bound_seconds = time.perf_counter() - start
    device = pick_device(str(r.device))
    model = model.to(device).eval()
    batch = int(r.batch_size)
    logits = logits_of(model, x, batch, device)
    record: dict = {"clean_accuracy": float((logits.argmax(1) == labels).double().mean()),
                    "n_test": len(labels), "seconds": {},
                    "eps_units": "l2 norm in [0, 1] pixel units; certificates use eps / min(std) "
                                 "in normalised units (src/certify.py)"}
    curves: dict[str, dict] = {}
    if "certified" in methods:
        start = time.perf_counter()
        eps = default_grid(cfg, "certified")
        rules = [str(v) for v in _as_list(cfg.certify.rule)] or ["paper"]
        for bound, value, source in sources:
            for rule in ([None] if isinstance(value, (list, tuple)) else rules):
                curve = certify.certified_curve(logits, labels, value, eps, std, rule or "paper")
                curve.update(bound=bound, source=source)
                curves[f"{bound}/{curve['rule']}"] = curve
                print(f"certified [{bound}/{curve['rule']}]: "
                      + " ".join(f"{e:g}:{a:.3f}" for e, a in zip(eps, curve["accuracy"])), flush=True)
        record["certified"] = next(iter(curves.values()))
        record["certified_curves"] = curves
        record["seconds"]["certified"] = time.perf_counter() - start + bound_seconds
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
        print("pgd: " + " ".join(f"{e:g}:{a:.3f}" for e, a in zip(eps, out["accuracy"])), flush=True)
        if curves:  # soundness: points certified at a PGD radius must survive the attack there
            checks = {}
            for name, curve in curves.items():
                flipped, counted = [], []
                for k, e in enumerate(eps):
                    cert = certify.certified_at(logits.double(), labels, curve["lipschitz"],
                                                certify.normalised_radius(e, std), curve["rule"])
                    counted.append(int(cert.sum()))
                    flipped.append(int((cert & ~out["robust"][k]).sum()))
                checks[name] = {"eps": eps, "certified": counted, "certified_but_attacked": flipped}
                if any(flipped):
                    print(f"WARNING: {name}: PGD fooled {sum(flipped)} certified points "
                          f"(solver tolerance, or an unsound bound)", flush=True)
            record["checks"] = checks
    return record


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from .checkpoints import load_model
    from .data import load_splits

    check_config(cfg)
    torch.manual_seed(cfg.seed)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model, ckpt = load_model(cfg, run_dir)
    _, test = load_splits(cfg.dataset)
    n = len(test.labels) if cfg.robustness.n_test is None else min(int(cfg.robustness.n_test), len(test.labels))
    images = test.images[:n].to(torch.float32) / 255
    labels = test.labels[:n]
    record = evaluate(cfg, model, ckpt, run_dir, images, labels)
    record.update(dataset=cfg.dataset.name, profile=cfg.get("profile"), model=OmegaConf.to_container(cfg.model),
                  m=cfg.m, ckpt=ckpt, ckpt_sha256=_sha256(Path(ckpt)))
    path = run_dir / "robustness.json"
    previous = json.loads(path.read_text()) if path.is_file() else None
    record = _merge(previous, record)
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}", flush=True)
    return record


def main() -> None:
    from .cli import hydra_app

    hydra_app("robustness")(run)()


if __name__ == "__main__":
    main()
