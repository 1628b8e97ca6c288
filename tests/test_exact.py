"""Exact robustness (src/certify/exact.py) and its balls (src/certify/balls.py).

The truth is computed independently: the distance to the decision boundary over all 2^h activation
patterns of every neuron (tests/references.py: exact_radius, one convex problem per pattern and class,
no stable set, no dual bound), a conic solver's own maximum of a linear function over each ball, and
the network's own solver at every counterexample.
"""
from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch

from references import exact_radius
from src.certify import audit as audit_mod
from src.certify import exact
from src.certify.balls import Ball
from src.certify.exact_model import ExactModel
from src.errors import ConfigError
from src.mondeq import dense
from test_local_certificates import CLASSES, global_pairs, random_net, synthetic_case, worst_margin

VARIANTS = [("l2", False), ("l2", True), ("linf", False), ("linf", True)]


def settings(**given) -> exact.Settings:
    """certify.exact's defaults from conf/robustness.yaml, with `given` on top."""
    from omegaconf import OmegaConf

    from src.cli import CONF_DIR

    defaults = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/robustness.yaml").certify.exact)
    return exact.Settings(**{**defaults, **given})


def conic_max(g: np.ndarray, x0: np.ndarray, radius: float, norm: str, box: bool) -> tuple[float, np.ndarray]:
    x = cp.Variable(len(x0))
    cons = [cp.norm(x - x0, 2 if norm == "l2" else "inf") <= radius] + ([x >= 0, x <= 1] if box else [])
    problem = cp.Problem(cp.Maximize(g @ (x - x0)), cons)
    problem.solve(solver=cp.CLARABEL)
    return problem.value, x.value


@pytest.mark.parametrize("norm,box", VARIANTS)
def test_support_bounds_the_true_maximum_from_above_and_is_tight(norm, box):
    g = torch.Generator().manual_seed(1)
    d, n = 12, 6
    x0 = torch.rand(n, d, generator=g, dtype=torch.float64)
    x0[:, :4] = 0  # on the box's faces, as background pixels are
    radius = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    grads = torch.randn(n, 3, d, generator=g, dtype=torch.float64)
    ball = Ball(x0, radius, norm, *((torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
                                    if box else (None, None)))
    support = ball.support(grads)
    where = ball.maximiser(grads)
    assert ball.rows([i for i in range(n) for _ in range(3)]).contains(
        ball.rows([i for i in range(n) for _ in range(3)]).centre + where.reshape(-1, d) * (1 - 1e-9)).all()
    for i in range(n):
        for k in range(3):
            truth, _ = conic_max(grads[i, k].numpy(), x0[i].numpy(), float(radius[i]), norm, box)
            assert float(support[i, k]) >= truth - 1e-7 * (1 + abs(truth))
            assert float(support[i, k]) <= truth + 1e-6 * (1 + abs(truth))
            assert abs(float(grads[i, k] @ where[i, k]) - truth) <= 1e-6 * (1 + abs(truth))


@pytest.fixture(scope="module")
def planar():
    """A 2-D, width-6 monDEQ with ReLUs that matter and centres inside the box [0, 1]^2."""
    net = random_net(2, 6, m=0.5, seed=4, scale=2.5)
    dm = dense.dense_mondeq(net, (2,))
    x = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        labels = net(x).argmax(1)
    labels[:2] = (labels[:2] + 1) % CLASSES  # misclassified: not robust at radius 0
    return net, dm, x, labels, global_pairs(net)


# `make test-slow` (a minute each); the fast suite's exact checks: the decisions turning at the exact distance
@pytest.mark.slow
@pytest.mark.parametrize("norm,box", VARIANTS)
def test_exact_radii_bracket_the_brute_force_distance_and_meet_it(planar, norm, box):
    """radii_lower <= the exact distance <= radii_upper, within the bisection's precision; every point
    decided on the grid; each counterexample in the ball and box and fooling the network's own solver."""
    net, dm, x, labels, pair = planar
    pair = pair if norm == "l2" else torch.full_like(pair, math.inf)
    steps = 16
    out = exact.exact_radii(dm, x, labels, pair, [0.05, 0.1, 0.2, 0.4], settings(norm=norm, box=box, steps=steps))
    truth = torch.tensor([exact_radius(dm, x[k].numpy(), int(labels[k]), norm, (0.0, 1.0) if box else None)
                          for k in range(len(x))], dtype=torch.float64)
    lower, upper = out["lower"], out["upper"]
    assert (lower <= truth * (1 + 1e-7)).all() and (upper >= truth * (1 - 1e-7) - 1e-8).all()  # truth: a solver's
    assert (lower[:2] == 0).all() and (upper[:2] == 0).all()
    far = truth > 0.4  # robust on the whole grid: no counterexample searched beyond it
    assert (lower[far] == 0.4).all() and upper[far].isinf().all()
    near = ~far & (truth > 0)
    assert near.sum() >= 5
    assert ((upper[near] - lower[near]) <= 2.0 ** -(steps - 4) * upper[near]).all()
    cex = out["counterexample"][upper.isfinite()]
    dist = exact.distance(cex, x[upper.isfinite()], norm)
    torch.testing.assert_close(dist, upper[upper.isfinite()], rtol=1e-12, atol=0)
    if box:
        assert ((cex >= 0) & (cex <= 1)).all()
    with torch.no_grad():
        assert (worst_margin(net, cex, labels[upper.isfinite()]) <= 1e-9).all()


def test_a_decision_turns_at_the_exact_distance_both_ways(planar):
    """Just below a point's exact distance it is robust, just above it is not: both verdicts can fail."""
    net, dm, x, labels, pair = planar
    truth = torch.tensor([exact_radius(dm, x[k].numpy(), int(labels[k]), "linf", (0.0, 1.0))
                          for k in range(2, len(x))], dtype=torch.float64)
    rows = 2 + ((truth > 0.01) & (truth < 1)).nonzero().squeeze(1)
    r = truth[rows - 2]
    s = settings(norm="linf", box=True)
    inf = torch.full_like(pair, math.inf)
    below = exact.decide(dm, x[rows], labels[rows], inf, r * (1 - 1e-4), s)
    above = exact.decide(dm, x[rows], labels[rows], inf, r * (1 + 1e-4), s)
    assert (below["status"] == exact.ROBUST).all() and (above["status"] == exact.NOT_ROBUST).all()
    assert (above["stage"] >= 1).all() and (below["stage"] == 2).any()  # the regions decide some of them


@pytest.mark.parametrize("box", [False, True])
def test_the_branch_and_bound_alone_turns_at_the_exact_distance_both_ways(planar, box):
    """With the regions and PGD switched off, the branch and bound (src/certify/branch.py) decides every
    l_inf ball 1e-4 below a point's exact distance robust and 1e-4 above it not robust, with a verified
    counterexample in the ball; a node budget too small to decide gives undecided."""
    net, dm, x, labels, pair = planar
    truth = torch.tensor([exact_radius(dm, x[k].numpy(), int(labels[k]), "linf", (0.0, 1.0) if box else None)
                          for k in range(2, len(x))], dtype=torch.float64)
    rows = 2 + ((truth > 0.01) & (truth < 1)).nonzero().squeeze(1)
    assert len(rows) >= 5
    r = truth[rows - 2]
    s = settings(norm="linf", box=box, max_unstable=0, attack_steps=0)
    inf = torch.full_like(pair, math.inf)
    below = exact.decide(dm, x[rows], labels[rows], inf, r * (1 - 1e-4), s)
    above = exact.decide(dm, x[rows], labels[rows], inf, r * (1 + 1e-4), s)
    assert (below["status"] == exact.ROBUST).all() and (above["status"] == exact.NOT_ROBUST).all()
    # the local bound settles some balls, the regions those with no unstable neuron (a single region)
    for out in (below, above):
        assert (out["stage"] == 3).sum() >= 5
        assert ((out["programmes"] > 0) == (out["stage"] == 3)).all()
    cex = above["counterexample"]
    assert (exact.distance(cex, x[rows], "linf") <= r * (1 + 1e-4)).all()
    if box:
        assert ((cex >= 0) & (cex <= 1)).all()
    with torch.no_grad():
        assert (worst_margin(net, cex, labels[rows]) <= 1e-9).all()
    starved = exact.decide(dm, x[rows], labels[rows], inf, r * (1 + 1e-4),
                           settings(norm="linf", box=box, max_unstable=0, attack_steps=0, max_nodes=1, tighten=0))
    assert set(starved["status"].tolist()) <= {exact.UNDECIDED, exact.NOT_ROBUST}


def test_over_max_unstable_or_max_solves_is_undecided_never_guessed(planar):
    net, dm, x, labels, pair = planar
    inf = torch.full_like(pair, math.inf)
    radius = torch.full((len(x),), 0.3, dtype=torch.float64)
    full = exact.decide(dm, x, labels, inf, radius, settings(norm="linf", box=False))
    capped = exact.decide(dm, x, labels, inf, radius, settings(norm="linf", box=False, max_unstable=0,
                                                                 attack_steps=0, max_nodes=0))
    assert (full["status"] != exact.UNDECIDED).all()
    changed = capped["status"] != full["status"]
    assert changed.any() and (capped["status"][changed] == exact.UNDECIDED).all()


@pytest.mark.slow
def test_the_audit_finds_counterexamples_just_outside_the_exact_linf_balls(planar):
    """The audit of an exact curve attacks its own balls (l_inf, box): none inside, some 5% beyond."""
    net, dm, x, labels, pair = planar
    out = exact.exact_radii(dm, x, labels, torch.full_like(pair, math.inf), [0.05, 0.1, 0.2, 0.4],
                            settings(norm="linf", box=True, steps=12))
    model = ExactModel(net, torch.device("cpu"))
    box = (torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    inside = audit_mod.audit(model, x, labels, out["lower"], 40, 4, 64, norm="linf", box=box)
    outside = audit_mod.audit(model, x, labels, out["upper"].nan_to_num(posinf=0) * 1.05, 40, 4, 64, norm="linf",
                              box=box)
    assert inside["counterexamples"] == 0 and inside["points"] > 5
    assert outside["counterexamples"] >= 0.8 * outside["points"] > 0


# --------------------------------------------------------------------------- the app

def test_robustness_record_has_an_exact_curve_its_counterexamples_and_an_audit(compose, tmp_path):
    """evaluate() with certify.bound=[local, exact]: the exact curve lies between the local one and PGD's
    bound, its counts add up, its counterexamples are saved, its audit is clean."""
    from src.robustness import evaluate

    cfg = compose(["model=mon_fc", "model.width=8", "m=1", "dataset=synthetic", "dataset.in_shape=[1,3,3]",
                   "dataset.num_classes=3", "certify.bound=[local,exact]", "robustness.device=cpu",
                   "robustness.methods=[certified]", "robustness.progress=false",
                   "certify.eps=[0.05,0.1,0.2,0.5]", "certify.exact.steps=2", "certify.local.steps=4"],
                  config_name="robustness")
    net, images, labels = synthetic_case(30, wrong=3)
    record = evaluate(cfg, net, "sha", tmp_path, images, labels)
    curve = record["certified_curves"]["exact/l2"]
    loc = record["certified_curves"]["local/local"]
    status = curve["status"]
    assert all(r + b + u == 30 for r, b, u in zip(status["robust"], status["not_robust"], status["undecided"]))
    assert all(a >= b for a, b in zip(curve["accuracy"], loc["accuracy"]))
    assert all(lo <= up for lo, up in zip(curve["accuracy"], curve["accuracy_upper"]))
    assert curve["radii_upper"][:3] == [0.0, 0.0, 0.0] and curve["audit"]["counterexamples"] == 0
    assert curve["audit"]["norm"] == "l2" and curve["audit"]["box"]
    found = np.load(tmp_path / "counterexamples_exact_l2.npz")
    assert len(found["index"]) == curve["counterexamples"] >= 3
    assert found["pixels"].shape == (len(found["index"]), 1, 3, 3)
    assert ((found["pixels"] >= 0) & (found["pixels"] <= 1)).all()
    upper = np.array([v for v in curve["radii_upper"] if v is not None])
    np.testing.assert_array_equal(found["eps"], upper)


def test_a_run_of_one_certificate_keeps_the_curves_of_the_others_and_drops_its_own_stale_ones(compose):
    """Each robustness.json entry is compared on its own settings: an l_inf exact run keeps the l2 exact and
    local curves, and drops a PGD entry whose attack settings changed and a local curve whose own changed."""
    from src import provenance
    from src.robustness import _merge, entry_settings
    from src.keys import ROBUSTNESS

    def origin(*overrides):
        cfg = compose(["model=mon_fc", *overrides], config_name="robustness")
        return {"ckpt_sha256": "sha", "settings": provenance.settings(cfg, ROBUSTNESS)}

    def entry(at, name):
        return {"accuracy": [1.0], "provenance": {**at, "settings": entry_settings(at["settings"], name)}}

    before = origin("certify.bound=[local,exact]", "robustness.pgd.steps=5")
    previous = {"certified_curves": {n: entry(before, n) for n in ("exact/l2", "local/local")},
                "pgd": entry(before, "pgd")}
    now = origin("certify.bound=[exact]", "certify.exact.norm=linf")
    merged = _merge(previous, {"certified_curves": {"exact/linf": entry(now, "exact/linf")}}, now)
    assert set(merged["certified_curves"]) == {"exact/l2", "exact/linf", "local/local"} and "pgd" not in merged
    now = origin("certify.bound=[exact]", "certify.exact.norm=linf", "certify.local.steps=3",
                 "robustness.pgd.steps=5")
    merged = _merge(previous, {"certified_curves": {"exact/linf": entry(now, "exact/linf")}}, now)
    assert set(merged["certified_curves"]) == {"exact/l2", "exact/linf"} and "pgd" in merged
    now = origin("certify.bound=[exact]", "robustness.n_test=7")
    assert set(_merge(previous, {}, now).get("certified_curves", {})) == set()


def test_schema_checks_the_exact_keys_and_its_datasets(compose):
    from src import schema

    schema.check(compose(["certify.bound=[exact]", "certify.exact.norm=linf"], config_name="robustness"))
    for key, value, allowed in (("certify.exact.norm", "l1", "l2"),
                                ("certify.exact.box", "maybe", "true"),
                                ("certify.exact.max_unstable", 20, "<= 14"),
                                ("certify.exact.restarts", 0, ">= 1")):
        with pytest.raises(ConfigError, match=rf"{key}='?{value}'?: allowed: .*{allowed}"):
            schema.check(compose([f"{key}={value}"], config_name="robustness"))
    with pytest.raises(ConfigError, match="certify.bound=exact: dataset.std=.* differs between channels"):
        schema.check(compose(["certify.bound=[exact]", "dataset=cifar10", "model=mon_fc"], config_name="robustness"))
    with pytest.raises(ConfigError, match="certify.bound=exact: does not apply to model dnn"):
        schema.check(compose(["certify.bound=[exact]", "model=dnn"], config_name="robustness"))


def test_bench_record_of_the_exact_certificate(compose, capsys):
    """`python -m src.bench bench.exact=[l2,linf]`: one JSON line; per norm the counts of the first
    bench.batch test points add up, fewer points are robust and more not robust at a larger radius."""
    import json

    from src import bench, schema

    cfg = compose(["model=mon_fc", "model.width=8", "m=1", "dataset=synthetic", "dataset.in_shape=[1,3,3]",
                   "dataset.num_classes=3", "bench.exact=[l2,linf]", "bench.batch=12", "bench.threads=1",
                   "bench.exact_eps.l2=[0.05,0.5]", "bench.exact_eps.linf=[0.02,0.3]", "certify.exact.steps=0"],
                  config_name="bench")
    schema.check(cfg)
    record = bench.run(cfg)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert record["points"] == 12 and record["global"] == "sdp_pairwise"
    for norm in ("l2", "linf"):
        status, one = record[norm]["status"], record[norm]
        assert one["eps"] == list(cfg.bench.exact_eps[norm]) and one["box"] is True
        assert all(r + b + u == 12 for r, b, u in zip(status["robust"], status["not_robust"], status["undecided"]))
        assert status["robust"][0] >= status["robust"][1] and status["not_robust"][0] <= status["not_robust"][1]
        assert status["not_robust"][1] > 0 and one["seconds_per_point"] == pytest.approx(one["seconds"] / 12)
