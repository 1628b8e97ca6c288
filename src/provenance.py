"""What produced a result: content hashes, the settings that change a result, and the lock of a run dir in use.

A run dir is named by the command-line overrides only, so the same command can meet files of
other settings (an edited config file, another seed): the apps compare the settings recorded
with a result to the ones they run with and refuse to mix them, naming the keys that differ.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import ProjectError

LOCK_FILE = ".lock"
# Keys of a config section that say where or how fast, not what: they never make two results differ.
# trainer.max_epochs is a cap that a run records as its `epochs`: a larger one continues a run.
WHERE_NOT_WHAT = {
    "dataset": ("root", "download", "num_workers", "system_dir", "test_batch_size"),
    # devices and num_nodes are not among them: the processes' batches add up to one optimizer step
    # limit_val_batches, check_val_every_n_epoch: the test error watched after each epoch (src/lit.py)
    "trainer": ("accelerator", "strategy", "enable_progress_bar", "log_every_n_steps", "max_epochs",
                "limit_val_batches", "check_val_every_n_epoch"),
}
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


def what(section: str, values: Mapping) -> dict:
    """`values` of a config section without its where-not-what keys."""
    return {k: v for k, v in values.items() if k not in WHERE_NOT_WHAT.get(section, ())}


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


def bound_settings(cfg, entry: str = "") -> dict:
    """The settings besides the checkpoint that change the bounds.json entry `entry` (recorded with it,
    compared before it is reused): the model and m (an original-layout checkpoint does not record m),
    the dataset (its normalisation), the bound and solver settings; the generalization settings for the
    generalization entry only."""
    from omegaconf import OmegaConf

    from .models import MONDEQ_MODELS

    plain = OmegaConf.to_container(cfg, resolve=True)
    bound = {k: v for k, v in plain["bound"].items() if k not in ("methods", "test_error", "accept_poor_model")}
    found = {"model": plain["model"], "seed": plain["seed"], "bound": bound, "dataset": what("dataset", plain["dataset"])}
    if entry == "generalization":
        found["generalization"] = plain["generalization"]
    if plain["model"]["name"] in MONDEQ_MODELS:  # m and the solver mean nothing to a feed-forward network
        found.update(m=float(plain["m"]), splitting=plain["splitting"])
    return found


def why_not_same(now: Mapping, before: Mapping) -> str | None:
    """Why an entry's provenance `before` ({ckpt_sha256, settings}) is not of the result `now` would be:
    another checkpoint, or the settings that differ; None when it is the same."""
    if before.get("ckpt_sha256") != now.get("ckpt_sha256"):
        return "of another checkpoint"
    keys = differing(now.get("settings", {}), before.get("settings") or {})
    return f"of other settings ({describe(keys, now.get('settings', {}), before.get('settings') or {})})" if keys else None
