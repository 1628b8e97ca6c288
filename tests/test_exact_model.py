"""The exact model certificates speak of (src/certify/exact_model.py): its proved allowance holds against the
exact equilibrium (dense active-set Newton, src/mondeq/dense.py), also for a solve cut short."""
from __future__ import annotations

import torch
from torch import nn

from src.certify import exact_model, rules as certify
from src.mondeq import dense
from src.mondeq.networks import MonConvNet, MonFCNet
from src.mondeq.splitting import SolverConfig

CLASSES = 3


def fc_net(seed: int = 0) -> MonFCNet:
    torch.manual_seed(seed)
    net = MonFCNet((6,), CLASSES, width=9, m=0.5, solver=SolverConfig(name="pr", alpha=1.0))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    return net.eval()


def test_the_allowance_covers_the_distance_to_the_exact_equilibrium_even_for_a_cut_solve(monkeypatch):
    net = fc_net()
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    dm = dense.dense_mondeq(net, (6,))
    z_star, _, ok = dense.equilibrium(dm, x.double())
    assert ok.all()
    exact_logits = z_star @ dm.C + dm.b_out
    labels = exact_logits.argmax(1)
    truth = certify.gaps_of(exact_logits, labels)
    for max_iter, tol in ((3, 1.0), (exact_model.STATE_MAX_ITER, exact_model.STATE_TOL)):
        monkeypatch.setattr(exact_model, "STATE_TOL", tol)
        monkeypatch.setattr(exact_model, "STATE_MAX_ITER", max_iter)
        net.mon.solver = SolverConfig(name="pr", alpha=1.0, fwd_max_iter=1)  # the copy takes the larger max_iter
        found = exact_model.ExactModel(net, torch.device("cpu")).evaluate(x, 16)
        # the state behind the logits, recomputed: its distance from z* is within the proved allowance
        moved = (found.logits - exact_logits).abs().amax(1)
        gaps = found.gaps(labels)
        assert (gaps.low[~gaps.own] <= truth.low[~truth.own] + 1e-12).all()
        assert (moved <= found.state_error * dm.C.norm(dim=0).max() + 1e-12).all()
        if max_iter == 3:  # a cut solve: a real distance, and an allowance that is not vacuous (finite, small)
            assert moved.max() > 1e-6 and found.state_error.max() < 10
        else:
            assert found.state_error.max() < 1e-6


def test_the_pair_norms_are_the_readout_differences():
    net = fc_net(seed=3)
    C = net.Wout.weight.detach().double().T
    expected = (C[:, :, None] - C[:, None, :]).norm(dim=0)
    torch.testing.assert_close(exact_model._pair_norms(net), expected, rtol=1e-12, atol=1e-12)


def test_a_conv_mondeq_allowance_holds_against_a_much_tighter_solve():
    torch.manual_seed(0)
    net = MonConvNet((1, 6, 6), CLASSES, channels=3, m=1.0, solver=SolverConfig(name="pr", alpha=1.0)).eval()
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    found = exact_model.ExactModel(net, torch.device("cpu")).evaluate(x, 8)
    ref = net.double()
    ref.mon.solver = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-14, fwd_max_iter=20000)
    with torch.no_grad():
        truth = ref(x.double())
    labels = truth.argmax(1)
    gaps, exact = found.gaps(labels), certify.gaps_of(truth, labels)
    assert (gaps.low[~gaps.own] <= exact.low[~exact.own] + 1e-10).all()


def test_a_feedforward_network_is_its_float64_self():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, CLASSES))
    x = torch.randn(10, 6)
    found = exact_model.ExactModel(model, torch.device("cpu")).evaluate(x, 4)
    with torch.no_grad():
        torch.testing.assert_close(found.logits, model.double()(x.double()))
    assert (found.state_error == 0).all()
