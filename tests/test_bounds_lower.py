"""Empirical lower bounds (src/bounds/lower.py) against independent Jacobians."""
import time

import pytest
import torch
import torch.nn.functional as F

from src.baselines import DNN
from src.bounds import diag_sdp, lower, theorem1 as thm
from src.mondeq.networks import MonConvNet, MonFCNet
from src.mondeq.splitting import SolverConfig

TIGHT = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-10, bwd_tol=1e-10, fwd_max_iter=5000,
                     bwd_max_iter=5000, check_every=1)



def fc_net(seed=0, width=10, side=4, m=0.5, scale=1.0):
    torch.manual_seed(seed)
    net = MonFCNet((1, side, side), 10, width, m, TIGHT).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net


def unrolled_fb_logits(net, x, iters=4000):
    """Logits through `iters` plain forward-backward steps, differentiable by autograd (float64)."""
    op = net.mon.operator
    W = op.weight().detach()
    alpha = op.m / float(torch.linalg.matrix_norm(torch.eye(W.shape[0], dtype=W.dtype) - W, ord=2)) ** 2
    b = op.input_term(net.prepare(x))
    z = torch.zeros_like(b)
    for _ in range(iters):
        z = torch.relu((1 - alpha) * z + alpha * (z @ W.T + b))
    return net.Wout(z)


def test_implicit_jacobian_equals_autograd_through_unrolled_iterations_and_finite_differences():
    net = fc_net(seed=1, m=1.0, scale=2.0)
    torch.manual_seed(2)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    J = lower._FCJacobian(net).jacobian(x)[0]
    d = lower._FCJacobian(net).pre_activation(x)[1]
    assert 0 < int((d > 0).sum()) < 10  # a point with a non-trivial activation pattern
    with torch.no_grad():
        J_ref = torch.autograd.functional.jacobian(lambda t: unrolled_fb_logits(net, t)[0], x).reshape(10, 16)
    assert torch.allclose(J, J_ref, rtol=1e-8, atol=1e-10)
    eps = 1e-6
    fd = torch.stack([(net(x + eps * e.view_as(x)) - net(x - eps * e.view_as(x)))[0] / (2 * eps)
                      for e in torch.eye(16, dtype=torch.float64)], dim=1)
    assert torch.allclose(J, fd.detach(), rtol=1e-5, atol=1e-7)


def test_fc_gram_norms_equal_svd_and_the_generic_autograd_path():
    net = fc_net(seed=3, m=0.3, scale=1.5)
    x = 2 * torch.randn(64, 1, 4, 4, dtype=torch.float64)
    fc = lower._FCJacobian(net)
    svd = torch.linalg.matrix_norm(fc.jacobian(x), ord=2)
    assert torch.allclose(fc.norms(x), svd, rtol=1e-10)
    with lower._tight_solver(net, tol=1e-11):
        generic = lower._autograd_norms(net, x)  # through the layer's own implicit backward
    assert torch.allclose(generic, svd, rtol=1e-7)
    res = lower.grad_norm(net, x, ascent_steps=0)
    assert res["method"] == "implicit_fc" and res["value"] == pytest.approx(float(svd.max()), rel=1e-12)


def test_one_unit_mondeq_gradient_is_exact():
    u, a, w, m = 1.5, 0.8, -2.0, 0.5
    net = MonFCNet((1, 1, 1), 1, 1, m, TIGHT).double()
    with torch.no_grad():
        net.mon.operator.U.weight.fill_(u)
        net.mon.operator.U.bias.fill_(0.3)
        net.mon.operator.A.weight.fill_(a)
        net.Wout.weight.fill_(w)
    x = torch.tensor([-2.0, -1.0, 0.5, 1.0], dtype=torch.float64).view(-1, 1, 1, 1)
    norms = lower._FCJacobian(net).norms(x)
    # u x + b > 0 only for the last two points; there |dz/dx| = |u| / (m + a^2)
    assert torch.allclose(norms, torch.tensor([0, 0, 1, 1], dtype=torch.float64) * abs(w * u) / (m + a * a))
    assert lower.grad_norm(net, x, ascent_steps=3)["value"] == pytest.approx(abs(w * u) / (m + a * a))


def test_conv_mondeq_jacobian_matches_dense_implicit_formula():
    torch.manual_seed(4)
    net = MonConvNet((1, 6, 6), 10, 2, 0.5, TIGHT).double()
    op = net.mon.operator
    with torch.no_grad():
        op.g.fill_(1.2)
        op.h.fill_(0.8)
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    W, U = op.dense_matrix().detach(), op.dense_input_matrix().detach()
    n = op.state_size
    R = net.readout(torch.eye(n, dtype=torch.float64)).T
    E = F.pad(torch.eye(36, dtype=torch.float64).view(36, 1, 6, 6), (1, 1, 1, 1)).flatten(1).T  # zero padding
    with torch.no_grad():
        z = net.mon(net.prepare(x))
        v = z @ W.T + op.input_term(net.prepare(x))
    ref = []
    for i in range(len(x)):
        D = torch.diag(((v[i] > 0).double()) * op.border_mask())
        J = net.Wout.weight.detach() @ R @ torch.linalg.solve(torch.eye(n, dtype=torch.float64) - D @ W, D @ U @ E)
        ref.append(torch.linalg.matrix_norm(J, ord=2))
    with lower._tight_solver(net):
        got = lower._autograd_norms(net, x)
    assert torch.allclose(got, torch.stack(ref), rtol=1e-6)
    res = lower.grad_norm(net, x[:2], ascent_steps=0)
    assert res["method"] == "autograd_implicit"
    assert res["value"] == pytest.approx(float(max(ref[:2])), rel=1e-6)
    assert net.mon.solver == TIGHT  # the temporary solver settings were restored


def test_dnn_jacobian_matches_product_of_masked_weights():
    torch.manual_seed(5)
    net = DNN((1, 4, 4), 10, depth=3, width=12).double()
    x = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    Ws = [m.weight.detach() for m in net.linear_layers()]
    ref = []
    for xi in x.flatten(1):
        h, J = xi, torch.eye(16, dtype=torch.float64)
        for Wl, layer in zip(Ws[:-1], net.linear_layers()[:-1]):
            pre = Wl @ h + layer.bias.detach()
            D = torch.diag((pre > 0).double())
            J, h = D @ Wl @ J, torch.relu(pre)
        ref.append(torch.linalg.matrix_norm(Ws[-1] @ J, ord=2))
    got = lower.grad_norm(net, x, ascent_steps=0)
    assert got["method"] == "autograd"
    assert got["value"] == pytest.approx(float(max(ref)), rel=1e-10)


@pytest.mark.parametrize("kind", ["fc", "dnn", "conv"])
def test_ascent_keeps_an_attained_value_inside_the_box(kind):
    torch.manual_seed(6)
    if kind == "fc":
        net, shape = fc_net(seed=6, m=0.5, scale=2.0), (1, 4, 4)
    elif kind == "dnn":
        net, shape = DNN((1, 4, 4), 10, depth=3, width=12).double(), (1, 4, 4)
    else:
        net, shape = MonConvNet((1, 6, 6), 10, 2, 0.5, TIGHT).double(), (1, 6, 6)
    low, high = -1.0, 2.0
    n, steps, top = (40, 8, 8) if kind != "conv" else (6, 2, 2)  # conv: 11 implicit solves per point
    x = low + (high - low) * torch.rand(n, *shape, dtype=torch.float64)
    res = lower.grad_norm(net, x, ascent_steps=steps, ascent_top=top, box=(low, high))
    p = res["argmax_point"]
    assert p.shape == shape and float(p.min()) >= low and float(p.max()) <= high
    assert res["value"] >= res["value_points"]
    again = lower.grad_norm(net, p[None], ascent_steps=0)["value"]
    assert again == pytest.approx(res["value"], rel=1e-6)  # the reported value is a real Jacobian norm


def test_ascent_finds_larger_jacobians_than_sampling_alone():
    net = fc_net(seed=7, m=0.2, scale=2.0, width=12)
    torch.manual_seed(7)
    x = -1 + 3 * torch.rand(200, 1, 4, 4, dtype=torch.float64)
    res = lower.grad_norm(net, x, ascent_steps=5, box=(-1.0, 2.0))
    assert res["value"] > 1.03 * res["value_points"]
    assert res["argmax_index"] == -1


def test_crossings_step_into_the_neighbouring_linear_regions():
    net = fc_net(seed=10, m=0.5, scale=2.0)
    fc = lower._FCJacobian(net)
    x = 2 * torch.randn(20, 1, 4, 4, dtype=torch.float64)
    _, v, _ = fc.pre_activation(x)
    moved = fc.crossings(x)                                   # (20, h, 1, 4, 4)
    _, v_new, _ = fc.pre_activation(moved.flatten(0, 1))
    v_new = v_new.view(20, 10, 10)
    flipped = torch.sign(v_new.diagonal(dim1=1, dim2=2)) == -torch.sign(v)  # unit i changed side
    assert flipped.double().mean() > 0.5  # (other units may switch on the way; moving away flips none)
    step = (moved - x[:, None]).flatten(2).norm(dim=2)
    assert float(step.median()) < 2.0  # and only just across: a short move


def test_lower_bounds_stay_below_the_upper_bounds():
    for seed, m in ((8, 0.5), (9, 5.0)):
        net = fc_net(seed=seed, m=m, scale=2.0)
        x = 3 * torch.randn(3000, 1, 4, 4, dtype=torch.float64)
        low = lower.grad_norm(net, x, ascent_steps=15, box=(-6.0, 6.0))["value"]
        assert low <= diag_sdp.sdp_diag(net)["value"] * (1 + 1e-9)
        assert low <= thm.theorem1(net)["value"]
        assert low > 0.3 * diag_sdp.sdp_diag(net)["value"]  # and the search is not vacuous


def test_sample_points_mixes_test_images_and_uniform_noise_in_the_box():
    test_x = torch.randn(30, 1, 4, 4)
    low, high = torch.tensor(-0.5).view(1, 1, 1), torch.tensor(2.5).view(1, 1, 1)
    pts = lower.sample_points(test_x, 50, low, high, seed=1)
    assert pts.shape == (50, 1, 4, 4)
    first = pts[:25]
    assert all(any(torch.equal(p, t) for t in test_x) for p in first)  # 25 distinct test images
    assert len({tuple(p.flatten().tolist()) for p in first}) == 25
    noise = pts[25:]
    assert float(noise.min()) >= -0.5 and float(noise.max()) <= 2.5 and float(noise.std()) > 0.5
    assert torch.equal(pts, lower.sample_points(test_x, 50, low, high, seed=1))
    assert lower.sample_points(test_x, 100, -1.0, 1.0).shape[0] == 100  # only 30 test images: 70 noise


def test_ten_thousand_fc_points_in_well_under_a_minute():
    torch.manual_seed(0)
    net = MonFCNet((1, 28, 28), 10, 40, 1.0, SolverConfig())
    x = torch.rand(10_000, 1, 28, 28) * 3.2 - 0.42
    start = time.perf_counter()
    res = lower.grad_norm(net, x, box=(-0.42, 2.78))
    assert time.perf_counter() - start < 60
    assert res["n_points"] == 10_000 and res["value"] > 0


def test_ascent_steps_that_leave_the_box_are_clipped_back_into_it():
    """Steps far larger than the box: every candidate lands outside it unless clipped."""
    net = fc_net(seed=3, m=0.5, scale=2.0)
    low, high = 0.0, 0.05
    x = low + (high - low) * torch.rand(20, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    res = lower.grad_norm(net, x, ascent_steps=4, ascent_top=8, box=(low, high), step_size=50.0)
    p = res["argmax_point"]
    assert float(p.min()) >= low and float(p.max()) <= high
