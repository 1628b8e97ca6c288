"""The handful of numbers of each app's result, flat: DVC's metrics files and the wandb run summary.

metrics.json, bounds.json and robustness.json hold everything with its provenance (the outputs);
these hold a few scalars per run, keyed `<what>/<name>`, so `dvc metrics show`, `dvc exp show`
and a wandb dashboard set runs side by side. Every value is read from the record, never typed.
"""
from __future__ import annotations

import math
from pathlib import Path

from . import files

FILE = "summary_{app}.json"  # beside the app's JSON in the run dir


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training(metrics: dict) -> dict[str, float]:
    """src.run: the error rates, the epochs trained and their seconds, the share of converged solves."""
    out = {k: metrics[k] for k in ("test_error", "train_error", "margin_error", "epochs", "seconds")
           if _number(metrics.get(k))}
    for stage, record in (metrics.get("convergence") or {}).items():
        fractions = [r["converged_fraction"] for r in record.values() if _number(r.get("converged_fraction"))]
        if fractions:
            out[f"converged/{stage}"] = min(fractions)
    return out


def bounds(record: dict) -> dict[str, float]:
    """src.bound: test error, every upper and lower bound (a class-pair matrix by its largest entry),
    log10 of the generalization bounds."""
    out = {"test_error": record["test_error"]} if _number(record.get("test_error")) else {}
    for kind in ("upper", "lower"):
        for name, value in record.get(kind, {}).items():
            if not _number(value):
                value = (record.get("details", {}).get(name) or {}).get("value")
            if _number(value):
                out[f"{kind}/{name}"] = value
    gen = record.get("generalization") or {}
    for key, name in (("log10_complexity", "complexity"), ("log10_unrolled_fb_complexity", "unrolled_fb")):
        if _number(gen.get(key)):
            out[f"generalization/log10_{name}"] = gen[key]
    return out


def radii(eps: list[float]) -> list[float]:
    """The radii a summary keeps of a curve: its first, middle and last."""
    return sorted({eps[0], eps[len(eps) // 2], eps[-1]}) if eps else []


def _curves(record: dict) -> dict[str, dict]:
    """A robustness.json record's curves by summary name: certified/<bound>/<rule>, pgd."""
    named = {f"certified/{name}": c for name, c in (record.get("certified_curves") or {}).items()}
    if record.get("pgd"):
        named["pgd"] = record["pgd"]
    return named


def robustness(record: dict, keep=radii) -> dict[str, float]:
    """src.robustness: clean accuracy, and each certified and PGD curve at the radii `keep` picks of
    its grid (default: three; `list`: every one); an exact curve also with its accuracy not shown
    non-robust (`/upper`) and its count of undecided points."""
    clean = (record.get("pgd") or {}).get("clean_accuracy")
    out = {"clean_accuracy": clean} if _number(clean) else {}
    for name, curve in _curves(record).items():
        at = dict(zip(curve["eps"], curve["accuracy"]))
        upper = dict(zip(curve["eps"], curve.get("accuracy_upper") or ()))  # an exact curve's other side
        undecided = dict(zip(curve["eps"], (curve.get("status") or {}).get("undecided") or ()))
        for e in keep(list(curve["eps"])):
            if _number(at[e]):
                out[f"{name}@{e:g}"] = at[e]
            if _number(upper.get(e)):
                out[f"{name}/upper@{e:g}"] = upper[e]
            if _number(undecided.get(e)):
                out[f"{name}/undecided@{e:g}"] = undecided[e]
    return out


def seconds(record: dict) -> dict[str, float]:
    """The seconds of each part of a bounds.json or robustness.json record."""
    return {f"seconds/{k}": v for k, v in (record.get("seconds") or {}).items() if _number(v)}


def curves(record: dict) -> list[list]:
    """Every point of a robustness.json record's curves: [curve, eps, accuracy]."""
    return [[name, e, a] for name, c in _curves(record).items() for e, a in zip(c["eps"], c["accuracy"])]


def write(run_dir: Path, app: str, flat: dict[str, float]) -> Path:
    return files.write_json(run_dir / FILE.format(app=app), dict(sorted(flat.items())))
