"""Generalization bounds: Theorem 2 against solved equilibria, the bound formulas by hand."""
from __future__ import annotations

import math

import pytest
import torch

from src.baselines import DNN
from src.bounds.generalization import (fc_parameters, generalization, margin_loss, measure_B,
                                       mondeq_pac_bayes, neyshabur, perturbation_bound, unrolled_fb)
from src.mondeq.fc import FullyConnectedOperator
from src.mondeq.layer import MonDEQLayer
from src.mondeq.networks import MonFCNet
from src.mondeq.splitting import SolverConfig

TIGHT = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-13, fwd_max_iter=20000, check_every=1)


def equilibrium(op: FullyConnectedOperator, x: torch.Tensor) -> torch.Tensor:
    """z* = relu(W z* + U x + b) in float64 by the project's layer, checked to 1e-10."""
    with torch.no_grad():
        z = MonDEQLayer(op, TIGHT, "test")(x)
    W, U, b = fc_parameters(op)
    assert (z - torch.relu(z @ W.T + x @ U.T + b)).norm(dim=1).max() < 1e-10
    return z


def operator(n: int, h: int, m: float, seed: int) -> FullyConnectedOperator:
    torch.manual_seed(seed)
    op = FullyConnectedOperator(n, h, m).double()
    with torch.no_grad():
        for p in op.parameters():
            p.mul_(3 * torch.rand(()))  # weights of various sizes
    return op


def perturbed(op: FullyConnectedOperator, scale: float, which=("A", "B", "U")) -> FullyConnectedOperator:
    new = FullyConnectedOperator(op.U.in_features, op.state_size, op.m).double()
    new.load_state_dict(op.state_dict())
    with torch.no_grad():
        for name in which:
            for p in getattr(new, name).parameters():  # U: weight and bias b
                p.add_(scale * torch.randn_like(p))
    return new


@pytest.mark.parametrize("m", [0.05, 0.5, 1.0, 4.0])
def test_theorem2_holds_for_random_perturbations_of_A_B_U_b(m):
    worst = 0.0
    for trial in range(12):
        op = operator(5, 6, m, seed=trial)
        scale = 10 ** (-3 + 3 * trial / 11)  # 1e-3 .. 1
        which = [("A", "B", "U"), ("A",), ("B",), ("U",)][trial % 4]
        other = perturbed(op, scale, which)
        x = 3 * torch.randn(16, 5, dtype=torch.float64)
        diff = (equilibrium(op, x) - equilibrium(other, x)).norm(dim=1)
        exact_m = perturbation_bound(x, *fc_parameters(op), *fc_parameters(other))
        param_m = perturbation_bound(x, *fc_parameters(op), *fc_parameters(other), m=m, m2=m)
        assert (diff <= exact_m * (1 + 1e-9) + 1e-11).all(), (trial, diff, exact_m)
        assert (exact_m <= param_m * (1 + 1e-12)).all()  # I - W >= m I: the exact m is >= the parameter
        worst = max(worst, float((diff / exact_m).max()))
    assert worst > 0.1  # not vacuous: a bound 10x too large would fail here


def diagonal_operator(m: float) -> FullyConnectedOperator:
    """A = B = 0: W = (1-m) I, and z* = (U x + b)/m where U x + b > 0."""
    op = FullyConnectedOperator(3, 4, m).double()
    with torch.no_grad():
        op.A.weight.zero_()
        op.B.weight.zero_()
        op.U.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 1], [1, 1, 1]]))
        op.U.bias.copy_(torch.tensor([0.5, 1.0, 2.0, 0.1]))
    return op


def test_theorem2_is_attained_where_the_relu_is_the_identity():
    x = torch.tensor([[1.0, 2.0, 0.5], [0.2, 0.1, 3.0]], dtype=torch.float64)  # U x + b > 0
    op = diagonal_operator(2.0)
    # b only: the bound is ||b - b'|| / m', attained
    shifted = perturbed(op, 0.0)
    with torch.no_grad():
        shifted.U.bias.add_(torch.tensor([0.3, -0.2, 0.1, 0.05]))
    diff = (equilibrium(op, x) - equilibrium(shifted, x)).norm(dim=1)
    torch.testing.assert_close(diff, perturbation_bound(x, *fc_parameters(op), *fc_parameters(shifted)),
                               rtol=1e-9, atol=0)
    # W only, (1-m) I -> (1-m') I: ||W - W'|| ||Ux + b|| / (m m'), attained
    steeper = diagonal_operator(5.0)
    diff = (equilibrium(op, x) - equilibrium(steeper, x)).norm(dim=1)
    bound = perturbation_bound(x, *fc_parameters(op), *fc_parameters(steeper))
    torch.testing.assert_close(diff, bound, rtol=1e-9, atol=0)
    W, U, b = fc_parameters(op)
    torch.testing.assert_close(bound, 3.0 * (x @ U.T + b).norm(dim=1) / (2.0 * 5.0), rtol=1e-12, atol=0)


def small_mondeq(m: float = 1.0) -> MonFCNet:
    """h = 2 on 2-d inputs; beta = max(||b||, ||U||, ||W_out||, ||A||) = ||U|| = 2, S = 13.25."""
    net = MonFCNet((1, 1, 2), 2, 2, m, SolverConfig())
    op = net.mon.operator
    with torch.no_grad():
        op.A.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # ||A||_2 = 1, ||A||_F^2 = 1
        op.B.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # ||B||_F^2 = 1
        op.U.weight.copy_(2 * torch.eye(2))                        # ||U||_2 = 2, ||U||_F^2 = 8
        op.U.bias.copy_(torch.tensor([0.0, 0.5]))                  # ||b|| = 0.5, ||b||^2 = 0.25
        net.Wout.weight.copy_(torch.eye(2))                        # ||W_out||_2 = 1, ||.||_F^2 = 2
        net.Wout.bias.copy_(torch.tensor([1.0, 0.0]))              # ||b_out||^2 = 1
    return net


def test_complexity_term_matches_a_hand_evaluation():
    out = mondeq_pac_bayes(small_mondeq(1.0), train_margin_loss=0.05)  # M=4096, gamma=10, delta=0.1, c=1e-4, B=50
    inputs = out["inputs"]
    assert inputs["beta"] == pytest.approx(2.0) and inputs["norm_sum"] == pytest.approx(13.25)
    assert (inputs["M"], inputs["gamma"], inputs["delta"], inputs["c"], inputs["B"], inputs["h"], inputs["m"]) == (
        4096, 10.0, 0.1, 1e-4, 50.0, 2, 1.0)
    # K = 2 beta^3 (1+c)^3 (1 + gamma/(4 beta)) (B+1) + 2 m beta (1+c)(B+1)(1-c)^2 + m^2 (1-c)^3
    #   = 16 * 1.00030003 * 2.25 * 51 + 204 * 1.0001 * 0.99980001 + 0.99970003
    K = 2 * 8 * 1.0001 ** 3 * 2.25 * 51 + 2 * 1 * 2 * 1.0001 * 51 * 0.9999 ** 2 + 0.9999 ** 3
    assert K == pytest.approx(2041.530153072039, rel=1e-12)
    assert out["K"] == pytest.approx(K, rel=1e-12)
    # 16 h ln(24h) K^2 S / (gamma^2 m^4 (1-c)^6 (M-1)) with h = 2, S = 13.25:
    first = 16 * 2 * math.log(48) * K ** 2 * 13.25 / (100 * 0.9999 ** 6 * 4095)
    assert first == pytest.approx(16715.903690026007, rel=1e-12)
    # ln(3 M^1.5 / (c delta)) / (M-1) = ln(3 * 262144 / 1e-5) / 4095
    second = math.log(3 * 262144 / 1e-5) / 4095
    assert second == pytest.approx(0.006126541392849171, rel=1e-12)
    assert out["complexity_term"] == pytest.approx(4 * math.sqrt(first + second), rel=1e-10)
    assert out["complexity_term"] == pytest.approx(517.1600884301479, rel=1e-10)
    assert out["pac_bayes"] == pytest.approx(0.05 + 517.1600884301479, rel=1e-10)
    assert out["log10_complexity"] == pytest.approx(math.log10(517.1600884301479), rel=1e-12)


def test_complexity_term_grows_with_the_norm_sum_and_falls_with_m_and_M():
    net = small_mondeq(1.0)
    terms, sums = [], []
    for bias in (0.0, 1.0, 3.0, 10.0):  # b_out enters S but not beta
        with torch.no_grad():
            net.Wout.bias.fill_(bias)
        out = mondeq_pac_bayes(net, None)
        terms.append(out["complexity_term"])
        sums.append(out["inputs"]["norm_sum"])
        assert out["inputs"]["beta"] == pytest.approx(2.0) and out["pac_bayes"] is None
    assert sums == sorted(sums) and terms == sorted(terms) and len(set(terms)) == 4
    by_m = []
    for m in (0.1, 1.0, 5.0, 20.0):
        net.mon.operator.m = m
        by_m.append(mondeq_pac_bayes(net, None)["complexity_term"])
    assert all(a > b for a, b in zip(by_m, by_m[1:]))
    by_M = [mondeq_pac_bayes(net, None, M=M)["complexity_term"] for M in (1024, 4096, 60000)]
    assert all(a > b for a, b in zip(by_M, by_M[1:]))


def test_norms_from_initialisation_measure_the_distance_to_the_reference():
    net = small_mondeq(1.0)
    same = {k: v.clone() for k, v in net.state_dict().items()}
    out = mondeq_pac_bayes(net, 0.0, reference=same)
    assert out["inputs"]["norm_sum"] == 0.0 and out["inputs"]["norms_from"] == "init"
    assert out["complexity_term"] == pytest.approx(4 * math.sqrt(math.log(3 * 262144 / 1e-5) / 4095), rel=1e-12)
    moved = {k: v.clone() for k, v in same.items()}
    moved["Wout.bias"] = moved["Wout.bias"] + torch.tensor([3.0, 4.0])  # distance^2 25
    assert mondeq_pac_bayes(net, 0.0, reference=moved)["inputs"]["norm_sum"] == pytest.approx(25.0)


def test_neyshabur_matches_a_hand_evaluation():
    dnn = DNN((1, 1, 2), 2, depth=2, width=2)
    with torch.no_grad():
        dnn[1].weight.copy_(3 * torch.eye(2))                      # ||.||_2 = 3, ||.||_F^2 = 18
        dnn[3].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # ||.||_2 = sqrt 2, ||.||_F^2 = 2
    out = neyshabur(dnn, 0.25, M=4096, gamma=10, delta=0.1, B=50)
    # KL <= 42^2 e^2 d^2 B^2 h ln(4hd) prod ||W||_2^2 sum ||W||_F^2/||W||_2^2 / (2 gamma^2), d = h = 2
    kl = 42 ** 2 * math.e ** 2 * 4 * 50 ** 2 * 2 * math.log(16) * (9 * 2) * (18 / 9 + 2 / 2) / (2 * 100)
    assert kl == pytest.approx(195149191.70333785, rel=1e-12)
    assert out["kl"] == pytest.approx(kl, rel=1e-10)
    # ln(6 d M^(1 + 1/(2d)) / delta)
    assert out["log_term"] == pytest.approx(math.log(6 * 2 * 4096 ** 1.25 / 0.1), rel=1e-12)
    assert out["complexity_term"] == pytest.approx(873.2054418295176, rel=1e-10)
    assert out["neyshabur"] == pytest.approx(0.25 + 873.2054418295176, rel=1e-10)
    assert out["constants"]["sigma_const"] == 42.0 and out["inputs"]["biases"] == "ignored"
    # deeper is worse: one more layer of norm 3 multiplies prod ||W||^2 by 9
    deeper = DNN((1, 1, 2), 2, depth=3, width=2)
    with torch.no_grad():
        for lin in deeper.linear_layers():
            lin.weight.copy_(3 * torch.eye(2))
    shallow = DNN((1, 1, 2), 2, depth=2, width=2)
    with torch.no_grad():
        for lin in shallow.linear_layers():
            lin.weight.copy_(3 * torch.eye(2))
    assert neyshabur(deeper, 0.0)["complexity_term"] > 3 * neyshabur(shallow, 0.0)["complexity_term"]


def test_unrolled_fb_matches_a_hand_evaluation_and_grows_with_the_iterations():
    net = MonFCNet((1, 1, 2), 2, 2, 1.0, SolverConfig())
    with torch.no_grad():
        for p in (net.mon.operator.A.weight, net.mon.operator.B.weight, net.mon.operator.U.weight):
            p.zero_()
        net.Wout.weight.copy_(2 * torch.eye(2))  # S = 8; W_u = diag(1 - alpha m, 1) blocks: ||W_u|| = 1; beta = 2
    out = unrolled_fb(net, 3, 0.5, train_margin_loss=0.0)  # depth D = 4
    assert out["inputs"]["beta"] == pytest.approx(2.0) and out["inputs"]["norms"]["W_u"] == pytest.approx(1.0)
    assert out["inputs"]["depth"] == 4 and out["inputs"]["norm_sum"] == pytest.approx(8.0)
    # 16 e^2 B^2 beta^(2D-2) ((D-1) alpha (beta/D + 2 beta + 3) + 1)^2 2h ln(16h) S / gamma^2
    inner = 3 * 0.5 * (2 / 4 + 4 + 3) + 1
    assert inner == 12.25
    kl = 16 * math.e ** 2 * 50 ** 2 * 2 ** 6 * inner ** 2 * 2 * 2 * math.log(32) * 8 / 100
    log_term = math.log(6 * 4 * 4096 ** (1 + 1 / 8) / 0.1)
    assert out["log10_kl"] == pytest.approx(math.log10(kl), rel=1e-12)
    assert out["complexity_term"] == pytest.approx(4 * math.sqrt((kl + log_term) / 4095), rel=1e-10)
    assert out["complexity_term"] == pytest.approx(3507.1659367309176, rel=1e-10)
    terms = [unrolled_fb(net, d, 0.5)["log10_complexity"] for d in (1, 3, 10, 100, 1000)]
    assert all(a < b for a, b in zip(terms, terms[1:]))
    assert math.isfinite(terms[-1]) and terms[-1] > 250  # log space: no overflow


def test_generalization_entry_point_for_mondeqs_and_dnns():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    net = MonFCNet((1, 28, 28), 10, 8, 1.0, SolverConfig(fwd_tol=1e-6, fwd_max_iter=500)).eval()
    with torch.no_grad():
        net.Wout.weight.mul_(100)  # some margins above gamma = 1
    cfg = {"M": 4096, "gamma": 1.0, "delta": 0.1, "c": 1e-4, "B": 50.0, "B_from_data": False,
           "norms_from": "zero", "unrolled_alphas": [0.1, 0.5], "unrolled_tol": 1e-3, "unrolled_batch": 16}
    rec = generalization(net, x, y, cfg)
    with torch.no_grad():
        logits = net(x)
    wrong = [(logits[i, y[i]] <= 1.0 + logits[i][torch.arange(10) != y[i]].max()).item() for i in range(64)]
    assert rec["train_margin_loss"] == pytest.approx(sum(wrong) / 64) == margin_loss(net, x, y, 1.0)
    assert 0 < rec["train_margin_loss"] < 1
    assert rec["pac_bayes"] == pytest.approx(rec["train_margin_loss"] + rec["complexity_term"])
    assert rec["method"] == "theorem3" and rec["inputs"]["B"] == 50.0
    assert rec["unrolled_fb"] > rec["complexity_term"] or rec["unrolled_fb"] is None
    assert rec["details"]["unrolled_fb"]["inputs"]["iterations"] >= 1
    rec_data = generalization(net, x, y, {**cfg, "B_from_data": True, "unrolled_alphas": None})
    assert rec_data["B"] == pytest.approx(measure_B(x)) and rec_data["B"] == pytest.approx(
        float(x.flatten(1).norm(dim=1).max()))
    assert "unrolled_fb" not in rec_data
    with pytest.raises(ValueError, match="initial weights"):
        generalization(net, x, y, {**cfg, "norms_from": "init"})
    init = generalization(net, x, y, {**cfg, "norms_from": "init", "unrolled_alphas": None},
                          reference=net.state_dict())
    assert init["inputs"]["norm_sum"] == 0.0

    dnn = DNN((1, 28, 28), 10, depth=3, width=8).eval()
    rec = generalization(dnn, x, y, cfg)
    assert rec["method"] == "neyshabur2018"
    assert rec["neyshabur"] == pytest.approx(rec["train_margin_loss"] + rec["complexity_term"])
    assert rec["details"]["neyshabur"]["inputs"]["depth"] == 3 and rec["details"]["neyshabur"]["inputs"]["h"] == 8


@pytest.mark.parametrize("m", [0.5, 2.0])
def test_complexity_term_scales_with_m_as_the_formula_says(m):
    """At m != 1 every power of m matters (m^4 in the KL term; m and m^2 in K): the hand evaluation at
    m = 1 cannot tell m^4 from m^2."""
    c, B, gamma, M, h = 1e-4, 50.0, 10.0, 4096, 2
    out = mondeq_pac_bayes(small_mondeq(m), train_margin_loss=0.05)
    beta, S = 2.0, 13.25  # as at m = 1: m changes none of the norms
    assert (out["inputs"]["beta"], out["inputs"]["norm_sum"]) == pytest.approx((beta, S))
    K = (2 * beta ** 3 * (1 + c) ** 3 * (1 + gamma / (4 * beta)) * (B + 1) + 2 * m * beta * (1 + c) * (B + 1)
         * (1 - c) ** 2 + m ** 2 * (1 - c) ** 3)
    first = 16 * h * math.log(24 * h) * K ** 2 * S / (gamma ** 2 * m ** 4 * (1 - c) ** 6 * (M - 1))
    second = math.log(3 * M ** 1.5 / (c * 0.1)) / (M - 1)
    assert out["complexity_term"] == pytest.approx(4 * math.sqrt(first + second), rel=1e-10)


def test_an_overflowing_generalization_bound_is_recorded_as_failed(compose, tmp_path, foreign_checkpoint):
    """generalization.B = 1e308 overflows the complexity term: bounds.json says failed, not null alone."""
    from src.bound import bound

    ckpt = foreign_checkpoint(1.0)
    cfg = compose(["model=mon_fc", "model.width=8", "dataset=synthetic", "bound.methods=[theorem1]", "m=1",
                   "bound.accept_poor_model=true", "generalization.B=1e308", f"ckpt={ckpt}"], config_name="bound")
    record = bound(cfg, tmp_path / "run")
    assert record["generalization"]["complexity_term"] is None and "generalization" in record["failed"]
