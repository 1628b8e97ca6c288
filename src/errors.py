"""The project's expected failures: each ends an app as one `error: ...` line and exit status 1.

Anything else that escapes an app is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ProjectError(Exception):
    """A failure the user can fix by changing a setting or an input file."""


class ConfigError(ProjectError, ValueError):
    """A configuration value that no app can run with."""


class CheckpointError(ProjectError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the configured model."""


class DatasetError(ProjectError, ValueError):
    """Dataset files that are absent, unreadable or inconsistent."""


class SolverError(ProjectError, ArithmeticError):
    """An equilibrium solve that failed: a non-finite state, or no convergence where that is an error."""


class DivergedError(SolverError, FloatingPointError):
    """NaN or Inf in the equilibrium state."""


class UnsoundCertificateError(ProjectError):
    """An audit found a counterexample inside a certified ball: the certificate, or the code, is wrong."""


class DamagedFileError(ProjectError):
    """A result file of a run dir that is there but cannot be read (not JSON, truncated)."""


class RunDirError(ProjectError):
    """A run dir that cannot be written: a file in its place, no permission."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """An app's body: a ProjectError ends it as one `error: ...` line and exit status 1, instead of a stack
    trace (HYDRA_FULL_ERROR=1 keeps the trace)."""
    try:
        yield
    except ProjectError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {err}")
