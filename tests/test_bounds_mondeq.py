"""Upper bounds of monDEQs (src/bounds/theorem1.py, diag_sdp.py, unrolled.py) against hand-computed cases and dense references."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.bounds import diag_sdp, lower, theorem1 as thm, unrolled
from src.mondeq import dense
from src.mondeq.networks import MonConvNet, MonFCNet
from src.mondeq.spectral import circular_conv
from src.mondeq.splitting import SPLITTING_METHODS, SolverConfig, solve

TIGHT = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-10, bwd_tol=1e-10, fwd_max_iter=5000,
                     bwd_max_iter=5000, check_every=1)



def fc_net(seed=0, width=8, side=4, m=0.5, classes=10, scale=1.0):
    torch.manual_seed(seed)
    net = MonFCNet((1, side, side), classes, width, m, TIGHT).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def trained_fc_net(seed=0, width=10, m=1.0, steps=60):
    """A small FC monDEQ after some Adam steps on a learnable synthetic task (larger, structured weights)."""
    torch.manual_seed(seed)
    net = MonFCNet((1, 4, 4), 10, width, m, SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-4, bwd_tol=1e-4))
    x = torch.randn(256, 1, 4, 4)
    y = (x.flatten(1) @ torch.randn(16, 10)).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.mon.solver = TIGHT
    return net.double()


def conv_net(seed=0, m=0.5, channels=3, side=6, classes=10):
    torch.manual_seed(seed)
    net = MonConvNet((1, side, side), classes, channels, m, TIGHT).double()
    with torch.no_grad():
        net.mon.operator.g.fill_(1.3)
        net.mon.operator.h.fill_(0.7)
    return net


def random_pair_ratio(net, n=200, seed=1, radius=None):
    torch.manual_seed(seed)
    shape = net.mon.operator.input_shape if isinstance(net, MonFCNet) else (1, 6, 6)
    x = 2 * torch.randn(n, *shape, dtype=torch.float64)
    y = x + (torch.randn_like(x) * (radius or 1.0))
    with torch.no_grad():
        diff = (net(x) - net(y)).norm(dim=1)
    return float((diff / (x - y).flatten(1).norm(dim=1)).max())


# --------------------------------------------------------------------------- a one-unit monDEQ by hand

def scalar_net(u=1.5, a=0.8, w=-2.0, bias=0.3, m=0.5):
    net = MonFCNet((1, 1, 1), 1, 1, m, TIGHT).double()
    with torch.no_grad():
        net.mon.operator.U.weight.fill_(u)
        net.mon.operator.U.bias.fill_(bias)
        net.mon.operator.A.weight.fill_(a)
        net.mon.operator.B.weight.fill_(0.4)  # B - B^T = 0 for a scalar
        net.Wout.weight.fill_(w)
    return net


def test_one_unit_mondeq_by_hand():
    # W = 1 - m - a^2, so z* = relu(u x + b) / (m + a^2): the exact Lipschitz constant is |w u| / (m + a^2).
    u, a, w, m = 1.5, 0.8, -2.0, 0.5
    net = scalar_net(u, a, w, m=m)
    exact = abs(w * u) / (m + a * a)
    assert thm.theorem1(net)["value"] == pytest.approx(abs(w * u) / m, rel=1e-12)
    res = diag_sdp.sdp_diag(net)
    assert res["sdp_report"]["status"] == "optimal"
    assert res["value"] == pytest.approx(exact, rel=1e-6)  # the SDP is exact for one unit
    x = torch.linspace(-3, 3, 7, dtype=torch.float64).view(-1, 1, 1, 1)
    with torch.no_grad():
        out = net(x)[:, 0]
    slope = (out[-1] - out[-2]) / (x[-1] - x[-2]).squeeze()
    assert abs(float(slope)) == pytest.approx(exact, rel=1e-8)


# --------------------------------------------------------------------------- Theorem 1 (FC and conv)

@pytest.mark.parametrize("m", [0.2, 1.0, 5.0])
def test_theorem1_fc_is_the_norm_product_and_holds_on_random_pairs(m):
    net = fc_net(seed=3, m=m, scale=3.0)
    res = thm.theorem1(net)
    W_out = net.Wout.weight.detach().numpy()
    U = net.mon.operator.U.weight.detach().numpy()
    assert res["value"] == pytest.approx(np.linalg.norm(W_out, 2) * np.linalg.norm(U, 2) / m, rel=1e-12)
    for radius in (1.0, 1e-2):
        assert random_pair_ratio(net, radius=radius) <= res["value"] * (1 + 1e-9)


def test_conv_input_norm_equals_svd_of_dense_circular_conv():
    torch.manual_seed(0)
    kernel = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    size = (5, 7)
    d = 2 * size[0] * size[1]
    eye = torch.eye(d, dtype=torch.float64).view(d, 2, *size)
    dense = circular_conv(eye, kernel).flatten(1).T  # (3*35, 2*35)
    assert thm.conv_input_norm(kernel, size) == pytest.approx(
        float(torch.linalg.matrix_norm(dense, ord=2)), rel=1e-10)


def test_theorem1_conv_uses_the_padded_grid_and_pooled_is_exact():
    net = conv_net(seed=1, m=0.5)
    op = net.mon.operator
    t1, pooled = thm.theorem1(net), thm.theorem1_pooled(net)
    U_dense = op.dense_input_matrix().detach()  # U on the padded 8x8 grid
    u_norm = float(torch.linalg.matrix_norm(U_dense, ord=2))
    wo = float(torch.linalg.matrix_norm(net.Wout.weight.detach(), ord=2))
    assert t1["U_norm"] == pytest.approx(u_norm, rel=1e-10)
    assert t1["value"] == pytest.approx(wo * u_norm / op.m, rel=1e-10)
    # pooled: ||W_out R|| from the dense read-out matrix R (avg-pool 4 of an 8x8 grid)
    n = op.state_size
    R = net.readout(torch.eye(n, dtype=torch.float64)).T  # (features, n)
    wr = float(torch.linalg.matrix_norm(net.Wout.weight.detach() @ R, ord=2))
    assert pooled["Wout_readout_norm"] == pytest.approx(wr, rel=1e-10)
    assert pooled["value"] == pytest.approx(wr * u_norm / op.m, rel=1e-10)
    assert pooled["value"] <= t1["value"]
    assert float(torch.linalg.matrix_norm(R, ord=2)) == pytest.approx(0.25, rel=1e-12)  # 4x4 average pool
    # the pooled bound holds on random input pairs (the net pads its 6x6 input itself)
    assert random_pair_ratio(net, n=100) <= pooled["value"] * (1 + 1e-9)
    assert "U_norm_paper_grid" in t1


def test_theorem1_multitier_pooled_equals_theorem1():
    from src.mondeq.networks import MonMultiConvNet
    torch.manual_seed(0)
    net = MonMultiConvNet((1, 6, 6), 10, (2, 3), 1.0, TIGHT).double()
    t1, pooled = thm.theorem1(net), thm.theorem1_pooled(net)
    U_dense = net.mon.operator.dense_input_matrix().detach()
    assert t1["U_norm"] == pytest.approx(float(torch.linalg.matrix_norm(U_dense, ord=2)), rel=1e-10)
    assert pooled["value"] == pytest.approx(t1["value"], rel=1e-10)  # the read-out is a coordinate slice


# --------------------------------------------------------------------------- the diagonal-multiplier SDP

def full_lmi_min_eig(net, res):
    """Smallest eigenvalue of the unreduced LMI (with U itself) at the returned multipliers and rho = value^2."""
    W, U, Wo = dense.fc_matrices(net)
    lam = np.diag(res["multipliers"])
    rho = res["value"] ** 2
    top = 2 * lam - lam @ W - W.T @ lam - Wo.T @ Wo
    M = np.block([[top, lam @ U], [U.T @ lam, rho * np.eye(U.shape[1])]])
    return float(np.linalg.eigvalsh(M)[0]) / max(1.0, float(np.abs(M).max()))


@pytest.mark.parametrize("seed,m,scale", [(0, 0.5, 1.0), (1, 5.0, 2.0), (2, 20.0, 4.0), (3, 0.1, 0.5)])
def test_sdp_diag_random_nets(seed, m, scale):
    net = fc_net(seed=seed, m=m, scale=scale, width=10)
    res, t1 = diag_sdp.sdp_diag(net), thm.theorem1(net)["value"]
    assert res["status"] == "optimal" and res["sdp_report"]["solver"] in ("MOSEK", "SCS")
    assert res["value"] <= t1 * (1 + 1e-9)
    assert full_lmi_min_eig(net, res) >= -1e-10  # the certificate is valid for the unreduced LMI
    assert res["value"] <= res["solver_value"] * (1 + 1e-4)  # certification costs (almost) nothing
    low = lower.grad_norm(net, 3 * torch.randn(2000, 1, 4, 4, dtype=torch.float64), ascent_steps=10,
                          box=(-6.0, 6.0))
    assert low["value"] <= res["value"] * (1 + 1e-9)


def test_sdp_diag_trained_net_is_tighter_than_theorem1_and_valid():
    net = trained_fc_net()
    res, t1 = diag_sdp.sdp_diag(net), thm.theorem1(net)["value"]
    assert res["status"] == "optimal"
    assert res["value"] <= t1 * (1 + 1e-9)
    assert full_lmi_min_eig(net, res) >= -1e-10
    low = lower.grad_norm(net, 3 * torch.randn(4000, 1, 4, 4, dtype=torch.float64), ascent_steps=10,
                          box=(-6.0, 6.0))
    assert low["value"] <= res["value"] * (1 + 1e-9)
    assert random_pair_ratio(net, radius=0.1) <= res["value"] * (1 + 1e-9)


def test_certify_recomputes_rho_exactly():
    net = fc_net(seed=5, m=2.0, width=6)
    W, U, Wo = dense.fc_matrices(net)
    prob = diag_sdp._DiagSDP(W, U, 2.0)
    G = Wo.T @ Wo / np.linalg.norm(Wo, 2) ** 2
    # Lambda = I is Theorem 1 (rho <= 1); check rho against a bisection on the full LMI's eigenvalues
    rho, lam = prob.certify(np.ones(6), G)
    assert rho <= 1 + 1e-12

    def feasible(r):
        L = np.diag(lam)
        M = np.block([[L @ prob.K + prob.K.T @ L - G, L @ prob.F], [prob.F.T @ L, r * np.eye(prob.F.shape[1])]])
        return np.linalg.eigvalsh(M)[0] >= -1e-13

    assert feasible(rho * (1 + 1e-9)) and not feasible(rho * (1 - 1e-6))
    # an infeasible multiplier (Lambda = 0: M = -G) is repaired by the shift, never trusted as is
    rho0, lam0 = prob.certify(np.zeros(6), G)
    assert lam0.min() > 0 and math.isfinite(rho0)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_sdp_failure_is_reported_not_a_number(monkeypatch):
    net = fc_net(seed=0, width=6)
    res = diag_sdp.sdp_diag(net, solvers=("NO_SUCH_SOLVER",))
    assert res["value"] is None and res["status"] == "no solver succeeded"
    assert res["sdp_report"]["value"] is None  # never NaN
    monkeypatch.setattr(diag_sdp, "SCS_MAX_ITERS", 3)
    res = diag_sdp.sdp_diag(net, solvers=("SCS",))
    assert res["value"] is None and res["status"] != "optimal"
    pair = diag_sdp.sdp_pairwise(fc_net(seed=0, width=4, classes=3), solvers=("SCS",))
    assert pair["value"] is None and pair["matrix"][0][1] is None


def test_sdp_needs_an_fc_mondeq():
    with pytest.raises(TypeError):
        diag_sdp.sdp_diag(conv_net())
    with pytest.raises(TypeError):
        thm.theorem1(torch.nn.Linear(3, 2))


def test_sdp_pairwise_bounds_each_logit_difference():
    net = fc_net(seed=4, width=6, m=1.0, scale=2.0)
    diag = diag_sdp.sdp_diag(net)["value"]
    res = diag_sdp.sdp_pairwise(net)
    L = np.array(res["matrix"], dtype=float)
    assert res["status"] == "optimal" and L.shape == (10, 10)
    assert np.allclose(L, L.T) and np.all(np.diag(L) == 0)
    assert res["value"] == pytest.approx(L.max())
    assert np.all(L <= math.sqrt(2) * diag * (1 + 1e-6))
    W, U, Wo = dense.fc_matrices(net)
    t1_pair = np.array([[np.linalg.norm(Wo[i] - Wo[j]) for j in range(10)] for i in range(10)]) \
        * np.linalg.norm(U, 2) / net.mon.operator.m
    assert np.all(L <= t1_pair * (1 + 1e-9))
    # L_ij >= |grad (f_i - f_j)| at random points (exact implicit Jacobians)
    J = lower._FCJacobian(net).jacobian(3 * torch.randn(3000, 1, 4, 4, dtype=torch.float64)).numpy()
    observed = np.linalg.norm(J[:, :, None, :] - J[:, None, :, :], axis=-1).max(axis=0)
    assert np.all(observed <= L * (1 + 1e-9) + 1e-12)
    assert (observed > 0.5 * L).sum() > 40  # and the pairwise numbers are not vacuous


# --------------------------------------------------------------------------- unrolled networks (Appendix D)

def run_unrolled(layers, x, k):
    W1, Wu, Wf, relu, c = layers
    s = x @ W1.T + c
    s[:, relu] = np.maximum(s[:, relu], 0)
    for _ in range(k - 1):
        s = s @ Wu.T + c
        s[:, relu] = np.maximum(s[:, relu], 0)
    return s @ Wf.T


@pytest.mark.parametrize("method,alpha", [("fb", 0.1), ("pr", 0.5), ("pr", 1.0)])
def test_unrolled_network_reproduces_the_solver_and_its_bound(method, alpha):
    net = fc_net(seed=6, width=7, m=1.0)
    op = net.mon.operator
    W, U, Wo = dense.fc_matrices(net)
    b = op.U.bias.detach().numpy()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    k = unrolled.count_iterations(net, method, alpha, x, tol=1e-3)
    assert k is not None and k > 1
    # the k-th iterate of the network's solver equals the explicit depth-k network
    with torch.no_grad():
        bias = op.input_term(net.prepare(x))
        res = SPLITTING_METHODS[method].resolvent(op, alpha)
        fp = SPLITTING_METHODS[method].forward_map(op, net.mon.nonlinearity, bias, alpha, res)
        _, stats = solve(fp, 0.0, k, 1, 0, lambda i: None)
        _, prev = solve(fp, 0.0, k - 1, 1, 0, lambda i: None)
        state = fp.start
        for _ in range(k):
            state, _ = fp.step(state, False)
        z_k = net.mon.nonlinearity(state)  # the k-th iterate (PR: its reflected variable) as a layer output
    assert stats.residual <= 1e-3 < prev.residual  # k is the first iteration within tol
    layers = unrolled.unrolled_layers(W, U, Wo, method, alpha, b)
    out = run_unrolled(layers, net.prepare(x).numpy(), k)
    assert np.allclose(out, z_k.numpy() @ Wo.T, atol=1e-10)
    # the reported bound is the product of the dense layer norms (checks the size reduction)
    r = unrolled.unrolled(net, method, x, alphas=[alpha])
    W1, Wu, Wf = layers[:3]
    log10 = math.log10(np.linalg.norm(Wf, 2)) + math.log10(np.linalg.norm(W1, 2)) \
        + (k - 1) * math.log10(np.linalg.norm(Wu, 2))
    assert r["iters"] == [k]
    assert r["log10"][0] == pytest.approx(log10, rel=1e-9)
    assert r["value"] == pytest.approx(10 ** log10, rel=1e-8)


def test_unrolled_grid_marks_divergence_and_takes_the_minimum():
    net = fc_net(seed=7, width=6, m=0.5)
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    r = unrolled.unrolled(net, "fb", x, alphas=[0.05, 0.2, 50.0])
    assert r["iters"][2] is None and r["bound"][2] is None  # FB diverges for a huge step
    assert r["value"] == min(v for v in r["bound"] if v is not None)
    with pytest.raises(ValueError):
        unrolled.unrolled(net, "newton", x)


def test_a_non_finite_bound_is_a_failure_never_a_number(compose):
    """An Inf weight makes theorem1 NaN or Inf: bounds.json lists it under `failed`, not under `upper`."""
    from src.bounds.compute import compute_bounds
    from src.models import build_model

    cfg = compose(["model=mon_fc", "model.width=6", "dataset=synthetic", "bound.methods=[theorem1]"],
                  config_name="bound")
    model = build_model(cfg.model, 1.0, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    with torch.no_grad():
        model.Wout.weight[0, 0] = float("inf")
    record = compute_bounds(model, cfg)
    assert "theorem1" not in record["upper"] and "non-finite" in record["failed"]["theorem1"]
