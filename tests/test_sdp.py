"""SDP solver selection: an unlicensed MOSEK falls back to SCS, and says so."""
import logging

import cvxpy as cp
import numpy as np
import pytest

from src.bounds import sdp
from src.bounds.sdp import solve


def _problem():
    X = cp.Variable((2, 2), PSD=True)
    return cp.Problem(cp.Minimize(cp.trace(X)), [X >> np.diag([1.0, 2.0])])


def test_unlicensed_mosek_falls_back_to_scs_with_a_warning_once(monkeypatch, caplog):
    monkeypatch.setenv("MOSEKLM_LICENSE_FILE", "/nonexistent/mosek.lic")
    monkeypatch.setattr(sdp, "_SAID_UNAVAILABLE", set())
    if "MOSEK" not in cp.installed_solvers():
        pytest.fail("mosek is pinned in requirements.txt and must be installed")
    with caplog.at_level(logging.WARNING, logger="src.bounds.sdp"):
        report = solve(_problem(), options={"SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8}})
        again = solve(_problem(), options={"SCS": {"eps_abs": 1e-8, "eps_rel": 1e-8}})
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "SDP solver MOSEK is unavailable" in said[0] and "SCS" in said[0]
    assert report.solver == again.solver == "SCS" and report.ok and "MOSEK" in again.skipped
    assert "MOSEK" in report.skipped and "icen" in report.skipped["MOSEK"]  # licence / license
    assert report.value == pytest.approx(3.0, rel=1e-6)


def test_failed_solves_give_no_number():
    report = solve(_problem(), solvers=("NOT_A_SOLVER",))
    assert not report.ok and report.solver is None and report.skipped == {"NOT_A_SOLVER": "not installed"}


def test_the_class_pair_and_diagonal_sdp_checks_inflate_rho_by_their_rounding():
    """The a posteriori check's rho is the exact Schur complement, times the rounding factor of cond(M)."""
    import numpy as np

    from src.bounds.diag_sdp import _DiagSDP
    from src.bounds.sdp import schur_rounding

    rng = np.random.default_rng(0)
    A, B, U = rng.normal(size=(6, 6)), rng.normal(size=(6, 6)), rng.normal(size=(6, 4))
    W = 0.5 * np.eye(6) - A.T @ A + B - B.T
    problem = _DiagSDP(W, U, 0.5)
    lam = np.ones(6)
    G = np.eye(6) * 1e-3
    rho, _ = problem.certify(lam, G)
    M = problem.K + problem.K.T - G
    plain = float(np.linalg.eigvalsh(problem.F.T @ np.linalg.solve(M, problem.F))[-1])
    factor = schur_rounding(np.linalg.eigvalsh(M))
    assert factor > 1 + 1e-12 and rho == pytest.approx(plain * factor, rel=1e-13)
    assert schur_rounding([1e-6, 1.0]) == pytest.approx(1 + 1e-6 + 1e-12)


def test_the_a_posteriori_check_is_the_schur_complement_rounded_up():
    """schur_rho: lambda_max(C^T M^-1 C) by an explicit inverse, never below it, above by the rounding factor."""
    from src.bounds.sdp import schur_rho, schur_rounding

    rng = np.random.default_rng(0)
    A, C = rng.standard_normal((6, 6)), rng.standard_normal((6, 3))
    M = A @ A.T + 0.1 * np.eye(6)
    want = np.linalg.eigvalsh(C.T @ np.linalg.inv(M) @ C)[-1]
    got = schur_rho(M, C)
    factor = schur_rounding(np.linalg.eigvalsh(M))
    assert factor > 1 and want <= got and got == pytest.approx(want * factor, rel=1e-12)
