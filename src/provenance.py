"""What produced a result: content hashes, the settings that change a result, and the lock of a run dir in use.

A run dir is named by the command-line overrides only, so the same command can meet files of
other settings (an edited config file, another seed): the apps compare the settings recorded
with a result to the ones they run with and refuse to mix them, naming the keys that differ.
Which keys are a result's settings is each key's declaration in src/schema.py.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import ProjectError

LOCK_FILE = ".lock"
# Set by Lightning's DDP launcher and by torchrun / Slurm in every process they start
RANK_VARIABLES = ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")


class RunDirBusyError(ProjectError):
    """Another process holds the run dir."""


def rank_zero() -> bool:
    """Whether this process is the first (or only) one of a run: the one that holds the lock and writes."""
    import os

    return all(int(os.environ.get(name, 0)) == 0 for name in RANK_VARIABLES)


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process; a second process refuses at once instead of writing beside it."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirBusyError(f"run dir {run_dir} is in use by another process (it holds {run_dir / LOCK_FILE}); "
                              f"wait for it to finish, or choose another run dir with hydra.run.dir=DIR") from None
    except OSError as err:  # the lock file cannot be made: a directory in its place, no permission
        raise RunDirBusyError(f"run dir {run_dir}: its lock file {run_dir / LOCK_FILE} cannot be opened "
                              f"({err.strerror or type(err).__name__}); remove what stands in its place") from None
    try:
        yield
    finally:
        lock.release()


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def differing(now: Mapping, before: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested mappings (a key only in one differs)."""
    keys: list[str] = []
    for key in sorted(set(now) | set(before), key=str):
        a, b = now.get(key), before.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            keys += differing(a, b, f"{prefix}{key}.")
        elif a != b and not (_is_number(a) and _is_number(b) and float(a) == float(b)):
            keys.append(f"{prefix}{key}")
    return keys


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe(keys: list[str], now: Mapping, before: Mapping) -> str:
    """'m: 20.0 recorded, 5.0 given; seed: ...' for the keys of `differing`."""
    def get(tree, dotted):
        for part in dotted.split("."):
            tree = tree.get(part) if isinstance(tree, Mapping) else None
        return tree
    return "; ".join(f"{k}: {get(before, k)!r} recorded, {get(now, k)!r} now" for k in keys)


def settings(cfg, result: str, extra: tuple[str, ...] = ()) -> dict:
    """The settings besides the checkpoint that change `result` (schema.BOUNDS, ROBUSTNESS, ...; `extra`:
    more results whose keys count too), as each key declares (src/schema.py): recorded with a result and
    compared before it is reused."""
    from omegaconf import OmegaConf

    from .models import MONDEQ_MODELS
    from .schema import values

    plain = OmegaConf.to_container(cfg, resolve=True)
    mondeq = plain["model"]["name"] in MONDEQ_MODELS
    found: dict = {}
    for one in (result, *extra):
        _deep_update(found, values(plain, one, mondeq=mondeq))
    return found


def _deep_update(into: dict, more: Mapping) -> None:
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def bound_settings(cfg, entry: str = "") -> dict:
    """The settings of the bounds.json entry `entry`: the generalization entry's keys count for it only, and a
    bound method's own keys (bound.<key>, src/bounds/registry.py) for that method only."""
    from .bounds.registry import METHODS
    from .keys import BOUNDS, GENERALIZATION

    found = settings(cfg, BOUNDS, (GENERALIZATION,) if entry == "generalization" else ())
    own = METHODS[entry].keys if entry in METHODS else {}
    kept = {key: value for key, value in found.pop("bound", {}).items() if key in own}
    return {**found, "bound": kept} if kept else found


def why_not_same(now: Mapping, before: Mapping) -> str | None:
    """Why an entry's provenance `before` ({ckpt_sha256, settings}) is not of the result `now` would be:
    another checkpoint, or the settings that differ; None when it is the same."""
    if before.get("ckpt_sha256") != now.get("ckpt_sha256"):
        return "of another checkpoint"
    keys = differing(now.get("settings", {}), before.get("settings") or {})
    return f"of other settings ({describe(keys, now.get('settings', {}), before.get('settings') or {})})" if keys else None
