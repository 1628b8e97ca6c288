"""SDP solver selection: an unlicensed MOSEK falls back to SCS, and says so."""
import cvxpy as cp
import numpy as np
import pytest

from src.bounds.sdp import solve


def _problem():
    X = cp.Variable((2, 2), PSD=True)
    return cp.Problem(cp.Minimize(cp.trace(X)), [X >> np.diag([1.0, 2.0])])


def test_unlicensed_mosek_falls_back_to_scs_with_a_warning(monkeypatch):
    monkeypatch.setenv("MOSEKLM_LICENSE_FILE", "/nonexistent/mosek.lic")
    if "MOSEK" not in cp.installed_solvers():
        pytest.fail("mosek is pinned in requirements.txt and must be installed")
    with pytest.warns(RuntimeWarning, match="MOSEK failed"):
        report = solve(_problem(), options={"SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8}})
    assert report.solver == "SCS" and report.ok
    assert "MOSEK" in report.skipped and "icen" in report.skipped["MOSEK"]  # licence / license
    assert report.value == pytest.approx(3.0, rel=1e-6)


def test_failed_solves_give_no_number():
    report = solve(_problem(), solvers=("NOT_A_SOLVER",))
    assert not report.ok and report.solver is None and report.skipped == {"NOT_A_SOLVER": "not installed"}
