"""The monDEQ engine against independent float64 references."""
import re
import warnings

import pytest
import torch

from src.errors import SolverError
from src.mondeq.conv import SingleConvOperator
from src.mondeq.fc import FullyConnectedOperator
from src.mondeq.layer import MonDEQLayer
from src.mondeq.multiconv import MultiTierConvOperator
from src.mondeq.nonlinearity import Nonlinearity, ReLU
from src.mondeq.splitting import Anderson, SPLITTING_METHODS, SolverConfig, solve
from src.mondeq.networks import MonConvNet, MonFCNet

TIGHT = dict(fwd_tol=1e-12, bwd_tol=1e-12, fwd_max_iter=20000, bwd_max_iter=20000, check_every=1)


def fb_alpha(op) -> float:
    """A step for which forward-backward provably converges: m / ||I - W||^2."""
    W = op.dense_matrix()
    eye = torch.eye(W.shape[0], dtype=W.dtype)
    return op.m / torch.linalg.matrix_norm(eye - W, ord=2).item() ** 2


def fc_op(seed=0, width=12, in_dim=7, m=0.5):
    torch.manual_seed(seed)
    return FullyConnectedOperator(in_dim, width, m).double()


def conv_op(seed=0, m=0.5):
    torch.manual_seed(seed)
    op = SingleConvOperator(2, 3, 6, m).double()
    with torch.no_grad():
        op.g.fill_(1.7)
        op.h.fill_(0.6)
    return op


def multiconv_op(seed=0, m=2.0):
    torch.manual_seed(seed)
    op = MultiTierConvOperator(1, (2, 3, 2), 10, m).double()
    with torch.no_grad():
        for p in (*op.g, *op.gn, *op.h):
            p.uniform_(0.5, 2.0)
    return op


def dense_equilibrium(W: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, z_guess: torch.Tensor):
    """Solve z = mask*relu(W z + b) exactly on the active set of a guess, then check the KKT conditions."""
    out = torch.zeros_like(b)
    for i in range(b.shape[0]):
        S = (z_guess[i] > 1e-9) & (mask > 0)
        WSS = W[S][:, S]
        zS = torch.linalg.solve(torch.eye(int(S.sum()), dtype=W.dtype) - WSS, b[i, S])
        out[i, S] = zS
        pre = W @ out[i] + b[i]
        assert (zS > 0).all(), "active set is not consistent"
        assert (pre[~S & (mask > 0)] <= 1e-9).all(), "inactive units would activate"
    return out


@pytest.mark.parametrize("anderson", [0, 5])
@pytest.mark.parametrize("make_op", [fc_op, conv_op, multiconv_op])
def test_fb_and_pr_match_dense_float64_equilibrium(make_op, anderson):
    op = make_op()
    x = torch.randn(5, *op.input_shape, dtype=torch.float64)
    b = op.input_term(x).detach()
    solutions = {}
    for name, alpha in (("pr", 1.0), ("fb", fb_alpha(op))):
        layer = MonDEQLayer(op, SolverConfig(name=name, alpha=alpha, anderson=anderson, **TIGHT), "test")
        with torch.no_grad():
            solutions[name] = layer(x)
        assert layer.fwd_stats.converged
    mask = op.border_mask() if op.border_mask() is not None else torch.ones(op.state_size, dtype=torch.float64)
    exact = dense_equilibrium(op.dense_matrix().detach(), b, mask, solutions["pr"])
    for z in solutions.values():
        assert (z - exact).norm() / exact.norm() <= 1e-6


def unrolled_equilibrium(op, x, iters):
    """Plain differentiable forward-backward iteration, no implicit tricks, run to float64 precision."""
    alpha = fb_alpha(op)
    b = op.input_term(x)
    z = torch.zeros_like(b)
    for _ in range(iters):
        z_next = ReLU(op.border_mask())((1 - alpha) * z + alpha * (op.multiply(z) + b))
        done = (z_next - z).norm() <= 1e-15 * z_next.norm()
        z = z_next
        if done:
            break
    else:
        raise AssertionError("the unrolled reference did not converge")
    return z


def grads(op, x, z, weights):
    loss = (z * weights).sum() + 0.1 * (z ** 2).sum()
    params = [x] + list(op.parameters())
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method,anderson", [("pr", 0), ("fb", 0), ("pr", 5), ("fb", 5)])
@pytest.mark.parametrize("make_op,iters", [(fc_op, 5000), (conv_op, 5000), (multiconv_op, 5000)])
def test_implicit_gradient_matches_unrolled_autograd(make_op, iters, method, anderson):
    op = make_op(seed=3)
    x = torch.randn(3, *op.input_shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, op.state_size, dtype=torch.float64)
    alpha = 1.0 if method == "pr" else fb_alpha(op)
    layer = MonDEQLayer(op, SolverConfig(name=method, alpha=alpha, anderson=anderson, **TIGHT), "test")
    implicit = grads(op, x, layer(x), weights)
    reference = grads(op, x, unrolled_equilibrium(op, x, iters), weights)
    for got, want in zip(implicit, reference):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9), (got - want).abs().max()


class Clamp(Nonlinearity):
    """The proximal operator of the box [0, 1]'s indicator: a nonlinearity no operator knows of."""

    def forward(self, z):
        return z.clamp(0, 1)

    def derivative(self, pre):
        return ((pre > 0) & (pre < 1)).to(pre.dtype)


@pytest.mark.parametrize("make_op", [fc_op, conv_op])
def test_a_new_nonlinearity_needs_no_operator_change(make_op):
    """Both splittings solve z = clamp(W z + b, 0, 1) (checked directly) and agree; the implicit gradient
    matches a finite difference of the solve."""
    op = make_op(seed=5)
    x = 3 * torch.randn(2, *op.input_shape, dtype=torch.float64)
    layers = [MonDEQLayer(op, SolverConfig(name=name, alpha=alpha, **TIGHT), "test", Clamp())
              for name, alpha in (("pr", 1.0), ("fb", fb_alpha(op)))]
    with torch.no_grad():
        zs = [layer(x) for layer in layers]
        b = op.input_term(x)
    for z in zs:
        assert (z - (op.multiply(z) + b).clamp(0, 1)).norm() <= 1e-9 * z.norm()
        assert ((z > 1e-9) & (z < 1 - 1e-9)).any() and (z >= 1 - 1e-12).any()  # both kinks are in play
    torch.testing.assert_close(zs[0], zs[1], rtol=0, atol=1e-9)
    direction = torch.randn_like(x)
    xr = x.clone().requires_grad_(True)
    (layers[0](xr) ** 2).sum().backward()
    with torch.no_grad():
        h = 1e-6
        fd = ((layers[0](x + h * direction) ** 2).sum() - (layers[0](x - h * direction) ** 2).sum()) / (2 * h)
    assert (xr.grad * direction).sum().item() == pytest.approx(fd.item(), rel=1e-5)


def test_conv_adjoint_identity():
    op = conv_op(seed=1)
    z = torch.randn(4, op.state_size, dtype=torch.float64)
    y = torch.randn(4, op.state_size, dtype=torch.float64)
    lhs = (op.multiply(z) * y).sum()
    rhs = (z * op.multiply_transpose(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_conv_fft_resolvent_equals_dense_inverse(alpha):
    op = conv_op(seed=2)
    W = op.dense_matrix().detach()
    eye = torch.eye(op.state_size, dtype=torch.float64)
    dense_inv = torch.linalg.inv(eye + alpha * (eye - W))
    z = torch.randn(3, op.state_size, dtype=torch.float64)
    R = op.resolvent(alpha)
    assert torch.allclose(R.apply(z), z @ dense_inv.T, rtol=1e-10, atol=1e-12)
    assert torch.allclose(R.apply_transpose(z), z @ dense_inv, rtol=1e-10, atol=1e-12)


def test_the_stored_adjoint_spectrum_gives_the_same_numbers_as_the_strided_view():
    """SpectralResolvent stores the conjugate transposes (for speed): bit for bit what the product with
    the lazily conjugated `.mH` view gives, in float32 as the solves run."""
    from src.mondeq.spectral import apply_spectrum

    op = conv_op(seed=3).float()
    R = op.resolvent(1.0)
    z = torch.randn(5, op.state_size)
    assert R.inverse.mH.is_conj() and not R.adjoint.is_conj()
    assert torch.equal(R.apply_transpose(z), apply_spectrum(R.inverse.mH, z.view(-1, *op.shape)).flatten(1))


def test_conv_matches_direct_convolution_formula():
    """W z against F.conv2d on a circularly padded image, written out independently."""
    import torch.nn.functional as F
    op = conv_op(seed=4)
    z = torch.randn(2, *op.shape, dtype=torch.float64)
    A = op.A.weight / op.A.weight.norm()
    B = op.h * op.B.weight / op.B.weight.norm()

    def conv(v, k):
        return F.conv2d(F.pad(v, (1, 1, 1, 1), mode="circular"), k)

    def conv_t(v, k):  # adjoint of conv: flip the kernel and swap channels
        return conv(v, k.flip(-1, -2).transpose(0, 1))

    want = (1 - op.m) * z - op.g * conv_t(conv(z, A), A) + conv(z, B) - conv_t(z, B)
    assert torch.allclose(op.multiply(z.flatten(1)), want.flatten(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make_op", [fc_op, conv_op, multiconv_op])
def test_strong_monotonicity(make_op):
    op = make_op(seed=5, m=0.3)
    W = op.dense_matrix().detach()
    eye = torch.eye(W.shape[0], dtype=W.dtype)
    sym = eye - (W + W.T) / 2
    assert torch.linalg.eigvalsh(sym).min() >= op.m - 1e-6


def test_non_convergence_warns_once():
    op = fc_op()
    layer = MonDEQLayer(op, SolverConfig(name="pr", fwd_tol=1e-14, fwd_max_iter=2, check_every=1), "test")
    x = torch.randn(4, 7, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)


def test_solves_are_counted_and_nonconvergence_can_be_an_error():
    torch.manual_seed(0)
    net = MonFCNet((1, 4, 4), 10, 8, 2.0, SolverConfig(fwd_tol=1e-3))
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    net(x).sum().backward()
    net(x.detach())
    record = net.convergence()
    assert record["forward"]["solves"] == 2 and record["backward"]["solves"] == 1
    assert record["forward"]["converged_fraction"] == 1.0 and 0 < record["forward"]["worst_residual"] <= 1e-3
    net.reset_convergence()
    assert record["forward"]["samples"] == 6 and record["backward"]["samples"] == 3
    assert net.convergence()["forward"] == {"solves": 0, "samples": 0, "converged_fraction": None,
                                            "worst_residual": None}

    strict = MonFCNet((1, 4, 4), 10, 8, 2.0, SolverConfig(fwd_tol=1e-14, fwd_max_iter=2, check_every=1,
                                                         on_nonconvergence="error"))
    with pytest.raises(SolverError, match="forward solve did not converge.*on_nonconvergence=error"):
        strict(x.detach())
    lax = MonFCNet((1, 4, 4), 10, 8, 2.0, SolverConfig(fwd_tol=1e-14, fwd_max_iter=2, check_every=1))
    with pytest.warns(RuntimeWarning, match="counted in the output files"):
        lax(x.detach())
    assert lax.convergence()["forward"]["converged_fraction"] == 0.0


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_nonconvergence_error_names_config_keys_that_exist(direction):
    from src.schema import KEYS

    torch.manual_seed(0)
    never = {"fwd_tol": 1e-14, "fwd_max_iter": 2} if direction == "forward" else {"bwd_tol": 1e-14, "bwd_max_iter": 2}
    net = MonFCNet((1, 4, 4), 10, 8, 2.0, SolverConfig(check_every=1, on_nonconvergence="error", **never))
    with pytest.raises(SolverError, match=f"{direction} solve did not converge") as err:
        net(torch.randn(3, 1, 4, 4, requires_grad=True)).sum().backward()
    keys = re.findall(r"splitting\.\w+", str(err.value))
    assert f"splitting.{direction[0]}wd_max_iter" in keys and all(k in KEYS for k in keys), keys


def test_nan_input_raises_naming_model_and_m():
    torch.manual_seed(0)
    net = MonFCNet((1, 4, 4), 10, 8, 2.5, SolverConfig())
    x = torch.randn(2, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"mon_fc.*m=2\.5"):
        net(x)


def test_tune_alpha_keeps_fb_convergent():
    torch.manual_seed(0)
    net = MonFCNet((1, 4, 4), 10, 16, 1.0, SolverConfig(name="fb", alpha=1.0))
    x = torch.randn(8, 1, 4, 4)
    alpha = net.tune_alpha(x)
    assert 0 < alpha <= 1.0
    net(x)
    assert net.mon.fwd_stats.converged


def test_conv_net_shapes_and_stats():
    torch.manual_seed(0)
    net = MonConvNet((1, 8, 8), 10, 4, 1.0, SolverConfig())
    out = net(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10)
    out.sum().backward()
    stats = net.solver_stats()
    assert stats["fwd_iters"] > 0 and stats["bwd_iters"] > 0 and stats["fwd_residual"] <= 1e-3


# --- the splitting solvers: residual checks without W, Anderson acceleration ---------------
def direct_forward_residual(op, z, bias):
    return ((z - ReLU(op.border_mask())(op.multiply(z) + bias)).norm() / (1e-6 + z.norm())).item()


def direct_adjoint_residual(op, u, g, d):
    return ((u - d * (op.multiply_transpose(u) + g)).norm() / (1e-6 + u.norm())).item()


def problem(make_op, method):
    op = make_op(seed=4)
    x = torch.randn(3, *op.input_shape, dtype=torch.float64)
    alpha = 0.7 if method == "pr" else fb_alpha(op)
    with torch.no_grad():
        bias = op.input_term(x)
    resolvent = SPLITTING_METHODS[method].resolvent(op, alpha)
    return op, bias, alpha, resolvent


def never(iters):
    raise AssertionError(f"non-finite state after {iters} iterations")


@pytest.mark.parametrize("anderson", [0, 4])
@pytest.mark.parametrize("method", ["pr", "fb"])
@pytest.mark.parametrize("make_op", [fc_op, conv_op, multiconv_op])
def test_reported_residual_is_the_equilibrium_residual_of_the_returned_point(make_op, method, anderson):
    """The residual computed without W (resolvent identity, reused W z) equals the direct one."""
    op, bias, alpha, resolvent = problem(make_op, method)
    split = SPLITTING_METHODS[method]
    with torch.no_grad():
        relu = ReLU(op.border_mask())
        z, stats = solve(split.forward_map(op, relu, bias, alpha, resolvent), 1e-4, 5000, 3, anderson, never)
        assert stats.converged and 0 < stats.residual <= 1e-4
        assert stats.residual == pytest.approx(direct_forward_residual(op, z, bias), rel=1e-6)
        d = relu.derivative(op.multiply(z) + bias)
        g = torch.randn_like(z)
        u, stats = solve(split.adjoint_map(op, g, d, alpha, resolvent), 1e-4, 5000, 3, anderson, never)
        assert stats.converged and 0 < stats.residual <= 1e-4
        assert stats.residual == pytest.approx(direct_adjoint_residual(op, u, g, d), rel=1e-6)


@pytest.mark.parametrize("method", ["pr", "fb"])
def test_anderson_needs_fewer_iterations(method):
    """A slowly converging case (small m, small PR step): plain needs 483 (PR) / 5761 (FB) iterations."""
    op, bias, alpha, resolvent = problem(lambda seed: fc_op(seed=seed, width=30, m=0.05), method)
    if method == "pr":
        alpha, resolvent = 0.1, op.resolvent(0.1)
    fp = SPLITTING_METHODS[method].forward_map(op, ReLU(), bias, alpha, resolvent)
    with torch.no_grad():
        z_plain, plain = solve(fp, 1e-10, 20000, 1, 0, never)
        z_aa, accelerated = solve(fp, 1e-10, 20000, 1, 5, never)
    assert plain.converged and accelerated.converged
    assert accelerated.iters < 0.7 * plain.iters, (accelerated.iters, plain.iters)
    assert torch.allclose(z_aa, z_plain, atol=1e-8)


@pytest.mark.parametrize("bad", [dict(anderson=1), dict(anderson=-3), dict(anderson=2.5), dict(name="broyden")])
def test_bad_solver_settings_are_refused(bad):
    with pytest.raises(ValueError, match=r"splitting\.(anderson|name)=.*: allowed: "):
        SolverConfig(**bad)


def test_every_splitting_setting_has_one_declaration_and_names_come_from_the_registry(compose):
    from src import schema
    from src.mondeq.splitting import SPLITTING_KEYS, ForwardBackward, register

    assert set(SolverConfig.__dataclass_fields__) == set(SPLITTING_KEYS)
    assert all(schema.KEYS[f"splitting.{k}"] is declared for k, declared in SPLITTING_KEYS.items())
    with pytest.raises(ValueError, match="registered twice"):
        register(ForwardBackward)

    class Relaxed(ForwardBackward):
        name = "fb_relaxed"

    register(Relaxed)
    try:
        assert SolverConfig(name="fb_relaxed").name == "fb_relaxed"
        schema.check(compose(["splitting.name=fb_relaxed"]))
    finally:
        del SPLITTING_METHODS["fb_relaxed"]
    with pytest.raises(ValueError, match="splitting.name='fb_relaxed': allowed: one of "):
        SolverConfig(name="fb_relaxed")


@pytest.mark.parametrize("reg", [1e-4, 0.0])
def test_anderson_stays_finite_where_its_history_is_collinear(reg):
    """T(x) = x + d: every residual is d, the normal system singular in float32 (the 1e-8 regularisation
    of before gave NaN states). The default regularisation mixes the history; with none the solve fails
    and each sample takes the plain step."""
    d = torch.arange(1.0, 21.0).reshape(2, 10)
    accelerated = Anderson(lambda x, check: (x + d, None), 5, torch.zeros(2, 10), reg=reg)
    x = torch.zeros(2, 10)
    for _ in range(3):
        x, _ = accelerated(x, False)
    assert torch.isfinite(x).all()
    if reg == 0.0:
        assert torch.equal(x, 3 * d)


def test_a_hard_sample_does_not_hide_behind_the_easy_ones_of_its_batch():
    """The batch's residual stops the solve; the counts are per sample: one slow row of ten, still above
    the tolerance when the batch is below it, is counted unconverged, and its residual is the worst."""
    from src.mondeq.splitting import ConvergenceTally, FixedPointMap, solve

    rate = torch.tensor([0.1] * 9 + [0.9]).view(-1, 1)
    ref = torch.ones(10, 1)

    def step(x, check):
        nxt = rate * x
        if not check:
            return nxt, None
        return nxt, (torch.stack([(x - nxt).norm(dim=1), ref.norm(dim=1)]), lambda: x)

    start = torch.tensor([1000.0] * 9 + [1.0]).view(-1, 1)
    _, stats = solve(FixedPointMap(start, step), tol=1e-3, max_iter=500, check_every=1, anderson=0,
                     on_nonfinite=lambda i: None)
    assert stats.converged and stats.residual <= 1e-3
    assert (stats.samples, stats.converged_samples) == (10, 9) and stats.worst_sample_residual > 1e-3
    # by hand: an easy row's checked residual is 0.9 * 1000 * 0.1^(k-1), first <= 1e-3 at k = 7; the hard
    # row's never is
    assert stats.sample_iters.tolist() == [7] * 9 + [-1]
    assert stats.sample_residuals[9].item() == stats.worst_sample_residual
    tally = ConvergenceTally()
    tally.add(stats)
    assert tally.record() == {"solves": 1, "samples": 10, "converged_fraction": 0.9,
                              "worst_residual": stats.worst_sample_residual}


@pytest.mark.parametrize("make_op", [fc_op, conv_op, multiconv_op])
def test_the_resolvent_is_built_once_per_weight_version_and_never_stale(make_op, monkeypatch):
    """Solves on unchanged weights reuse one resolvent; an in-place change of a weight (as an optimizer
    step makes) or a load_state_dict is seen by the next solve, which then equals a fresh layer's."""
    op = make_op(seed=2)
    built = []
    real = type(op).resolvent
    monkeypatch.setattr(type(op), "resolvent",
                        lambda self, alpha: (self is op and built.append(alpha)) or real(self, alpha))
    layer = MonDEQLayer(op, SolverConfig(name="pr", alpha=1.0, **TIGHT), "test")
    x = torch.randn(2, *op.input_shape, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first) and len(built) == 1
        next(op.parameters()).mul_(0.7)
        changed = layer(x)
    assert len(built) == 2 and not torch.allclose(changed, first)
    fresh = make_op(seed=2)
    fresh.load_state_dict(op.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, MonDEQLayer(fresh, layer.solver, "fresh")(x), rtol=0, atol=1e-10)
        op.load_state_dict(make_op(seed=2).state_dict())
        torch.testing.assert_close(layer(x), first, rtol=0, atol=1e-10)
    assert len(built) == 3


def test_an_optimizer_step_invalidates_the_cached_w_of_a_forward_backward_solve():
    op = fc_op(seed=4)
    layer = MonDEQLayer(op, SolverConfig(name="fb", alpha=fb_alpha(op), **TIGHT), "test")
    x = torch.randn(3, *op.input_shape, dtype=torch.float64)
    before = layer(x)
    before.sum().backward()
    torch.optim.SGD(op.parameters(), lr=0.05).step()
    with torch.no_grad():
        after = layer(x)
        W = op.weight()
        b = op.input_term(x)
    assert not torch.allclose(after, before)
    assert (after - torch.relu(after @ W.T + b)).norm() <= 1e-9 * after.norm()


@pytest.mark.parametrize("method", ["pr", "fb"])
def test_the_backward_uses_the_alpha_of_its_forward(method):
    """alpha changed between forward and backward (as tune_alpha does) leaves the gradient as it was."""
    op = fc_op(seed=6)
    x = torch.randn(3, *op.input_shape, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, op.state_size, dtype=torch.float64)
    alpha = 1.0 if method == "pr" else fb_alpha(op)
    layer = MonDEQLayer(op, SolverConfig(name=method, alpha=alpha, **TIGHT), "test")
    want = grads(op, x, layer(x), weights)
    z = layer(x)
    layer.alpha = alpha * 7.3 if method == "pr" else alpha * 3.1
    for got, ref in zip(grads(op, x, z, weights), want):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_the_masked_reflection_is_two_prox_minus_the_identity():
    relu = ReLU(conv_op().border_mask())
    u = torch.randn(4, relu.mask.numel(), dtype=torch.float64)
    torch.testing.assert_close(relu.reflect(u), 2 * relu(u) - u, rtol=0, atol=0)
    assert (relu.mask == 0).any()
