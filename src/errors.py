"""The project's expected failures: each ends an app as one `error: ...` line and exit status 1.

Anything else that escapes an app is a bug and keeps its traceback.
"""
from __future__ import annotations


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
