"""Per-input certified radii of monDEQs (src/certify/local.py) and certify.bound=local.

Soundness is checked against independent computations: brute-force vertex
enumeration with dense inverses, the network's own solver and autograd
(sampled Jacobians, PGD with restarts, dense sampling of the ball), and on a
2-D model the exact distance to the decision boundary, one QP per activation
pattern and class.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from references import exact_radius
from src.certify import rules as certify
from src.certify import local
from src.mondeq import dense
from src.bounds.diag_sdp import sdp_pairwise
from src.bounds.theorem1 import theorem1, theorem1_pooled
from src.errors import ConfigError
from src.mondeq.networks import MonConvNet, MonFCNet
from src.mondeq.splitting import SolverConfig

TIGHT = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-9, fwd_max_iter=5000, bwd_tol=1e-9, bwd_max_iter=5000)
CLASSES = 3


def random_net(in_dim: int, width: int, m: float, seed: int, scale: float = 1.0) -> MonFCNet:
    """A random FC monDEQ in float64 whose ReLUs matter: weights scaled up from PyTorch's init."""
    torch.manual_seed(seed)
    net = MonFCNet((in_dim,), CLASSES, width=width, m=m, solver=TIGHT).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return net.eval()


def synthetic_case(n: int, wrong: int):
    """(net, images, labels): a width-8 FC monDEQ on the synthetic dataset's 1 x 3 x 3 pixel images (mean
    0.5, std 0.2898), labelled by itself but for the first `wrong`, misclassified (radius 0)."""
    torch.manual_seed(0)
    solver = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-6, fwd_max_iter=5000, bwd_tol=1e-6, bwd_max_iter=5000)
    net = MonFCNet((1, 3, 3), CLASSES, width=8, m=1.0, solver=solver)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    images = torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        labels = net((images - 0.5) / 0.2898).argmax(1)
    labels[:wrong] = (labels[:wrong] + 1) % CLASSES
    return net, images, labels


def global_pairs(net) -> torch.Tensor:
    return local.pair_constants(sdp_pairwise(net)["matrix"], CLASSES)


def worst_margin(net, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """min_{j != y} f_y - f_j through the network's own solver (not the certificate's equilibrium)."""
    logits = net(x)
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return own - logits.scatter(1, labels.view(-1, 1), -math.inf).amax(1)


def in_ball(centres: torch.Tensor, radius: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k points per centre, uniform in its l2 ball, half of them on the sphere: (N, k, d)."""
    g = torch.Generator().manual_seed(seed)
    d = centres.shape[1]
    u = torch.randn(len(centres), k, d, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    r = torch.rand(len(centres), k, 1, generator=g, dtype=torch.float64) ** (1 / d)
    r[:, : k // 2] = 1
    return centres[:, None] + radius[:, None, None] * r * u


def pgd_worst(net, x0, labels, radius, restarts: int, steps: int, seed: int) -> torch.Tensor:
    """The smallest worst margin l2 PGD finds in each ball (normalised inputs, no box), over restarts."""
    best = torch.full((len(x0),), math.inf, dtype=torch.float64)
    for start in in_ball(x0, radius, restarts, seed).unbind(1):
        x = start.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            grad, = torch.autograd.grad(worst_margin(net, x, labels).sum(), x)
            with torch.no_grad():
                x = x - 0.1 * radius[:, None] * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
                delta = x - x0
                x = x0 + delta * (radius / delta.norm(dim=1).clamp_min(1e-30)).clamp(max=1)[:, None]
        with torch.no_grad():
            best = torch.minimum(best, worst_margin(net, x, labels))
    return best


# --------------------------------------------------------------------------- the vertex sup

def test_vertex_sup_is_the_brute_force_max_over_slope_vertices():
    """The Schur-complement enumeration equals dense (I - D W)^-1 D U at every vertex; no slope
    inside the box gives a larger gradient (the sup sits at a vertex); the monotone bound is above."""
    net = random_net(5, 7, m=0.3, seed=0, scale=2.0)
    dm = dense.dense_mondeq(net, (5,))
    h = dm.W.shape[0]
    labels = torch.tensor([1, 2])
    c, e = local._outputs(dm, labels)
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(2, h, generator=g, dtype=torch.float64)
    stable = torch.ones(2, h, dtype=torch.bool)
    stable[0, :3] = stable[1, 2:6] = False
    lo = 0.5 * torch.rand(2, h, generator=g, dtype=torch.float64)
    hi = 0.5 + 0.5 * torch.rand(2, h, generator=g, dtype=torch.float64)
    sup = local.box_sup(dm, "vertex", v0, stable, lo, hi, c, e)
    eye = torch.eye(h, dtype=torch.float64)

    def grads(p, slopes):
        D = torch.diag(slopes)
        J = torch.linalg.solve(eye - D @ dm.W, D @ dm.U)
        return (c[p].T @ J + e.T @ dm.U).norm(dim=1)

    for p in range(2):
        free = (~stable[p]).nonzero().squeeze(1)
        base = (v0[p] > 0).double()
        best = torch.zeros(c.shape[2], dtype=torch.float64)
        for bits in itertools.product([False, True], repeat=len(free)):
            slopes = base.clone()
            slopes[free] = torch.where(torch.tensor(bits), hi[p, free], lo[p, free])
            best = torch.maximum(best, grads(p, slopes))
        torch.testing.assert_close(sup[p], best, rtol=1e-10, atol=1e-12)
        for _ in range(100):
            slopes = base.clone()
            slopes[free] = lo[p, free] + torch.rand(len(free), generator=g, dtype=torch.float64) * (hi - lo)[p, free]
            assert (grads(p, slopes) <= best * (1 + 1e-10)).all()
    assert (local.box_sup(dm, "monotone", v0, stable, lo, hi, c, e) >= sup * (1 - 1e-12)).all()


def test_exact_equilibrium_matches_the_solver_and_the_dense_pieces_the_network():
    net = random_net(6, 9, m=0.5, seed=2, scale=2.0)
    dm = dense.dense_mondeq(net, (6,))
    x = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z, v, ok = dense.equilibrium(dm, x)
    assert ok.all()
    torch.testing.assert_close(z, v.clamp_min(0), rtol=0, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(z, net.mon(net.prepare(x)), rtol=0, atol=1e-7)
        torch.testing.assert_close(z @ dm.C + dm.b_out, net(x), rtol=0, atol=1e-7)


def test_a_pattern_that_has_not_settled_is_not_called_the_equilibrium(monkeypatch):
    """With one Newton step from the input's own pattern (a start at z = 0), rows whose pattern still moves
    must be refused: their z was solved for the previous pattern and is not the fixed point."""
    net = random_net(6, 9, m=0.5, seed=2, scale=2.0)
    dm = dense.dense_mondeq(net, (6,))
    x = torch.randn(200, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(dense, "NEWTON_STEPS", 1)
    start = torch.zeros(len(x), dm.W.shape[0], dtype=torch.float64)
    z, v, ok = dense.equilibrium(dm, x, start)
    residual = (z - (z @ dm.W.T + x @ dm.U.T + dm.b).clamp_min(0)).norm(dim=1)
    assert (~ok).any() and ok.any()
    assert (residual[ok] < 1e-12).all() and (residual[~ok] > 1e-6).all()
    labels = (z @ dm.C).argmax(1)
    cen = local.centres(dm, x, labels, global_pairs(net), start)
    assert (local.certified_radii(dm, cen)["radius"][~ok] == 0).all()
    assert dense.equilibrium(dm, x)[2].all()  # from the Peaceman-Rachford start: every pattern settles


# --------------------------------------------------------------------------- soundness

@pytest.fixture(scope="module")
def planar():
    """A 2-D, width-6 monDEQ, its centres (classified by themselves) and their certified radii."""
    net = random_net(2, 6, m=0.5, seed=4, scale=2.5)
    dm = dense.dense_mondeq(net, (2,))
    x = 2 * torch.rand(24, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) - 1
    with torch.no_grad():
        labels = net(x).argmax(1)
    pair = global_pairs(net)
    cen = local.centres(dm, x, labels, pair)
    out = local.certified_radii(dm, cen, steps=14)
    return net, dm, x, labels, pair, cen, out


def test_certified_radii_are_below_the_exact_distance_to_the_boundary(planar):
    """Sound: below the exact radius (QPs over all activation patterns); between the global radius and
    the exact one, and at the exact radius where the whole ball lies on one affine piece."""
    net, dm, x, labels, pair, cen, out = planar
    radius = out["radius"]
    glob = certify.radius(cen.margins, cen.pair)
    exact = torch.tensor([exact_radius(dm, x[k].numpy(), int(labels[k])) for k in range(len(x))],
                         dtype=torch.float64)
    assert (radius <= exact * (1 + 1e-6)).all()
    assert (radius >= glob).all() and (radius > glob * 1.01).any()
    affine = out["unstable"] == 0
    assert affine.any()
    torch.testing.assert_close(radius[affine], exact[affine], rtol=2 ** -12, atol=0)


def test_no_attack_or_sample_breaks_a_certified_ball(planar):
    net, dm, x, labels, pair, cen, out = planar
    radius = out["radius"] * (1 - 1e-9)
    assert (pgd_worst(net, x, labels, radius, restarts=8, steps=40, seed=6) > 0).all()
    samples = in_ball(x, radius, 2000, seed=7)
    with torch.no_grad():
        worst = worst_margin(net, samples.flatten(0, 1), labels.repeat_interleave(2000)).view(len(x), -1)
    assert (worst > 0).all()
    # just outside the bracket's top (the centre's affine radius) some ball is broken: radii are not vacuous
    assert (pgd_worst(net, x, labels, out["upper"] * 1.5, restarts=4, steps=40, seed=8) < 0).any()


def test_local_constants_lie_between_sampled_jacobians_and_the_global_constants(planar):
    """At a radius inside each ball's certified range: the margins' local Lipschitz constants are never
    above the class-pair SDP's or Theorem 1's, never below the largest margin gradient sampled in the
    ball; the centred constants that certify are below them and above every sampled |gap(x) - gap(x0)|
    / ||x - x0||."""
    net, dm, x, labels, pair, cen, out = planar
    eps = out["radius"] * 0.9
    res = local.check(dm, cen, eps)
    found = res["unstable"] >= 0
    assert found.any() and (res["unstable"][found] > 0).any()
    loc, centred = res["lipschitz"][found], res["centred"][found]
    assert (centred <= loc * (1 + 1e-12)).all() and (centred < loc * (1 - 1e-3)).any()
    glob = torch.minimum(cen.pair, torch.full_like(cen.pair, math.sqrt(2) * theorem1(net)["value"]))[found]
    assert (loc[~cen.margins.own[found]] <= glob[~cen.margins.own[found]] * (1 + 1e-9)).all()
    pts = in_ball(x[found], eps[found], 300, seed=9).flatten(0, 1).requires_grad_(True)
    own = labels[found].repeat_interleave(300)
    logits = net(pts)
    moved = (pts - x[found].repeat_interleave(300, 0)).norm(dim=1).detach()
    for j in range(CLASSES):
        gap = logits.gather(1, own.view(-1, 1)).squeeze(1) - logits[:, j]
        grad, = torch.autograd.grad(gap.sum(), pts, retain_graph=True)
        norms = grad.norm(dim=1).view(int(found.sum()), -1).amax(1)
        assert (norms <= loc[:, j] * (1 + 1e-7) + 1e-12).all()
        ratio = ((gap.detach() - cen.margins.low[found, j].repeat_interleave(300)).abs() / moved).view(len(norms), -1)
        assert (ratio.amax(1) <= centred[:, j] * (1 + 1e-7) + 1e-12).all()


def test_monotone_ball_bound_is_sound_and_no_tighter_than_vertex(planar):
    net, dm, x, labels, pair, cen, out = planar
    mono = local.certified_radii(dm, cen, "monotone", steps=14)
    assert (mono["radius"] <= out["radius"] * (1 + 2 ** -12)).all()
    glob = certify.radius(cen.margins, cen.pair)
    assert (mono["radius"] >= glob).all()
    eps = out["radius"] * 0.9
    assert (local.check(dm, cen, eps, "monotone")["certified"] <= local.check(dm, cen, eps)["certified"]).all()


def test_certification_is_monotone_in_eps_and_gives_up_over_max_unstable(planar):
    net, dm, x, labels, pair, cen, out = planar
    base = out["radius"]
    previous = torch.ones(len(x), dtype=torch.bool)
    for scale in (0.25, 0.5, 0.75, 1.0, 1.5, 3.0):
        now = local.check(dm, cen, base * scale)["certified"]
        assert (now <= previous).all()
        previous = now
    capped = local.check(dm, cen, base * 0.9, max_unstable=0)
    assert (capped["unstable"] <= 0).all()
    glob = certify.radius(cen.margins, cen.pair)
    assert (capped["certified"] >= (base * 0.9 < glob)).all()


# --------------------------------------------------------------------------- conv monDEQs

def test_small_conv_mondeq_local_radii_are_sound():
    """A 2-channel conv monDEQ on 4x4 images (state 2 x 6 x 6): the dense pieces reproduce the network,
    the radii are at least theorem1_pooled's and no PGD or sample breaks them."""
    torch.manual_seed(10)
    net = MonConvNet((1, 4, 4), CLASSES, channels=2, m=0.5, solver=TIGHT).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    dm = dense.dense_mondeq(net, (1, 4, 4))
    x = torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(dense.equilibrium(dm, x.flatten(1))[0] @ dm.C + dm.b_out, net(x),
                                   rtol=0, atol=1e-7)
        labels = net(x).argmax(1)
    pair = local.pair_constants(theorem1_pooled(net)["value"], CLASSES)
    cen = local.centres(dm, x.flatten(1), labels, pair)
    out = local.certified_radii(dm, cen)
    glob = certify.radius(cen.margins, cen.pair)
    assert (out["radius"] >= glob).all() and (out["radius"] > glob * 1.01).any()

    class Flat(torch.nn.Module):
        def forward(self, flat):
            return net(flat.view(-1, 1, 4, 4))

    radius = out["radius"] * (1 - 1e-9)
    assert (pgd_worst(Flat(), x.flatten(1), labels, radius, restarts=4, steps=30, seed=12) > 0).all()
    samples = in_ball(x.flatten(1), radius, 500, seed=13).flatten(0, 1)
    with torch.no_grad():
        assert (worst_margin(Flat(), samples, labels.repeat_interleave(500)) > 0).all()


def test_local_refuses_large_states_and_other_models():
    big = MonConvNet((1, 28, 28), 10, channels=4, m=1.0, solver=TIGHT)
    with pytest.raises(ConfigError, match=r"certify.bound=local.*3136.*<= 1024"):
        local.check_applies(big)
    with pytest.raises(ConfigError, match="monDEQs only"):
        local.check_applies(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- the app's record

def test_robustness_record_has_a_local_curve_with_radii(compose, tmp_path):
    """evaluate() with certify.bound=[sdp_pairwise, local]: the local curve certifies at least the
    class-pair SDP's at every radius, stays at or below clean accuracy, PGD breaks none of its points."""
    from src.robustness import evaluate

    cfg = compose(["model=mon_fc", "model.width=8", "m=1", "dataset=synthetic", "dataset.in_shape=[1,3,3]",
                   "dataset.num_classes=3", "certify.bound=[sdp_pairwise,local]", "robustness.device=cpu",
                   "robustness.pgd.steps=10", "robustness.pgd.eps=[0.05,0.2]", "robustness.progress=false",
                   "certify.eps=[0.01,0.05,0.1,0.2,0.5]"], config_name="robustness")
    net, images, labels = synthetic_case(40, wrong=4)
    record = evaluate(cfg, net, "sha", tmp_path, images, labels)
    curve = record["certified_curves"]["local/local"]
    pair = record["certified_curves"]["sdp_pairwise/pairwise"]
    assert curve["rule"] == "local" and len(curve["radii"]) == 40 and curve["source"] == "sdp_pairwise (computed)"
    assert all(r == 0 for r in curve["radii"][:4]) and curve["exact_equilibrium"] == 1.0
    assert all(p <= a <= record["clean_accuracy"] for a, p in zip(curve["accuracy"], pair["accuracy"]))
    assert any(a > p for a, p in zip(curve["accuracy"], pair["accuracy"])), (curve["accuracy"], pair["accuracy"])
    assert sum(record["checks"]["local/local"]["certified_but_attacked"]) == 0
    radii = torch.tensor(curve["radii"])
    assert curve["accuracy"] == [float((radii > e).double().mean()) for e in curve["eps"]]


def test_schema_checks_the_local_keys(compose):
    from src import schema

    cfg = compose(["certify.bound=[theorem1,local]"], config_name="robustness")
    schema.check(cfg)
    assert list(cfg.certify.bound) == ["theorem1", "local"]
    for key, value, allowed in (("certify.local.method", "zonotope", "vertex"),
                                ("certify.local.max_unstable", 20, "<= 14"),
                                ("certify.local.steps", 0, ">= 1")):
        bad = compose([f"{key}={value}"], config_name="robustness")
        with pytest.raises(ConfigError, match=rf"{key}='?{value}'?: allowed: .*{allowed}"):
            schema.check(bad)


def test_fig4_draws_the_local_curve_and_reports_it_beside_the_class_pair_sdp(tmp_path):
    import json

    from src import plot

    run = tmp_path / "runs" / "mon_fc" / "h40_m20"
    run.mkdir(parents=True)
    common = {"model": {"name": "mon_fc", "width": 40}, "m": 20.0, "dataset": "mnist5k", "profile": "smoke"}
    (run / "metrics.json").write_text(json.dumps({**common, "test_error": 0.1, "protocol": "standard",
                                                  "experiment": "test", "reached": True}))
    eps = [0.1, 0.2]
    curves = {"theorem1/paper": {"eps": eps, "accuracy": [0.6, 0.5], "lipschitz": 3.0, "rule": "paper"},
              "sdp_pairwise/pairwise": {"eps": eps, "accuracy": [0.8, 0.7], "lipschitz": [[0.0]], "rule": "pairwise"},
              "local/local": {"eps": eps, "accuracy": [0.85, 0.75], "rule": "local", "radii": [0.3]}}
    (run / "robustness.json").write_text(json.dumps(
        {**common, "certified": curves["theorem1/paper"], "certified_curves": curves, "clean_accuracy": 0.9,
         "pgd": {"eps": [0.5], "accuracy": [0.6]}}))
    out = tmp_path / "out"
    assert plot.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--no-wandb"]) == 0
    row = next(line for line in (out / "report.md").read_text().splitlines() if "local radii" in line)
    assert "class-pair SDP: 70.00%" in row and "75.00%" in row


def test_bench_record_of_the_local_certifier(compose, capsys):
    """`python -m src.bench bench.local=[vertex,monotone]`: one JSON line, the test split repeated to
    bench.batch points, the vertex bound certifying at least what the monotone one does."""
    import json

    from src import bench, schema

    cfg = compose(["model=mon_fc", "model.width=8", "m=1", "dataset=synthetic", "dataset.in_shape=[1,3,3]",
                   "dataset.num_classes=3", "bench.local=[vertex,monotone]", "bench.batch=300", "bench.threads=1",
                   "bench.local_eps=[0.01,0.05]"], config_name="bench")
    schema.check(cfg)
    record = bench.run(cfg)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert record["points"] == 300 and record["global"] == "sdp_pairwise" and record["eps"] == [0.01, 0.05]
    vertex, mono = record["vertex"], record["monotone"]
    assert vertex["seconds_per_1000"] == pytest.approx(1000 * vertex["seconds"] / 300)
    assert all(m <= v for v, m in zip(vertex["accuracy"], mono["accuracy"]))
    assert len(vertex["mean_unstable"]) == len(vertex["over_cap"]) == 2


def test_the_audit_finds_no_counterexample_in_certified_balls_and_finds_them_in_balls_5_percent_larger(planar):
    from src.certify.audit import audit
    from src.certify.exact_model import ExactModel

    net, dm, x, labels, pair, cen, out = planar
    exact = ExactModel(net, torch.device("cpu"))
    clean = audit(exact, x, labels, out["radius"], steps=30, restarts=3, batch_size=8)
    assert clean["points"] == int((out["radius"] > 0).sum()) > 0 and clean["counterexamples"] == 0
    assert clean["closest_margin"] > 0
    # where the ball lies on one affine piece the radius is the exact distance to the boundary
    tight = torch.where(out["unstable"] == 0, out["radius"] * 1.05, torch.zeros_like(out["radius"]))
    larger = audit(exact, x, labels, tight, steps=30, restarts=3, batch_size=8)
    assert larger["points"] > 0 and larger["counterexamples"] == larger["points"]
