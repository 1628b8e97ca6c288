"""Reading and writing the files the apps leave behind, so that none is ever half-written.

Each file is written into a temporary file beside it (the same directory, hence the same file
system) and swapped in by `os.replace`, which is atomic: a reader, or the next run after a kill,
a crash or a full disk, finds the old file or the new one, never a truncated mix of the two.
A JSON file that does not parse (written before this module, or edited by hand) is refused when
an app first reads it, before any work, naming the file and what to do.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import DamagedFileError, RunDirError


def replace(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Make `path` hold what `write(file)` writes, all at once: written aside, flushed to disk, swapped in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one writer per file at a time (the run dir's lock, rank zero), so the process id keeps it unique
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # else a power cut could leave the renamed file empty
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return replace(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, record) -> Path:
    """`record` as indented JSON; a NaN or infinity in it is a bug of the caller, refused here rather than
    written as a file that JSON readers (DVC, jq, browsers) reject."""
    try:
        text = json.dumps(record, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: {_first_nonfinite(record)} is not finite; JSON has no NaN or infinity "
                         f"(write null)") from None
    return write_text(path, text + "\n")


def _first_nonfinite(value, where: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _first_nonfinite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} (not JSON)")


# The layout of the result files the apps read back and merge: a section of another type (a list for a
# dict, a string for a curve) is damage, refused as such before it meets the code that reads it.
# A type (or tuple of types): the value's; a dict of shapes: a JSON object whose listed keys, when
# present, have theirs; Each(shape): a JSON object whose every value has that shape.


@dataclass(frozen=True)
class Each:
    shape: object


MAYBE_DICT = (dict, type(None))  # convergence: null for a network without equilibrium solves
SHAPES = {
    "bounds.json": {"upper": dict, "lower": dict, "seconds": dict, "failed": dict, "details": dict, "solver": dict,
                    "provenance": Each({"settings": dict, "convergence": MAYBE_DICT})},
    "robustness.json": {"certified": {"provenance": dict, "audit": dict},
                        "certified_curves": Each({"provenance": dict, "audit": dict, "eps": list, "accuracy": list}),
                        "pgd": {"provenance": dict, "eps": list, "accuracy": list}, "seconds": dict,
                        "checks": Each(dict), "certified_model": dict, "convergence": MAYBE_DICT},
    "metrics.json": {"convergence": MAYBE_DICT},
}


def _shape_problem(value, shape, where: str) -> str | None:
    if isinstance(shape, Each):
        if not isinstance(value, dict):
            return f"{where} is a JSON {type(value).__name__}, not an object"
        return next((p for k, v in value.items() if (p := _shape_problem(v, shape.shape, f"{where}.{k}"))), None)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is a JSON {type(value).__name__}, not an object"
        return next((p for k, sub in shape.items() if k in value
                     and (p := _shape_problem(value[k], sub, f"{where}.{k}" if where else k))), None)
    if not isinstance(value, shape):
        return f"{where} is a JSON {type(value).__name__}, not {'a list' if shape is list else 'an object'}"
    return None


def read_json(path: str | Path) -> dict | None:
    """The JSON object `path` holds; None when there is no such file. A file that is there but does not
    hold a JSON object (of the layout SHAPES gives for its name) is a DamagedFileError naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(), parse_constant=_no_constant)
    except OSError as err:
        problem = err.strerror or type(err).__name__
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, NaN
        problem = "empty" if not path.stat().st_size else f"not valid JSON: {err}"
    else:
        if not isinstance(record, dict):
            problem = f"a JSON {type(record).__name__}, not an object"
        else:
            problem = _shape_problem(record, SHAPES.get(path.name, {}), "")
            if problem is None:
                return record
    raise DamagedFileError(f"{path} is damaged ({problem}), perhaps by an interrupted write: move it away "
                           f"(mv {path} {path}.damaged) and run the command again")


def check_json(*paths: str | Path) -> None:
    """Read each of `paths` that exists now, so that a damaged one refuses the app before its work rather than
    when the app reads it at the end."""
    for path in paths:
        read_json(path)


def check_run_dir(run_dir: str | Path) -> None:
    """Refuse a run dir that cannot be made or written: a file in its place (or in its path), no permission."""
    run_dir = Path(run_dir)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = "" if existing == run_dir else f" (its parent {existing})"
    if not existing.is_dir():
        raise RunDirError(f"run dir {run_dir}{where} is a file, not a directory: move the file away, or choose "
                          f"another run dir with hydra.run.dir=DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"run dir {run_dir}{where} is not writable by this user: give write permission, or "
                          f"choose another run dir with hydra.run.dir=DIR")
