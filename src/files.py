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


def read_json(path: str | Path) -> dict | None:
    """The JSON object `path` holds; None when there is no such file. A file that is there but does not
    hold a JSON object is a DamagedFileError naming it."""
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
        if isinstance(record, dict):
            return record
        problem = f"a JSON {type(record).__name__}, not an object"
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
