"""Original-layout state dicts load and give the original architecture's outputs."""
import pytest
import torch
import torch.nn.functional as F

from src.checkpoints import CheckpointLayoutError, load_weights
from src.models import build_model

SOLVER = dict(name="pr", alpha=1.0, fwd_tol=1e-11, fwd_max_iter=5000, bwd_tol=1e-6, bwd_max_iter=100, check_every=1)


def fixed_point(apply_W, b, mask, alpha, iters):
    """Forward-backward written out, independent of src.mondeq."""
    z = torch.zeros_like(b)
    for _ in range(iters):
        z = torch.relu((1 - alpha) * z + alpha * (apply_W(z) + b)) * mask
    return z


def test_original_fc_state_dict_loads_and_matches_independent_forward():
    torch.manual_seed(0)
    h, m = 10, 2.0
    sd = {"mon.linear_module.U.weight": torch.randn(h, 16) * 0.3, "mon.linear_module.U.bias": torch.randn(h),
          "mon.linear_module.A.weight": torch.randn(h, h) * 0.3, "mon.linear_module.B.weight": torch.randn(h, h) * 0.3,
          "Wout.weight": torch.randn(10, h), "Wout.bias": torch.randn(10)}
    sd = {k: v.double() for k, v in sd.items()}
    net = build_model({"name": "mon_fc", "width": h}, m, SOLVER, (1, 4, 4), 10).double()
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    A, B = sd["mon.linear_module.A.weight"], sd["mon.linear_module.B.weight"]
    W = (1 - m) * torch.eye(h, dtype=torch.float64) - A.T @ A + B - B.T
    b = x.flatten(1) @ sd["mon.linear_module.U.weight"].T + sd["mon.linear_module.U.bias"]
    alpha = m / torch.linalg.matrix_norm(torch.eye(h, dtype=torch.float64) - W, ord=2) ** 2
    z = fixed_point(lambda z: z @ W.T, b, torch.ones(h, dtype=torch.float64), alpha, 20000)
    want = z @ sd["Wout.weight"].T + sd["Wout.bias"]
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-9)


def test_original_single_conv_state_dict_loads_and_matches_independent_forward():
    torch.manual_seed(1)
    C, m = 3, 1.0
    sd = {"mon.linear_module.U.weight": torch.randn(C, 1, 3, 3), "mon.linear_module.U.bias": torch.randn(C),
          "mon.linear_module.A.weight": torch.randn(C, C, 3, 3), "mon.linear_module.B.weight": torch.randn(C, C, 3, 3),
          "mon.linear_module.g": torch.tensor(1.3), "mon.linear_module.h": torch.tensor(0.7),
          "Wout.weight": torch.randn(10, C * 2 * 2), "Wout.bias": torch.randn(10)}
    sd = {k: v.double() for k, v in sd.items()}
    net = build_model({"name": "mon_conv", "channels": C}, m, SOLVER, (1, 6, 6), 10).double()
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    p = lambda v: F.pad(v, (1, 1, 1, 1), mode="circular")
    A = sd["mon.linear_module.A.weight"] / sd["mon.linear_module.A.weight"].norm()
    B = sd["mon.linear_module.h"] * sd["mon.linear_module.B.weight"] / sd["mon.linear_module.B.weight"].norm()
    g = sd["mon.linear_module.g"]
    conv = lambda v, k: F.conv2d(p(v), k)
    conv_t = lambda v, k: conv(v, k.flip(-1, -2).transpose(0, 1))
    apply_W = lambda z: (1 - m) * z - g * conv_t(conv(z, A), A) + conv(z, B) - conv_t(z, B)
    xp = F.pad(x, (1, 1, 1, 1))  # the network zero-pads 6 -> 8
    b = conv(xp, sd["mon.linear_module.U.weight"]) + sd["mon.linear_module.U.bias"][:, None, None]
    mask = torch.zeros(1, C, 8, 8, dtype=torch.float64)
    mask[..., 1:-1, 1:-1] = 1
    z = fixed_point(apply_W, b, mask, 0.05, 4000)
    want = F.avg_pool2d(z, 4).flatten(1) @ sd["Wout.weight"].T + sd["Wout.bias"]
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-8)


def test_sequential_dnn_and_lightning_checkpoints_load():
    torch.manual_seed(2)
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 10))
    net = build_model({"name": "dnn", "depth": 3, "width": 8}, None, None, (1, 4, 4), 10)
    assert load_weights(net, seq.state_dict()) == "ours"
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(net(x), seq(x))
    lightning = {"state_dict": {f"model.{k}": v for k, v in seq.state_dict().items()}}
    assert load_weights(net, lightning) == "lightning"


def test_unknown_layout_lists_missing_and_unexpected_keys():
    net = build_model({"name": "mon_fc", "width": 4}, 1.0, {}, (1, 2, 2), 10)
    bad = {"mon.linear_module.U.weight": torch.zeros(4, 4), "foo.bar": torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match=r"missing keys: \[.*Wout\.weight.*unexpected keys: \['foo\.bar'\]"):
        load_weights(net, bad)


def test_original_multi_tier_state_dict_loads_and_matches_independent_forward():
    from test_multiconv import ref_multiply  # the independent transcription of MONMultiConv

    torch.manual_seed(3)
    net = build_model({"name": "mon_multiconv", "channels": [2, 3, 2]}, 2.0, SOLVER, (1, 8, 8), 10).double()
    op = net.mon.operator
    sd = {("mon.linear_module." + k): torch.randn_like(v) for k, v in op.state_dict().items()}
    sd.update({f"mon.linear_module.{s}.{i}": torch.tensor(0.5 + i, dtype=torch.float64)
               for s, n in (("g", 3), ("h", 3), ("gn", 2)) for i in range(n)})
    sd.update({"Wout.weight": torch.randn(10, 2 * 4 * 4, dtype=torch.float64),
               "Wout.bias": torch.randn(10, dtype=torch.float64)})
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    xp = F.pad(x, (1, 1, 1, 1))
    b0 = F.conv2d(F.pad(xp, (1, 1, 1, 1), mode="circular"), sd["mon.linear_module.U.weight"],
                  sd["mon.linear_module.U.bias"])
    b = torch.cat([b0.flatten(1), torch.zeros(3, 3 * 6 * 6 + 2 * 4 * 4, dtype=torch.float64)], 1)
    with torch.no_grad():
        z = fixed_point(lambda z: ref_multiply(op, z), b, op.active_mask, 0.05, 3000)
        want = z[:, -2 * 4 * 4:] @ sd["Wout.weight"].T + sd["Wout.bias"]
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-8)
