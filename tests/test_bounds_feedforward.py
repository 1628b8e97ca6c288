"""Lipschitz bounds of feed-forward nets: naive, AutoLip, SeqLip, LipSDP.

Every check compares against an independent computation: dense float64
matrices and SVDs, closed forms worked out by hand (in the comments), brute
force over activation regions, or autograd Jacobians.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from src.baselines import CNN, DNN
from src.bounds import feedforward as ff
from src.bounds import lipsdp as lsdp
from src.bounds import lower
from tests.references import brute_force_pattern, seqlip_exact

D = torch.float64




def dense_matrix(module: nn.Module, in_shape) -> torch.Tensor:
    """(n_out, n_in) matrix of a bias-free layer, through torch's own forward on basis vectors."""
    n = math.prod(in_shape)
    w = module.weight.detach().to(D)
    eye = torch.eye(n, dtype=D).reshape(n, *in_shape)
    if isinstance(module, nn.Linear):
        y = eye.reshape(n, -1) @ w.T
    else:
        y = nn.functional.conv2d(eye, w, None, module.stride, module.padding) if module.padding_mode == "zeros" \
            else module._conv_forward(eye, w, None)
    return y.reshape(n, -1).T


def spec(m) -> float:
    return float(torch.linalg.matrix_norm(torch.as_tensor(m, dtype=D), ord=2))


def dnn_from_weights(weights, in_shape=None) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Flatten()]
    for i, w in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0]).to(D)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w, dtype=D))
        mods += [lin] + ([nn.ReLU()] if i < len(weights) - 1 else [])
    net = nn.Sequential(*mods)
    net.in_shape = in_shape or (weights[0].shape[1],)
    return net


def jac_norms(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Jacobian spectral norm at each point, by autograd's full Jacobian (independent of src/bounds/lower.py's
    vector-Jacobian products and Gram matrix)."""
    out = []
    for xi in x:
        j = torch.autograd.functional.jacobian(lambda z: net(z[None])[0], xi.to(D))
        out.append(spec(j.reshape(j.shape[0], -1)))
    return torch.tensor(out, dtype=D)


def he_dnn(depth, width, in_shape=(1, 6, 6), seed=0):
    torch.manual_seed(seed)
    m = DNN(in_shape, 10, depth=depth, width=width).to(D)
    for lin in m.linear_layers():
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
    return m


# --------------------------------------------------------------------------- spectral norms of layers

# G (grid of the dominating circular conv) worked out by hand from conv_fft_norm's rule
# G = smallest multiple of s with G >= p + H and G >= s (H_out - 1) + k:
#   H=5, s=1, p=1, k=3: H_out=5, max(6, 7) = 7;   H=5, s=2: H_out=3, max(6, 7) -> 8
#   H=6, s=2, p=1, k=3: H_out=3, max(7, 7) -> 8;  H=4, s=1, p=0, k=3: H_out=2, max(4, 4) = 4
@pytest.mark.parametrize("h,stride,pad,grid", [(5, 1, 1, 7), (5, 2, 1, 8), (6, 2, 1, 8), (4, 1, 0, 4)])
def test_conv_fft_norm_is_the_norm_of_the_dominating_circular_conv(h, stride, pad, grid):
    torch.manual_seed(h + stride)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=pad)
    # the circular conv on the G x G grid, dense through torch (padding 1 circular = a shift of it)
    circ = nn.Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode="circular", bias=False)
    with torch.no_grad():
        circ.weight.copy_(conv.weight)
    exact_circ = spec(dense_matrix(circ, (3, grid, grid)))
    assert ff.conv_fft_norm(conv, (h, h)) == pytest.approx(exact_circ, rel=1e-10)


@pytest.mark.parametrize("cin,cout,k,stride,pad,hw", [
    (1, 4, 3, 1, 1, (7, 7)), (3, 5, 3, 2, 1, (7, 6)), (2, 3, 5, 2, 2, (9, 8)), (4, 2, 3, 1, 0, (6, 5)),
    (2, 2, 3, 3, 1, (8, 7))])
def test_conv_fft_norm_bounds_zero_padded_conv(cin, cout, k, stride, pad, hw):
    torch.manual_seed(cin * 7 + k)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
    exact = spec(dense_matrix(conv, (cin, *hw)))
    bound = ff.conv_fft_norm(conv, hw)
    assert exact <= bound * (1 + 1e-12)
    assert bound <= 1.6 * exact  # valid and not absurdly loose


@pytest.mark.parametrize("layer,shape", [(nn.Linear(30, 20), (30,)), (nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
                                         (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 7, 7))])
def test_power_iteration_converges_to_svd_from_below(layer, shape):
    torch.manual_seed(1)
    layer.reset_parameters()
    f = ff.linear_maps(nn.Sequential(layer), shape)[0]
    exact = spec(dense_matrix(layer, shape))
    res = ff.power_iteration(f, tol=1e-11)
    assert res["converged"]
    assert res["sigma"] <= exact * (1 + 1e-12)
    assert res["sigma"] == pytest.approx(exact, rel=1e-8)


# dense SVD, Gram eigendecomposition, block subspace iteration
@pytest.mark.parametrize("dense_limit,gram_limit", [(10**6, 0), (0, 4096), (0, 0)])
@pytest.mark.parametrize("stride,chan", [(1, 2), (2, 6)])  # n_in < n_out and n_in > n_out
def test_top_singular_triplets_match_dense_svd(dense_limit, gram_limit, stride, chan):
    torch.manual_seed(2)
    conv = nn.Conv2d(chan, 3, 3, stride=stride, padding=1)
    shape = (chan, 6, 6)
    a = dense_matrix(conv, shape)
    s_true = torch.linalg.svdvals(a)
    res = ff.top_singular(ff.linear_maps(nn.Sequential(conv), shape)[0], k=5, gram_limit=gram_limit, dense_limit=dense_limit,
                          iters=400, tol=1e-12)
    assert torch.allclose(res["S"], s_true[:5], rtol=1e-6)
    assert bool((res["S"] <= s_true[:5] * (1 + 1e-10)).all())  # Ritz values never overshoot
    assert torch.allclose(a @ res["V"], res["U"] * res["S"], atol=1e-6 * float(s_true[0]))
    assert torch.allclose(res["U"].T @ res["U"], torch.eye(5, dtype=D), atol=1e-6)


def test_linear_maps_rejects_what_the_bounds_do_not_cover():
    with pytest.raises(ValueError, match="unsupported"):
        ff.linear_maps(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2)), (1, 6, 6))
    with pytest.raises(ValueError, match="without a ReLU"):
        ff.linear_maps(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="in_shape"):
        ff.linear_maps(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="end with a linear"):
        ff.linear_maps(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))


# --------------------------------------------------------------------------- closed forms

def diagonal_net(a, c):
    """f_i(x) = c_i relu(a_i x_i): Jacobian diag(c_i a_i [a_i x_i > 0]) so L = max_i |a_i c_i|."""
    return dnn_from_weights([np.diag(a), np.diag(c)], in_shape=(1, 2, 2))


def test_depth2_diagonal_net_closed_forms():
    a, c = np.array([3.0, -0.5, 1.0, 2.0]), np.array([0.25, 4.0, -1.5, 1.0])
    net = diagonal_net(a, c)
    true_l = np.max(np.abs(a * c))                      # 2.0, from units 1 and 3
    assert ff.naive(net)["value"] == pytest.approx(3.0 * 4.0, rel=1e-12)   # max|a| max|c|
    assert ff.autolip(net)["value"] == pytest.approx(12.0, rel=1e-9)
    # LipSDP-Neuron decouples into 2x2 LMIs [[rho, -t a], [-t a, 2t - c^2]] >= 0:
    # rho >= t^2 a^2 / (2t - c^2), minimised at t = c^2: rho = a^2 c^2, so it is exact here.
    res = lsdp.lipsdp(net, "neuron", solvers=("SCS",))
    assert res["certified"] and res["value"] == pytest.approx(true_l, rel=1e-5)
    assert res["value"] >= true_l * (1 - 1e-12)
    # SeqLip on 2 layers is max_sigma ||C diag(sigma) A|| = max |a_i c_i| (sigma = one unit)
    assert seqlip_exact(net)["value"] == pytest.approx(true_l, rel=1e-10)
    # the lower bound reaches it at a point where unit 0 is active (a_0 x_0 > 0)
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]], dtype=D)
    assert lower.grad_norm(net, x, ascent_steps=0)["value"] == pytest.approx(np.max(np.abs(a * c * (a > 0))),
                                                                          rel=1e-12)


def _layer_lipsdp_1d(a, b):
    """LipSDP-Layer of x -> b^T relu(diag(a) x) by hand: with T = tau I the Schur complement of
    rho I gives diag(2 tau - tau^2 a_i^2 / rho) >= b b^T, i.e. sum_i b_i^2 / (2 tau - tau^2 a_i^2 / rho) <= 1
    (all denominators > 0). Bisect on rho, minimising the left side over tau (a convex function)."""
    from scipy.optimize import minimize_scalar

    def feasible(rho):  # each term b_i^2 / (2 tau - tau^2 a_i^2 / rho) is convex where positive
        hi = 2 * rho / np.max(a ** 2)

        def slack(tau):
            d = 2 * tau - tau ** 2 * a ** 2 / rho
            return 1e300 if np.any(d <= 0) else np.sum(b ** 2 / d)
        return minimize_scalar(slack, bounds=(0, hi), method="bounded", options={"xatol": 1e-13 * hi}).fun <= 1
    lo, hi = 0.0, float(np.sum(b ** 2) * np.max(a ** 2)) * 4
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return math.sqrt(hi)


def test_lipsdp_one_hidden_layer_hand_values():
    # f(x) = b^T relu(diag(a) x): gradient (b_i a_i [a_i x_i > 0])_i, so L = sqrt(sum a_i^2 b_i^2)
    # (all units active at x = sign(a)). Neuron: diag(2 t_i - t_i^2 a_i^2 / rho) >= b b^T holds iff
    # sum b_i^2 / d_i <= 1 with d_i <= rho / a_i^2 (at t_i = rho / a_i^2), so rho >= sum a_i^2 b_i^2: exact.
    a, b = np.array([1.0, 3.0, -2.0]), np.array([1.0, 1.0, 0.5])
    ws = [np.diag(a), b[None, :]]
    true_l = math.sqrt(np.sum(a ** 2 * b ** 2))
    neuron = lsdp.lipsdp(ws, "neuron", solvers=("SCS",))
    layer = lsdp.lipsdp(ws, "layer", solvers=("SCS",))
    assert neuron["value"] == pytest.approx(true_l, rel=1e-5) and neuron["value"] >= true_l * (1 - 1e-12)
    hand = _layer_lipsdp_1d(a, b)
    assert hand > true_l * 1.01  # one multiplier per layer is strictly looser here
    assert layer["value"] == pytest.approx(hand, rel=1e-4)
    assert layer["value"] >= hand * (1 - 1e-7)  # certified: never below the true optimum


def _reference_lmi(weights, rho, t):
    """[A;B]^T [[0, T], [T, -2T]] [A;B] + blkdiag(-rho I, 0, .., W_l^T W_l), exactly as REFERENCE.md."""
    hidden = weights[:-1]
    n0, sizes = hidden[0].shape[1], [w.shape[0] for w in hidden]
    big_n = sum(sizes)
    a = np.zeros((big_n, n0 + big_n))
    r = c = 0
    for w in hidden:
        a[r:r + w.shape[0], c:c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    b = np.hstack([np.zeros((big_n, n0)), np.eye(big_n)])
    tm = np.diag(np.concatenate(t))
    q = np.block([[np.zeros((big_n, big_n)), tm], [tm, -2 * tm]])
    ab = np.vstack([a, b])
    m = ab.T @ q @ ab
    m[:n0, :n0] -= rho * np.eye(n0)
    m[-sizes[-1]:, -sizes[-1]:] += weights[-1].T @ weights[-1]
    return m


def test_certificate_is_the_smallest_rho_of_the_reference_lmi():
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((5, 7)) / 3, rng.standard_normal((4, 5)) / 3, rng.standard_normal((6, 4)) / 3,
          rng.standard_normal((2, 6)) / 3]
    t = [rng.uniform(0.5, 2.0, w.shape[0]) * 4 for w in ws[:-1]]
    cert = lsdp.certify(ws, t)
    assert cert["shift"] == 0.0 and cert["rho"] is not None
    assert np.linalg.eigvalsh(_reference_lmi(ws, cert["rho"], t))[-1] <= 1e-9          # feasible
    assert np.linalg.eigvalsh(_reference_lmi(ws, cert["rho"] * (1 - 1e-6), t))[-1] > 0  # and smallest


def test_certificate_repairs_slightly_infeasible_multipliers():
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((5, 5)), rng.standard_normal((5, 5)), rng.standard_normal((3, 5))]
    ws = [w / np.linalg.norm(w, 2) for w in ws]
    t = [np.full(5, 1e-3), np.full(5, 1e-3)]  # too small: 2 T_1 - W_2^T W_2 is indefinite
    cert = lsdp.certify(ws, t)
    assert cert["rho"] is not None and cert["shift"] > 0
    d = lsdp._repair_direction(ws)
    shifted = [v + cert["shift"] * dv for v, dv in zip(t, d)]
    assert np.linalg.eigvalsh(_reference_lmi(ws, cert["rho"], shifted))[-1] <= 1e-9


# --------------------------------------------------------------------------- LipSDP on random nets

def random_weights(seed, dims):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, a)) * math.sqrt(2 / a) for a, b in zip(dims[:-1], dims[1:])]


def test_lipsdp_formulations_agree_and_bracket():
    ws = random_weights(5, [12, 6, 5, 7, 3])
    net = dnn_from_weights(ws)
    vals = {}
    for variant in lsdp.VARIANTS:
        for form in lsdp.FORMULATIONS:
            for reduce in (True, False):
                res = lsdp.lipsdp(ws, variant, form, reduce=reduce, solvers=("SCS",))
                assert res["status"] == "optimal" and res["certified"], res
                vals[variant, form, reduce] = res["value"]
        ref = vals[variant, "dense", False]  # plain: one LMI, no input reduction
        for key, v in vals.items():
            if key[0] == variant:
                assert v == pytest.approx(ref, rel=1e-4), key
    assert vals["neuron", "chordal", True] <= vals["layer", "chordal", True] * (1 + 1e-5)
    assert vals["layer", "chordal", True] <= ff.naive(net)["value"]
    x = torch.randn(3000, 12, dtype=D, generator=torch.Generator().manual_seed(0))
    lower = float(jac_norms(net, x[:300]).max())
    assert lower <= vals["neuron", "chordal", True]


def test_lipsdp_unscaled_weights_match_scaled_net():
    # homogeneity: scaling W_k by c_k scales LipSDP by prod c_k (the solver sees the same problem)
    ws = random_weights(6, [8, 6, 6, 4])
    base = lsdp.lipsdp(ws, "neuron", solvers=("SCS",))["value"]
    scaled = lsdp.lipsdp([ws[0] * 1e3, ws[1] * 1e-2, ws[2] * 7], "neuron", solvers=("SCS",))["value"]
    assert scaled == pytest.approx(base * 1e3 * 1e-2 * 7, rel=2e-4)  # both certified at SCS eps 1e-6


def test_lipsdp_reports_failed_solve_as_none():
    ws = random_weights(7, [10, 8, 8, 3])
    res = lsdp.lipsdp(ws, "neuron", solvers=("SCS",), scs_options={"max_iters": 3})
    assert res["value"] is None and res["sdp_value"] is None and not res["certified"]
    assert res["status"] != "optimal" and res["sdp_report"]["solver"] == "SCS"


def test_lipsdp_default_solver_report():
    res = lsdp.lipsdp(random_weights(8, [5, 4, 2]), "layer")
    rep = res["sdp_report"]
    assert rep["solver"] in ("MOSEK", "SCS") and res["value"] is not None
    if rep["solver"] == "SCS":  # unlicensed MOSEK must be reported as skipped, never silently
        assert "MOSEK" in rep["skipped"]


def test_lipsdp_trivial_cases():
    w = np.array([[3.0, 4.0]])
    assert lsdp.lipsdp([w])["value"] == pytest.approx(5.0)  # linear map: its norm
    assert lsdp.lipsdp([np.zeros((3, 2)), np.ones((1, 3))])["value"] == 0.0
    with pytest.raises(ValueError, match="alternating"):
        lsdp.lipsdp(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)))


@pytest.mark.slow
def test_lipsdp_width40_chordal_matches_plain_and_is_valid():
    net = he_dnn(depth=5, width=40, in_shape=(1, 28, 28))
    ch = lsdp.lipsdp(net, "neuron", "chordal", solvers=("SCS",))
    de = lsdp.lipsdp(net, "neuron", "dense", solvers=("SCS",))
    assert ch["status"] == de["status"] == "optimal"
    assert ch["value"] == pytest.approx(de["value"], rel=1e-3)
    assert ch["value"] <= ff.naive(net)["value"]
    x = torch.randn(200, 1, 28, 28, dtype=D, generator=torch.Generator().manual_seed(0))
    assert float(jac_norms(net, x).max()) <= ch["value"]


# --------------------------------------------------------------------------- SeqLip / AutoLip

def test_seqlip_exact_equals_brute_force_over_activation_regions():
    # 1 hidden layer of 4 units, input 6 >= 4 with W_0 of full row rank: every activation pattern
    # sigma is the pattern of some x (x = W_0^+ (s - b), s_j = +-1), so the true Lipschitz constant
    # is max_sigma ||W_1 diag(sigma) W_0||, measured here by autograd at one point per region.
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).to(D)
    w0, b0 = net[0].weight.detach(), net[0].bias.detach()
    pts = []
    for sigma in itertools.product((0.0, 1.0), repeat=4):
        s = torch.tensor(sigma, dtype=D) * 2 - 1
        pts.append(torch.linalg.pinv(w0) @ (s - b0))
        assert torch.equal((net[0](pts[-1]) > 0).to(D), torch.tensor(sigma, dtype=D))
    brute = float(jac_norms(net, torch.stack(pts)).max())
    exact = seqlip_exact(net)
    assert exact["guaranteed"]
    assert exact["value"] == pytest.approx(brute, rel=1e-10)
    greedy = ff.seqlip_greedy(net)
    assert not greedy["guaranteed"]
    assert greedy["value"] <= exact["value"] * (1 + 1e-12)
    assert greedy["value"] <= ff.autolip(net)["value"] * (1 + 1e-9)


def test_seqlip_exact_depth3_matches_the_pair_formula():
    # d = 3: L <= max_s ||S2^1/2 V2^T D(s) U1 S1|| * max_s ||S3 V3^T D(s) U2 S2^1/2|| (REFERENCE.md),
    # evaluated here with numpy's SVD and explicit enumeration
    ws = random_weights(10, [7, 5, 4, 3])
    net = dnn_from_weights(ws)
    svd = [np.linalg.svd(w, full_matrices=False) for w in ws]

    def pair(left, right, first, last):
        (_, s2, v2t), (u1, s1, _) = left, right
        a = np.diag(s2 if last else np.sqrt(s2)) @ v2t
        b = u1 @ np.diag(s1 if first else np.sqrt(s1))
        return max(np.linalg.norm(a @ np.diag(sig) @ b, 2)
                   for sig in itertools.product((0, 1), repeat=a.shape[1]))
    expected = pair(svd[1], svd[0], True, False) * pair(svd[2], svd[1], False, True)
    res = seqlip_exact(net)
    assert res["value"] == pytest.approx(expected, rel=1e-9)
    x = torch.randn(500, 7, dtype=D, generator=torch.Generator().manual_seed(1))
    assert float(jac_norms(net, x[:200]).max()) <= res["value"]


def test_greedy_pattern_variants_never_exceed_brute_force():
    rng = np.random.default_rng(11)
    for trial in range(5):
        a, b = rng.standard_normal((4, 12)), rng.standard_normal((12, 5))
        brute = brute_force_pattern(a, b)["value"]
        start = np.linalg.norm(a @ b, 2)
        for exact in (True, False):
            g = ff.greedy_pattern(a, b, exact=exact)
            assert start * (1 - 1e-12) <= g["value"] <= brute * (1 + 1e-12)
            assert g["value"] == pytest.approx(np.linalg.norm(a @ np.diag(g["sigma"]) @ b, 2), rel=1e-12)


@pytest.mark.parametrize("kind", ["dnn", "cnn"])
def test_bounds_order_on_small_nets(kind):
    torch.manual_seed(12)
    if kind == "dnn":
        net, shape = he_dnn(depth=4, width=12, in_shape=(1, 5, 5)), (1, 5, 5)
    else:
        shape = (1, 8, 8)
        net = CNN(shape, 10, depth=2).to(D)
    nv, al = ff.naive(net, shape), ff.autolip(net, shape)
    sg = ff.seqlip_greedy(net, shape, n_sv=50)
    x = torch.randn(200, *shape, dtype=D, generator=torch.Generator().manual_seed(2))
    low = lower.grad_norm(net, x, ascent_steps=0)
    assert low["value"] == pytest.approx(float(jac_norms(net, x).max()), rel=1e-9)
    assert nv["guaranteed"] and not al["guaranteed"] and not sg["guaranteed"]
    assert low["value"] <= sg["value"] <= al["value"] * (1 + 1e-6)
    assert al["value"] <= nv["value"] * (1 + 1e-9)
    if kind == "dnn":  # Linear layers only: AutoLip is the exact product of norms
        assert al["value"] == pytest.approx(nv["value"], rel=1e-7)
        ws = lsdp.dnn_weights(net)
        assert sg["spectral_product"] == pytest.approx(math.prod(spec(w) for w in ws), rel=1e-8)
    else:  # conv factors: power iteration <= dense norm <= FFT bound
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        exact0 = spec(dense_matrix(convs[0], shape))
        assert al["layer_norms"][0] == pytest.approx(exact0, rel=1e-6)
        assert exact0 <= nv["layer_norms"][0]


def test_the_lower_bound_matches_the_explicit_product_of_the_active_pieces():
    ws = random_weights(13, [6, 5, 4])
    net = dnn_from_weights(ws)
    x = torch.randn(5, 6, dtype=D, generator=torch.Generator().manual_seed(3))
    expected = 0.0
    for xi in x.numpy():
        d = (ws[0] @ xi + net[1].bias.detach().numpy() > 0).astype(float)
        expected = max(expected, np.linalg.norm(ws[1] @ np.diag(d) @ ws[0], 2))
    assert lower.grad_norm(net, x, ascent_steps=0)["value"] == pytest.approx(expected, rel=1e-12)
