"""MultiTierConvOperator: W against the original formula, adjoints, resolvent, gradients."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from src.mondeq.multiconv import MultiTierConvOperator

CH = (2, 3, 4)


def make_op(image_size=10, channels=CH, m=0.3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    op = MultiTierConvOperator(2, channels, image_size, m=m).to(dtype)
    with torch.no_grad():  # non-unit scalars exercise every normalisation
        for p in [*op.g, *op.gn, *op.h]:
            p.uniform_(0.4, 2.5)
    return op


# ---- an independent transcription of MONMultiConv.multiply / multiply_transpose
def cpad(x):
    return F.pad(x, (1, 1, 1, 1), mode="circular")


def uncpad(x):
    return x[:, :, 2:-2, 2:-2]


def unstride(x):
    x = x.clone()
    x[:, :, :, -1] += x[:, :, :, 0]
    x[:, :, -1, :] += x[:, :, 0, :]
    return x[:, :, 1:, 1:]


def ref_weights(op):
    def nrm(w):
        return w / w.reshape(-1).norm()
    k = len(op.channels)
    A = [op.g[i].sqrt() * nrm(op.A0[i].weight) for i in range(k)]
    B = [op.h[i] * nrm(op.B0[i].weight) for i in range(k)]
    An = [op.gn[i].sqrt() * nrm(op.A_n0[i].weight) for i in range(k - 1)]
    return A, B, An


def ref_split(op, z):
    out, start = [], 0
    for c, s in zip(op.channels, op.sides):
        out.append(z[:, start:start + c * s * s].reshape(-1, c, s, s))
        start += c * s * s
    return out


def ref_multiply(op, z, transpose=False):
    A, B, An = ref_weights(op)
    zs, k, m = ref_split(op, z), len(op.channels), op.m
    out = []
    for i in range(k):
        z1 = zs[i]
        ATA = uncpad(F.conv_transpose2d(cpad(F.conv2d(cpad(z1), A[i])), A[i]))
        Bz = F.conv2d(cpad(z1), B[i])
        BTz = uncpad(F.conv_transpose2d(cpad(z1), B[i]))
        o = (1 - m) * z1 - ATA + (Bz - BTz if not transpose else BTz - Bz)
        if i < k - 1:
            o = o - unstride(F.conv_transpose2d(F.conv2d(cpad(z1), An[i], stride=2), An[i], stride=2))
        if not transpose and i > 0:
            An_z0 = F.pad(F.conv2d(cpad(zs[i - 1]), An[i - 1], stride=2), (0, 1, 0, 1))
            o = o - 2 * uncpad(F.conv_transpose2d(cpad(An_z0), A[i]))
        if transpose and i < k - 1:
            A2z2 = F.conv2d(cpad(zs[i + 1]), A[i + 1])[:, :, :-1, :-1]
            o = o - 2 * unstride(F.conv_transpose2d(A2z2, An[i], stride=2))
        out.append(o.reshape(o.shape[0], -1))
    return torch.cat(out, 1)


@pytest.mark.parametrize("image_size,channels", [(10, CH), (6, CH), (8, (2, 3)), (10, (3,))])
def test_multiply_matches_original_formula(image_size, channels):
    op = make_op(image_size, channels)
    z = torch.randn(3, op.state_size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(op.multiply(z), ref_multiply(op, z), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op.multiply_transpose(z), ref_multiply(op, z, True),
                                   rtol=1e-12, atol=1e-12)


def test_input_term_and_layout():
    op = make_op()
    x = torch.randn(3, *op.input_shape, dtype=torch.float64)
    with torch.no_grad():
        b = op.input_term(x)
        s0 = op.channels[0] * op.sides[0] ** 2
        ref = F.conv2d(cpad(x), op.U.weight, op.U.bias).reshape(3, -1)
        torch.testing.assert_close(b[:, :s0], ref, rtol=0, atol=1e-12)
        assert b[:, s0:].abs().max() == 0
    assert op.sides == (10, 6, 4) and op.state_size == 2 * 100 + 3 * 36 + 4 * 16
    mask = ref_split(op, op.border_mask()[None])
    for t in mask:
        assert t[..., 0, :].abs().sum() == 0 and t[..., -1, :].abs().sum() == 0
        assert t[..., :, 0].abs().sum() == 0 and t[..., :, -1].abs().sum() == 0
        assert (t[..., 1:-1, 1:-1] == 1).all()


def test_state_dict_keys_and_sides():
    op = MultiTierConvOperator(1, (32, 64, 128), 30, m=1.0)
    assert op.sides == (30, 16, 9)
    assert MultiTierConvOperator(3, (32, 64, 128), 34).sides == (34, 18, 10)
    keys = {"U.weight", "U.bias"}
    for i in range(3):
        keys |= {f"A0.{i}.weight", f"B0.{i}.weight", f"g.{i}", f"h.{i}"}
    for i in range(2):
        keys |= {f"A_n0.{i}.weight", f"gn.{i}"}
    assert set(op.state_dict()) == keys
    assert op.A_n0[0].weight.shape == (64, 32, 3, 3) and op.A_n0[0].stride == (2, 2)


@pytest.mark.parametrize("image_size", [9, 12])
def test_odd_side_with_next_tier_rejected(image_size):
    with pytest.raises(ValueError, match="odd side"):
        MultiTierConvOperator(1, CH, image_size)


def test_adjoint():
    op = make_op()
    z, y = torch.randn(2, 4, op.state_size, dtype=torch.float64)
    with torch.no_grad():
        lhs = (op.multiply(z) * y).sum()
        rhs = (z * op.multiply_transpose(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * lhs.abs().clamp(min=1)


def test_strongly_monotone():
    op = make_op(m=0.3)
    with torch.no_grad():
        W = op.dense_matrix()
    S = torch.eye(op.state_size, dtype=W.dtype) - W
    assert torch.linalg.eigvalsh((S + S.T) / 2).min() >= op.m - 1e-6


@pytest.mark.parametrize("image_size,channels,alpha", [(10, CH, 0.7), (6, CH, 5.0), (8, (2, 3), 1.0)])
def test_resolvent_matches_dense_inverse(image_size, channels, alpha):
    op = make_op(image_size, channels)
    with torch.no_grad():
        W = op.dense_matrix()
    eye = torch.eye(op.state_size, dtype=W.dtype)
    R = torch.linalg.inv(eye + alpha * (eye - W))
    res = op.resolvent(alpha)
    z = torch.randn(5, op.state_size, dtype=torch.float64)
    for got, want in [(res.apply(z), z @ R.T), (res.apply_transpose(z), z @ R)]:
        assert (got - want).norm() <= 1e-8 * want.norm()


@pytest.mark.parametrize("image_size,channels", [(30, CH), (34, (2, 2, 3))])
def test_resolvent_dataset_sizes(image_size, channels):
    """MNIST / CIFAR tier sides (odd last tier 9; 10), matrix-free."""
    op, alpha = make_op(image_size, channels), 0.9
    res = op.resolvent(alpha)
    z = torch.randn(3, op.state_size, dtype=torch.float64)
    with torch.no_grad():
        x = res.apply(z)
        assert (x + alpha * (x - op.multiply(x)) - z).norm() <= 1e-10 * z.norm()
        x = res.apply_transpose(z)
        assert (x + alpha * (x - op.multiply_transpose(x)) - z).norm() <= 1e-10 * z.norm()


def test_resolvent_float32():
    op64 = make_op()
    op32 = make_op().float()
    z = torch.randn(2, op64.state_size, dtype=torch.float64)
    want = op64.resolvent(0.5).apply(z)
    got = op32.resolvent(0.5).apply(z.float())
    assert got.dtype == torch.float32
    assert (got.double() - want).norm() <= 1e-5 * want.norm()


class _Probe(torch.nn.Module):
    """forward() exposing multiply, its transpose and input_term, so that
    torch.func.functional_call can substitute the operator's parameters."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, z, x, wz, wt, wx):
        op = self.op
        return ((op.multiply(z) * wz).sum() + (op.multiply_transpose(z) * wt).sum()
                + (op.input_term(x) * wx).sum())


def test_gradcheck_parameters():
    probe = _Probe(make_op(image_size=6))
    names = [n for n, _ in probe.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in probe.parameters())
    gen = torch.Generator().manual_seed(1)
    n = probe.op.state_size
    z, wz, wt, wx = torch.randn(4, 2, n, generator=gen, dtype=torch.float64)
    x = torch.randn(2, *probe.op.input_shape, generator=gen, dtype=torch.float64)

    def f(*ps):
        return functional_call(probe, dict(zip(names, ps)), (z, x, wz, wt, wx))

    # fast_mode compares u^T J v for random u, v: any wrong entry of J shows
    # up almost surely, at the cost of one finite difference instead of one
    # per parameter element.
    for seed in range(3):
        torch.manual_seed(seed)
        assert torch.autograd.gradcheck(f, params, fast_mode=True)
