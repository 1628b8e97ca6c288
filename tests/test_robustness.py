"""Certificates (src/certify/rules.py), PGD (src/attack.py) and the robustness app (src/robustness.py).

The soundness tests train small classifiers here, on well separated clusters
of 4x4 "images" in [0, 1], so that margins are non-trivial; L is a valid
upper bound (the product of spectral norms for the DNN, Theorem 1 for the
monDEQ, with its solver run to 1e-6, near float32's floor, so that solver
error cannot move a logit across a certificate's threshold).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from src import attack
from src.certify import rules as certify
from src.mondeq.networks import MonFCNet
from src.mondeq.splitting import SolverConfig
from tests.references import random_search

SHAPE = (1, 4, 4)
MEAN, STD = [0.5], [0.25]
CLASSES = 3


def clusters(n: int, seed: int, shape=SHAPE, classes: int = CLASSES):
    """Pixel images in [0, 1]: class centres in [0.2, 0.8]^d plus small noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.2 + 0.6 * torch.rand((classes, *shape), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, classes, (n,), generator=g)
    images = (centres[labels] + 0.06 * torch.randn((n, *shape), generator=g)).clamp(0, 1)
    return images, labels


def normalised(images, mean=MEAN, std=STD):
    shape = (1, -1, 1, 1)
    return (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def fit(model, images, labels, steps: int, lr: float = 0.02, mean=MEAN, std=STD):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = normalised(images, mean, std)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.eval()


def spectral_product(model) -> float:
    return math.prod(float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2))
                     for m in model.modules() if isinstance(m, nn.Linear))


@pytest.fixture(scope="module")
def data():
    return clusters(96, seed=1)


@pytest.fixture(scope="module")
def dnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, CLASSES))
    model = fit(model, *clusters(256, seed=2), steps=150)
    return model, spectral_product(model)


@pytest.fixture(scope="module")
def mondeq():
    from src.bounds.theorem1 import theorem1

    torch.manual_seed(0)
    solver = SolverConfig(name="pr", alpha=1.0, fwd_tol=1e-6, fwd_max_iter=500, bwd_tol=1e-6, bwd_max_iter=500)
    model = MonFCNet(SHAPE, CLASSES, width=12, m=1.0, solver=solver)
    model = fit(model, *clusters(256, seed=2), steps=60)
    return model, theorem1(model)["value"]


@torch.no_grad()
def logits_of(model, images, mean=MEAN, std=STD):
    return model(normalised(images, mean, std)).double()


def median_radius(logits, labels, lipschitz, rule, std=STD) -> float:
    """A pixel radius at which about half the correctly classified points are certified."""
    margin = certify.margins(logits, labels)
    radii = margin[margin > 0] / (certify.RULES[rule] * lipschitz) * min(std)
    return float(radii.median())


# --------------------------------------------------------------------------- certify.py

def test_margins_and_units():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    assert certify.margins(logits, labels).tolist() == [2.0, -0.5, 0.0]
    assert certify.normalised_radius(0.3, [0.3081]) == pytest.approx(0.3 / 0.3081)
    cifar = [0.2470, 0.2435, 0.2616]
    assert certify.normalised_radius(0.1, cifar) == pytest.approx(0.1 / 0.2435)  # the largest stretch
    # eps = 0: exactly the correctly classified points (a tie is not a certificate)
    for rule in certify.RULES:
        assert certify.certified(certify.gaps_of(logits, labels), 5.0, 0.0, rule).tolist() == [True, False, False]
    # the thresholds: 2 L eps and sqrt(2) L eps, strict
    assert certify.certified(certify.gaps_of(logits, labels), 1.0, 0.999, "paper")[0]
    assert not certify.certified(certify.gaps_of(logits, labels), 1.0, 1.0, "paper")[0]
    assert certify.certified(certify.gaps_of(logits, labels), 1.0, 2 / math.sqrt(2) - 1e-6, "tight")[0]
    assert not certify.certified(certify.gaps_of(logits, labels), 1.0, 2 / math.sqrt(2) + 1e-12, "tight")[0]
    with pytest.raises(ValueError, match="rule"):
        certify.certified(certify.gaps_of(logits, labels), 1.0, 0.1, "loose")


def test_tight_certifies_at_least_paper_and_larger_l_no_more():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (500,), generator=g)
    for eps in (0.0, 0.05, 0.2, 0.5):
        paper = certify.certified(certify.gaps_of(logits, labels), 2.0, eps, "paper")
        tight = certify.certified(certify.gaps_of(logits, labels), 2.0, eps, "tight")
        assert bool((paper <= tight).all())  # every paper certificate is a tight one
        for rule in certify.RULES:
            small = certify.certified(certify.gaps_of(logits, labels), 2.0, eps, rule)
            large = certify.certified(certify.gaps_of(logits, labels), 3.0, eps, rule)
            assert bool((large <= small).all())
    curve = lambda L, rule: certify.certified_curve(certify.gaps_of(logits, labels), labels, L, [0.01, 0.05, 0.1, 0.3], STD, rule)["accuracy"]
    tight, paper = curve(2.0, "tight"), curve(2.0, "paper")
    assert all(t >= p for t, p in zip(tight, paper)) and tight != paper  # strictly more somewhere
    assert all(a >= b for a, b in zip(curve(2.0, "paper"), curve(4.0, "paper")))
    assert all(a >= b for a, b in zip(paper, paper[1:]))  # never rises with eps


def test_pairwise_rule_with_constant_pairs_is_the_tight_rule():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(400, 10, generator=g, dtype=torch.float64)
    logits[:20, 3] = logits[:20, 7]  # some ties
    labels = torch.randint(0, 10, (400,), generator=g)
    rows = torch.arange(20, 40)
    logits[rows, labels[rows]] = logits[rows, (labels[rows] + 1) % 10] = 5.0  # the label tied at the top
    L = 1.7
    matrix = [[0.0 if i == j else L * math.sqrt(2) for j in range(10)] for i in range(10)]
    for eps in (0.0, 0.01, 0.1, 0.3, 1.0):
        assert torch.equal(certify.pairwise_certified(certify.gaps_of(logits, labels), labels, matrix, eps),
                           certify.certified(certify.gaps_of(logits, labels), L, eps, "tight"))
    # a smaller constant for one pair certifies more, a failed solve (None) never certifies
    loose = [row[:] for row in matrix]
    loose[0][1] = loose[1][0] = 0.1
    assert (certify.pairwise_certified(certify.gaps_of(logits, labels), labels, loose, 0.3).long()
            - certify.pairwise_certified(certify.gaps_of(logits, labels), labels, matrix, 0.3).long()).min() >= 0
    failed = [row[:] for row in matrix]
    failed[0][1] = failed[1][0] = None
    got = certify.pairwise_certified(certify.gaps_of(logits, labels), labels, failed, 0.1)
    assert not got[(labels == 0) | (labels == 1)].any()
    assert certify.pairwise_certified(certify.gaps_of(logits, labels), labels, failed, 0.0).equal(certify.certified(certify.gaps_of(logits, labels), L, 0.0))
    curve = certify.certified_curve(certify.gaps_of(logits, labels), labels, matrix, [0.1], STD)
    assert curve["rule"] == "pairwise" and curve["lipschitz"] == matrix


# --------------------------------------------------------------------------- attack.py

def test_foolbox_wrapper_normalises_per_channel():
    shape = (3, 2, 2)
    mean, std = [0.2, 0.5, 0.7], [0.1, 0.3, 0.9]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    images = torch.rand(5, *shape)
    fmodel = attack.foolbox_model(model, mean, std)
    assert torch.allclose(fmodel(images), model(normalised(images, mean, std)), atol=1e-6)
    assert fmodel.bounds == (0.0, 1.0)


@pytest.mark.parametrize("which", ["dnn", "mondeq"])
def test_pgd_stays_in_the_ball_and_the_box(request, data, which):
    model, _ = request.getfixturevalue(which)
    images, labels = data
    fmodel = attack.foolbox_model(model, MEAN, STD)
    torch.manual_seed(0)
    for eps in (0.3, 2.0):
        adv, fooled = attack.pgd(fmodel, images, labels, eps, attack.make_attack(steps=10))
        norms = (adv - images).flatten(1).norm(dim=1)
        assert float(norms.max()) <= eps * (1 + 1e-5)
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        if eps < 1:  # the radius is in pixel units: the attack reaches the sphere
            assert float(norms.max()) > 0.9 * eps
        else:  # a pixel ball larger than the box: the box stops it
            assert bool(((adv == 0) | (adv == 1)).any())
    assert fooled.float().mean() > 0.5  # at eps = 2 (pixels) the attack succeeds: it uses the gradient


@pytest.mark.parametrize("which,rule", [("dnn", "paper"), ("dnn", "tight"), ("mondeq", "tight")])
def test_certified_points_survive_pgd_and_random_search(request, data, which, rule):
    model, L = request.getfixturevalue(which)
    images, labels = data
    logits = logits_of(model, images)
    assert (logits.argmax(1) == labels).double().mean() > 0.8
    base = median_radius(logits, labels, L, rule)
    grid = [0.5 * base, base, 2 * base]
    cert = torch.stack([certify.certified(certify.gaps_of(logits, labels), L, certify.normalised_radius(e, STD), rule)
                        for e in grid])
    assert 0 < int(cert[1].sum()) < len(labels)  # the test has points on both sides
    torch.manual_seed(0)
    out = attack.pgd_accuracy(model, images, labels, grid, MEAN, STD, batch_size=40, steps=30, progress=False)
    assert not (cert & ~out["robust"]).any(), "PGD fooled a certified point"
    g = torch.Generator().manual_seed(0)
    for k, eps in enumerate(grid):
        fooled = random_search(model, images, labels, eps, MEAN, STD, samples=50, generator=g)
        assert not (cert[k] & fooled).any(), "random search fooled a certified point"
    # the ordering certified <= PGD <= clean, per radius
    certified = cert.double().mean(1).tolist()
    assert all(c <= p <= out["clean_accuracy"] for c, p in zip(certified, out["accuracy"]))
    assert out["clean_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    # and the attack is real: beyond the certified radii it fools points
    far = attack.pgd_accuracy(model, images, labels, [10 * base], MEAN, STD, steps=30, progress=False)
    assert far["accuracy"][0] < certified[1]


def test_per_channel_units_are_sound_where_a_mean_std_would_not_be():
    """A linear classifier that only looks at the channel of smallest std: the worst case of the
    pixel ball.  eps / min(std) certifies soundly; eps / mean(std) would certify a flipped point."""
    shape = (3, 2, 2)
    mean, std = [0.5, 0.5, 0.5], [0.1, 0.4, 0.4]
    w = torch.zeros(2, 12)
    w[0, :4], w[1, :4] = 1.0, -1.0  # f_0 - f_1 = 2 sum(channel 0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False)).eval()
    model[1].weight.data = w
    L = float(torch.linalg.matrix_norm(w, ord=2))  # exact
    images = torch.full((1, *shape), 0.5)
    images[0, 0] = 0.52  # a small positive margin for class 0
    labels = torch.tensor([0])
    logits = logits_of(model, images, mean, std)
    eps = 0.5 * float(certify.margins(logits, labels)) / (math.sqrt(2) * L) * 0.25  # certified at mean std
    wrong = eps / (sum(std) / 3)
    right = certify.normalised_radius(eps, std)
    assert certify.certified(certify.gaps_of(logits, labels), L, wrong, "tight").item()
    assert not certify.certified(certify.gaps_of(logits, labels), L, right, "tight").item()
    adv = images.clone()
    adv[0, 0] -= eps / 2  # the ball's worst direction: all of eps on channel 0 (norm 4 * (eps/2)^2 = eps^2)
    assert float((adv - images).norm()) == pytest.approx(eps)
    assert model(normalised(adv, mean, std)).argmax(1).item() == 1  # flipped inside the pixel ball
    robust = attack.pgd_accuracy(model, images, labels, [eps], mean, std, progress=False)["robust"]
    assert not robust[0, 0]  # foolbox finds it too


def test_cumulative_pgd_never_rises():
    robust = torch.tensor([[True, True, False], [True, False, True], [False, True, True]])
    got = attack.cumulative(robust, [0.3, 0.1, 0.2])  # radius order: row 1, row 2, row 0
    assert got.tolist() == [[False, False, False], [True, False, True], [False, False, True]]


# --------------------------------------------------------------------------- the app

def test_robustness_keys_stay_out_of_the_run_dir_name(compose):
    keys = ["robustness.n_test=5", "robustness.methods=pgd", "certify.bound=sdp_diag", "certify.rule=tight",
            "certify.eps=[0.1]"]
    assert compose(keys, hydra=True, config_name="robustness").hydra.run.dir.endswith("/defaults")
    cfg = compose(["dataset=cifar10"], config_name="robustness")
    from src.robustness import default_grid

    assert default_grid(cfg, "certified")[-1] == pytest.approx(0.02)
    mnist = compose(["dataset=mnist5k"], config_name="robustness")
    assert default_grid(mnist, "certified")[0] == pytest.approx(0.01)
    assert default_grid(mnist, "certified")[-1] == pytest.approx(0.2)
    assert default_grid(mnist, "pgd") == pytest.approx([0.1 * k for k in range(1, 16)])


@pytest.mark.slow
def test_app_end_to_end_on_a_trained_checkpoint(run_app, tmp_path, tiny):
    """src.run trains; src.robustness with extra overrides finds the same run dir and writes
    robustness.json; a second run with another method keeps the first one's curves."""
    proc = run_app("run", *tiny, "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/model.ckpt")]
    fast = [*tiny, "robustness.n_test=32", "robustness.pgd.steps=5", "robustness.pgd.eps=[0.5,1.0]",
            "robustness.progress=false"]
    proc = run_app("robustness", *fast, "robustness.methods=[certified,pgd]",
                   "certify.bound=[theorem1,sdp_diag]", "certify.rule=[paper,tight]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "robustness.json").read_text())
    assert {"certified", "pgd", "clean_accuracy", "n_test", "dataset", "profile", "model"} <= set(record)
    assert (record["n_test"], record["dataset"], record["profile"]) == (32, "synthetic", "tiny")
    cert = record["certified"]
    assert {"eps", "accuracy", "lipschitz", "bound", "rule"} <= set(cert)
    assert (cert["bound"], cert["rule"]) == ("theorem1", "paper") and cert["lipschitz"] > 0
    assert len(cert["eps"]) == len(cert["accuracy"]) == 20 and cert["eps"][-1] == pytest.approx(0.2)
    assert set(record["certified_curves"]) == {"theorem1/paper", "theorem1/tight", "sdp_diag/paper",
                                               "sdp_diag/tight"}
    assert record["certified_curves"]["sdp_diag/paper"]["lipschitz"] <= cert["lipschitz"] * (1 + 1e-6)
    pgd = record["pgd"]
    assert pgd["eps"] == [0.5, 1.0] and len(pgd["accuracy"]) == 2
    for curve in record["certified_curves"].values():
        assert all(0 <= a <= record["clean_accuracy"] for a in curve["accuracy"])
    assert all(a <= record["clean_accuracy"] for a in pgd["accuracy"])
    assert all(sum(c["certified_but_attacked"]) == 0 for c in record["checks"].values())

    # L from the run dir's bounds.json when its entry is of this checkpoint and these settings
    assert run_app("bound", *tiny, "bound.methods=[theorem1]", "bound.test_error=false").returncode == 0
    bounds = json.loads((run_dir / "bounds.json").read_text())
    assert bounds["provenance"]["theorem1"]["settings"]["m"] == 1.0  # m recorded with every entry
    proc = run_app("robustness", *fast, "robustness.methods=[certified]", "certify.bound=theorem1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((run_dir / "robustness.json").read_text())
    assert again["certified"]["source"] == "bounds.json"
    assert again["certified"]["lipschitz"] == bounds["upper"]["theorem1"]
    assert again["pgd"] == pgd and "sdp_diag/tight" in again["certified_curves"]  # kept from the first run
    assert again["certified"]["provenance"]["settings"]["robustness"]["n_test"] == 32
    assert again["certified"]["audit"]["counterexamples"] == 0 and again["certified"]["audit"]["points"] > 0
    # an entry of other settings (m) is not reused: computed again, with a line saying why
    bounds["provenance"]["theorem1"]["settings"]["m"] = 2.0
    bounds["upper"]["theorem1"] = 1e-3
    (run_dir / "bounds.json").write_text(json.dumps(bounds))
    proc = run_app("robustness", *fast, "robustness.methods=[certified]", "certify.bound=theorem1")
    assert proc.returncode == 0 and "m: 2.0 recorded, 1.0 now" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert json.loads((run_dir / "robustness.json").read_text())["certified"]["source"] == "computed"
    # a wrong constant under the right provenance: the audit finds the counterexamples and the app fails
    bounds["provenance"]["theorem1"]["settings"]["m"] = 1.0
    (run_dir / "bounds.json").write_text(json.dumps(bounds))
    proc = run_app("robustness", *fast, "robustness.methods=[certified]", "certify.bound=theorem1")
    assert proc.returncode != 0 and "error: the audit found counterexamples" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    wrong = json.loads((run_dir / "robustness.json").read_text())["certified"]
    assert wrong["lipschitz"] == 1e-3 and wrong["audit"]["counterexamples"] > 0
    # a recorded value that is no Lipschitz constant (negative, text) is not reused either
    bounds["upper"]["theorem1"] = -1.0
    (run_dir / "bounds.json").write_text(json.dumps(bounds))
    proc = run_app("robustness", *fast, "robustness.methods=[certified]", "certify.bound=theorem1")
    assert proc.returncode == 0 and "is no Lipschitz constant" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert json.loads((run_dir / "robustness.json").read_text())["certified"]["source"] == "computed"
    # an entry of another checkpoint's bounds is not used: sdp_diag is computed again
    bounds["provenance"]["sdp_diag"] = {**bounds["provenance"]["theorem1"], "ckpt_sha256": "another"}
    bounds["upper"]["sdp_diag"] = 1e-4
    (run_dir / "bounds.json").write_text(json.dumps(bounds))
    proc = run_app("robustness", *fast, "robustness.methods=[certified]", "certify.bound=sdp_diag")
    assert proc.returncode == 0, proc.stderr[-3000:]
    third = json.loads((run_dir / "robustness.json").read_text())
    assert third["certified"]["source"] == "computed" and third["certified"]["lipschitz"] > 1e-3


def test_conv_mondeqs_are_certified_with_the_pooled_theorem1(run_app, tmp_path, tiny):
    """A conv monDEQ: theorem1_pooled's L is at most theorem1's, so it certifies at least as much at every
    radius, and PGD breaks none of its certified points."""
    conv = [*tiny, "model=mon_conv", "model.channels=4", "logger=none"]
    assert run_app("run", *conv).returncode == 0
    proc = run_app("robustness", *conv, "robustness.n_test=32", "robustness.pgd.steps=5", "robustness.progress=false",
                   "robustness.pgd.eps=[0.05,0.1]", "certify.bound=[theorem1,theorem1_pooled]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "outputs").glob("*/*/robustness.json")
    curves = json.loads(path.read_text())["certified_curves"]
    plain, pooled = curves["theorem1/paper"], curves["theorem1_pooled/paper"]
    assert 0 < pooled["lipschitz"] <= plain["lipschitz"]
    assert all(p >= a for p, a in zip(pooled["accuracy"], plain["accuracy"]))
    assert sum(json.loads(path.read_text())["checks"]["theorem1_pooled/paper"]["certified_but_attacked"]) == 0


def test_rounding_can_never_tip_a_comparison_to_certified():
    """A gap above its threshold by less than float64 rounding could hide is not a certificate; the
    certified radius stops short of that zone, and a clear gap still certifies."""
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    gaps = certify.gaps_of(logits, labels)
    near = 2.0 / (2 * 1.0) * (1 - 1e-12)  # paper rule: threshold 2 L eps = 2 (1 - 1e-12), gap 2
    assert not certify.certified(gaps, 1.0, near, "paper")[0]
    assert certify.certified(gaps, 1.0, 0.99, "paper")[0]
    curve = {"rule": "paper", "lipschitz": 1.0}
    radius = float(certify.certified_radii(curve, gaps, labels)[0])
    assert radius < near and certify.certified(gaps, 1.0, radius * (1 - 1e-9), "paper")[0]
    assert not certify.certified(gaps, 1.0, radius * (1 + 1e-9), "paper")[0]
