"""Exact robustness of monDEQ classifiers over l2 and l_inf balls, with or without the pixel box.

A ReLU monDEQ has one equilibrium per input.  On a ball S where the local certificate proves a set of
neurons stable (src/certify/local.py: ball_check, the vertex bound over S), only the n unstable neurons
can switch, and on the region R_P of S where they follow a pattern P in {0, 1}^n the equilibrium is
affine in the input: with D the diagonal of the whole pattern (stable ones fixed),

    z = K_P u,  K_P = (I - D W)^-1 D,  u = U x + b,  v = W z + u = (W K_P + I) u,

and R_P is cut out of S by the linear constraints s_i v_i >= 0 (s_i = +1 where P switches i on, -1
where off).  The regions cover S, so min over S of each margin f_y - f_j is the smallest of 2^n convex
problems (an LP over an l_inf ball, an SOCP over an l2 ball): an exact description, not a relaxation.

Robust is proved per region and class j by weak duality: for every lambda >= 0,

    min_{x in R_P} f_y - f_j  >=  a - lambda^T alpha - sigma_S(-U^T (rho - B^T lambda)),

a = f_y - f_j of the affine piece at the centre, rho its u-gradient, (alpha, B) the region's constraints
at the centre and their u-gradients, sigma_S the ball's support function bounded from above
(src/certify/balls.py).  lambda = 0 already discards most regions; the others get lambda from a conic
solver (cvxpy with Clarabel; an elastic formulation, so an empty region gives multipliers too).  The
bound is evaluated here in float64 whatever the solver's accuracy, and must exceed ROUNDING of the
magnitudes summed: the solver only proposes.

Not robust is shown by an input: found by PGD on the exact model (cheap, first) or as a region problem's
minimiser, and kept only when it lies in the ball and box and the exact equilibrium there (solved for
its activation pattern and verified, src/mondeq/dense.py) has a margin <= 0 beyond rounding.

Points with more than `max_unstable` unstable neurons or `max_solves` open regions go to a branch and
bound over the unstable neurons (src/certify/branch.py: linear programmes by HiGHS, bounds proved here).
Undecided (never guessed): what the branch and bound leaves open after `max_nodes` nodes, or a region
the solvers leave unresolved.  Radii are pixel units (the dense view is moved to pixel
coordinates p = x std + mean, so the box is [0, 1] and the ball is the attack's for any channel count).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import torch

from ..errors import ConfigError
from ..mondeq.dense import DenseMonDEQ, dense_mondeq, equilibrium
from .balls import Ball, distance
from .branch import branch_and_bound
from .local import centres, check_applies as local_applies, pair_constants, ball_check
from ..progress import ticking
from .rules import ROUNDING

log = logging.getLogger(__name__)

ROBUST, NOT_ROBUST, UNDECIDED = 1, 0, -1
CANDIDATES = 256          # regions whose lambda = 0 minimiser is tried as a counterexample, per decision


def check_applies(net) -> None:
    local_applies(net)


def per_coordinate(values, shape) -> torch.Tensor:
    """Per-channel values (mean or std) repeated over each channel's coordinates of a flattened input."""
    per = math.prod(shape[1:])
    out = torch.tensor([float(v) for v in values], dtype=torch.float64).repeat_interleave(per)
    if len(out) != shape[0] * per:
        raise ConfigError(f"certify.bound=exact: mean/std have {len(values)} channels, the inputs {shape[0]}")
    return out


def pixel_view(dm: DenseMonDEQ, mean, std, shape) -> DenseMonDEQ:
    """dm on pixel inputs p (x = (p - mean) / std per channel): U / std, b - U mean / std."""
    s, mu = per_coordinate(std, shape), per_coordinate(mean, shape)
    U = dm.U / s
    return dataclasses.replace(dm, U=U, b=dm.b - U @ mu, G=U @ U.T)


# --------------------------------------------------------------------------- verified counterexamples

def verified(dm: DenseMonDEQ, ball: Ball, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) x (ball.pulled towards the centre) lies in the ball and box and the exact model's worst
    margin there is <= 0 beyond rounding.  Rows of x that are nan are not."""
    x = ball.pulled(x)
    ok_x = ~x.isnan().any(1)
    x = torch.where(ok_x[:, None], x, ball.centre)
    z, _, ok = equilibrium(dm, x)
    logits = z @ dm.C + dm.b_out
    own = logits.gather(1, labels[:, None])
    gap = own - logits
    size = own.abs() + logits.abs()
    other = torch.ones_like(gap, dtype=torch.bool).scatter_(1, labels[:, None], False)
    fooled = ((gap + ROUNDING * size <= 0) & other).any(1)
    return ok_x & ok & fooled & ball.contains(x)


def attack(dm: DenseMonDEQ, ball: Ball, labels: torch.Tensor, steps: int, restarts: int, seed: int = 0):
    """PGD on the exact model (float64, the equilibrium of each iterate's own pattern, its exact gradient)
    minimising the worst margin in the ball: (x (N, d), found (N,)) with the verified counterexamples."""
    N, d = ball.centre.shape
    g = torch.Generator().manual_seed(int(seed))
    best = torch.full_like(ball.centre, math.nan)
    found = torch.zeros(N, dtype=torch.bool)
    eye = torch.eye(dm.W.shape[0], dtype=torch.float64)
    diff = dm.C[:, labels].T[:, :, None] - dm.C[None]                                # (N, h, classes)
    step = 2.5 * ball.radius / max(steps, 1)
    for k in range(restarts):
        x = ball.centre.clone()
        if k:
            x = ball.project(ball.centre + ball.radius[:, None] * (2 * torch.rand(N, d, generator=g,
                                                                                  dtype=torch.float64) - 1))
        z = None
        for _ in range(steps):
            z, v, ok = equilibrium(dm, x, z)
            D = (v > 0).double()
            logits = z @ dm.C + dm.b_out
            gap = (logits.gather(1, labels[:, None]) - logits).scatter(1, labels[:, None], math.inf)
            j = gap.argmin(1)
            c = diff[torch.arange(N), :, j]                                                # (N, h)
            r = torch.linalg.solve(eye - dm.W.T * D[:, None, :], c.unsqueeze(-1)).squeeze(-1)
            x = ball.descend(x, (D * r) @ dm.U, step)                                      # d gap / dx
            hit = ~found & verified(dm, ball, labels, x)
            best[hit] = ball.pulled(x)[hit]
            found |= hit
            if found.all():
                return best, found
    return best, found


# --------------------------------------------------------------------------- the regions of one point

@dataclasses.dataclass
class Regions:
    """The affine pieces of one point's equilibrium over its ball, for each class j != y."""
    a: torch.Tensor       # (P, J) the margins of each piece at the centre
    g: torch.Tensor       # (P, J, d) their input gradients
    alpha: torch.Tensor   # (P, n) the region constraints at the centre (>= 0 inside the region)
    B: torch.Tensor       # (P, n, d) their input gradients


def regions(dm: DenseMonDEQ, x0: torch.Tensor, label: int, active: torch.Tensor, unstable: torch.Tensor):
    """Every pattern of the unstable neurons (indices, n) with the stable ones fixed (`active`, h bool)."""
    h, n = dm.W.shape[0], len(unstable)
    bits = ((torch.arange(2 ** n)[:, None] >> torch.arange(n)) & 1).double()           # (P, n)
    D = active.double().expand(len(bits), h).clone()
    D[:, unstable] = bits
    eye = torch.eye(h, dtype=torch.float64)
    K = torch.linalg.solve(eye - D[:, :, None] * dm.W, torch.diag_embed(D))              # (I - D W)^-1 D
    u0 = dm.U @ x0 + dm.b
    others = [j for j in range(dm.C.shape[1]) if j != label]
    diff = dm.C[:, [label]] - dm.C[:, others]                                           # (h, J)
    rho = K.transpose(1, 2) @ diff                                                       # (P, h, J)
    a = (rho * u0[None, :, None]).sum(1) + (dm.b_out[label] - dm.b_out[others])
    sign = 2 * bits - 1                                                                  # (P, n)
    beta = sign[:, :, None] * (dm.W @ K + eye)[:, unstable, :]                           # (P, n, h)
    return Regions(a=a, g=torch.einsum("phj,hd->pjd", rho, dm.U), alpha=beta @ u0, B=beta @ dm.U), others


def lower_bound(ball: Ball, reg: Regions, lam: torch.Tensor, p, j):
    """Weak duality's bound of the margin j over region p for multipliers lam >= 0, and its magnitude."""
    h = reg.g[p, j] - (lam[..., None] * reg.B[p]).sum(-2)
    lam_alpha = (lam * reg.alpha[p]).sum(-1)
    value = reg.a[p, j] - lam_alpha - ball.support(-h.unsqueeze(0)).squeeze(0)
    size = reg.a[p, j].abs() + (lam * reg.alpha[p].abs()).sum(-1) + ball.magnitude(h.unsqueeze(0)).squeeze(0)
    return value, size


class RegionSolver:
    """The conic problem of one region and class (cvxpy, Clarabel), built once per point and reused."""

    def __init__(self, ball: Ball, n: int):
        import cvxpy as cp

        d = ball.centre.shape[1]
        self.delta, self.slack = cp.Variable(d), cp.Variable(n, nonneg=True)
        self.g, self.B, self.alpha = cp.Parameter(d), cp.Parameter((n, d)), cp.Parameter(n)
        self.penalty = cp.Parameter(nonneg=True)
        self.rows = self.alpha + self.B @ self.delta + self.slack >= 0
        cons = [self.rows]
        lo, hi = ball.interval((1, d))
        lo, hi = lo.view(-1).numpy(), hi.view(-1).numpy()
        if ball.norm == "l2":
            cons.append(cp.norm(self.delta, 2) <= float(ball.radius[0]))
        finite = torch.isfinite(torch.as_tensor(lo))
        if finite.any():
            idx = finite.nonzero().squeeze(1).numpy()
            cons += [self.delta[idx] >= lo[idx], self.delta[idx] <= hi[idx]]
        self.problem = cp.Problem(cp.Minimize(self.g @ self.delta + self.penalty * cp.sum(self.slack)), cons)

    def solve(self, g, B, alpha, penalty):
        """(lambda, delta) or None when the solver fails."""
        import cvxpy as cp

        self.g.value, self.B.value, self.alpha.value = g.numpy(), B.numpy(), alpha.numpy()
        self.penalty.value = float(penalty)
        try:
            self.problem.solve(solver=cp.CLARABEL)
        except cp.error.SolverError:
            return None
        if self.delta.value is None or self.rows.dual_value is None:
            return None
        lam = torch.as_tensor(self.rows.dual_value, dtype=torch.float64).clamp_min(0)
        return lam, torch.as_tensor(self.delta.value, dtype=torch.float64)


def decide_regions(dm: DenseMonDEQ, ball: Ball, label: int, stable: torch.Tensor, v0: torch.Tensor,
                   max_unstable: int, max_solves: int):
    """(status, counterexample (d,) or None, solves) of one point (ball: its one row)."""
    unstable = (~stable).nonzero().squeeze(1)
    if len(unstable) > max_unstable:
        return UNDECIDED, None, 0
    x0 = ball.centre[0]
    reg, others = regions(dm, x0, label, stable & (v0 > 0), unstable)
    P, J = reg.a.shape
    p, j = torch.arange(P).repeat_interleave(J), torch.arange(J).repeat(P)
    value, size = lower_bound(ball, reg, torch.zeros(len(p), len(unstable), dtype=torch.float64), p, j)
    open_ = (value - ROUNDING * size <= 0).nonzero().squeeze(1)
    if len(open_) == 0:
        return ROBUST, None, 0
    labels = torch.tensor([label])
    # lambda = 0's minimisers: the minimum itself where they fall in their region (always, when n = 0)
    first = open_[value[open_].argsort()][:CANDIDATES]
    many = ball.rows([0] * len(first))
    candidates = many.project(x0 + ball.maximiser(-reg.g[p[first], j[first]][None])[0])
    hit = verified(dm, many, labels.expand(len(first)), candidates).nonzero().squeeze(1)
    if len(hit):
        return NOT_ROBUST, many.pulled(candidates)[hit[0]], 0
    if len(unstable) == 0 or len(open_) > max_solves:
        return UNDECIDED, None, 0
    solver = RegionSolver(ball, len(unstable))
    undecided = False
    for k in open_[value[open_].argsort()].tolist():  # the most promising regions first
        pk, jk = int(p[k]), int(j[k])
        scale = float(reg.a[pk, jk].abs() + ball.magnitude(reg.g[pk, jk][None])[0] + 1)
        rows = ball.magnitude(reg.B[pk][None])[0].clamp_min(1e-12)
        found = solver.solve(reg.g[pk, jk], reg.B[pk], reg.alpha[pk], 1e4 * scale / float(rows.min()))
        if found is None:
            undecided = True
            continue
        lam, delta = found
        candidate = ball.project((x0 + delta)[None])
        if verified(dm, ball, labels, candidate)[0]:
            return NOT_ROBUST, ball.pulled(candidate)[0], 0
        bound, bsize = lower_bound(ball, reg, lam[None], torch.tensor([pk]), torch.tensor([jk]))
        if not bool(bound[0] - ROUNDING * bsize[0] > 0):
            undecided = True
    return (UNDECIDED if undecided else ROBUST), None, len(open_)


# --------------------------------------------------------------------------- decisions and radii

@dataclasses.dataclass
class Settings:
    """certify.exact.* (conf/robustness.yaml says what each is)."""
    norm: str
    box: bool
    max_unstable: int
    max_solves: int
    refine: int
    attack_steps: int
    restarts: int
    steps: int
    max_nodes: int
    tighten: int


def decide(dm: DenseMonDEQ, x0: torch.Tensor, labels: torch.Tensor, pair: torch.Tensor, radius: torch.Tensor,
           s: Settings, seed: int = 0) -> dict:
    """Each point's status at its radius (pixel units), and a verified counterexample where not robust.

    Returns {status (N,) ROBUST/NOT_ROBUST/UNDECIDED, counterexample (N, d) nan where none, stage (N,)
    0 local, 1 attack, 2 regions, 3 branch and bound (src/certify/branch.py), -1 none, solves (N,) region
    solves, programmes (N,) linear programmes of the branch and bound}.
    """
    N, d = x0.shape
    box = (torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)) if s.box else (None, None)
    ball = Ball(x0, radius, s.norm, *box)
    status = torch.full((N,), UNDECIDED, dtype=torch.long)
    stage = torch.full((N,), -1, dtype=torch.long)
    solves = torch.zeros(N, dtype=torch.long)
    cex = torch.full_like(x0, math.nan)
    cen = centres(dm, x0, labels, pair)
    wrong = verified(dm, Ball(x0, torch.zeros(N, dtype=torch.float64), s.norm, *box), labels, x0)
    status[wrong], stage[wrong], cex[wrong] = NOT_ROBUST, 1, x0[wrong]
    local = ball_check(dm, cen, ball, s.max_unstable, s.refine)
    proved = local["certified"] & (status == UNDECIDED)
    status[proved], stage[proved] = ROBUST, 0
    rows = (status == UNDECIDED).nonzero().squeeze(1)
    if len(rows):
        found_x, found = attack(dm, ball.rows(rows), labels[rows], s.attack_steps, s.restarts, seed)
        hit = rows[found]
        status[hit], stage[hit], cex[hit] = NOT_ROBUST, 1, found_x[found]
    left = (status == UNDECIDED).nonzero().squeeze(1).tolist()
    for i in ticking(left, len(left), f"exact {s.norm}: regions", "points"):
        if not (local["found"][i] and cen.ok[i]):
            continue
        verdict, point, count = decide_regions(dm, ball.rows([i]), int(labels[i]), local["stable"][i],
                                               cen.v0[i], s.max_unstable, s.max_solves)
        status[i], solves[i] = verdict, count
        if verdict != UNDECIDED:
            stage[i] = 2
        if point is not None:
            cex[i] = point
    programmes = torch.zeros(N, dtype=torch.long)
    left = (status == UNDECIDED).nonzero().squeeze(1).tolist()  # too many unstable neurons or regions
    for i in ticking(left if s.max_nodes else [], len(left), f"exact {s.norm}: branch and bound", "points"):
        if not cen.ok[i]:
            continue
        one = ball.rows([i])
        verdict, point, count = branch_and_bound(
            dm, one, int(labels[i]), cen.v0[i], s.max_nodes, s.tighten,
            lambda x, one=one, i=i: verified(dm, one.rows([0] * len(x)), labels[[i] * len(x)], x))
        status[i], programmes[i] = verdict, count
        if verdict != UNDECIDED:
            stage[i] = 3
        if point is not None:
            cex[i] = one.pulled(point[None])[0]
    return {"status": status, "counterexample": cex, "stage": stage, "solves": solves, "programmes": programmes}


def exact_radii(dm: DenseMonDEQ, x0: torch.Tensor, labels: torch.Tensor, pair: torch.Tensor, eps: list[float],
                s: Settings, seed: int = 0) -> dict:
    """Per point: radii_lower (robust on every ball of radius <= it: proved), radii_upper (the distance of
    the nearest verified counterexample; inf where none), from decisions on the grid `eps` (ascending
    radii) and then `s.steps` bisection steps of [lower, upper]; the counterexamples themselves."""
    N = len(x0)
    lower = torch.zeros(N, dtype=torch.float64)
    upper = torch.full((N,), math.inf, dtype=torch.float64)
    nearest = torch.full_like(x0, math.nan)
    stages = torch.zeros(4, dtype=torch.long)
    solves = programmes = 0

    def record(rows, radius):
        nonlocal solves, programmes
        out = decide(dm, x0[rows], labels[rows], pair, radius, s, seed)
        robust = out["status"] == ROBUST
        lower[rows[robust]] = torch.maximum(lower[rows[robust]], radius[robust])
        bad = (out["status"] == NOT_ROBUST).nonzero().squeeze(1)
        dist = distance(out["counterexample"][bad], x0[rows[bad]], s.norm)
        closer = dist < upper[rows[bad]]
        upper[rows[bad[closer]]] = dist[closer]
        nearest[rows[bad[closer]]] = out["counterexample"][bad[closer]]
        for k in range(4):
            stages[k] += int((out["stage"] == k).sum())
        solves += int(out["solves"].sum())
        programmes += int(out["programmes"].sum())
        return out["status"]

    undecided_at = torch.zeros(N, dtype=torch.bool)
    for e in sorted(eps):
        rows = ((upper > e) & ~undecided_at).nonzero().squeeze(1)   # a counterexample within e settles it
        rows = rows[lower[rows] < e]
        if len(rows):
            start = time.perf_counter()
            status = record(rows, torch.full((len(rows),), e, dtype=torch.float64))
            undecided_at[rows[status == UNDECIDED]] = True
            log.info(f"exact {s.norm} eps {e:g}: {int((lower >= e).sum())} robust, {int((upper <= e).sum())} not "
                     f"robust, {N - int((lower >= e).sum()) - int((upper <= e).sum())} undecided of {N} "
                     f"({len(rows)} searched at this radius, {time.perf_counter() - start:.0f} s)")
    stuck = undecided_at.clone()
    for _ in range(s.steps):
        rows = (~stuck & upper.isfinite() & (upper > lower)).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        mid = (lower[rows] + upper[rows]) / 2
        status = record(rows, mid)
        stuck[rows[status == UNDECIDED]] = True
    return {"lower": lower, "upper": upper, "counterexample": nearest,
            "stages": {"local": int(stages[0]), "attack": int(stages[1]), "regions": int(stages[2]),
                       "branch": int(stages[3])},
            "solves": solves, "programmes": programmes}


def curve(net, x: torch.Tensor, labels: torch.Tensor, constant, eps, settings, *, pixels, mean, std) -> dict:
    """The certificate's curve (src/certify/registry.py): exact robust accuracy over pixel-unit eps, with
    per-point radii_lower / radii_upper, and the counterexamples (`_counterexamples`, for the app to save).
    The balls are centred at the images themselves (`pixels`, as given: x is their normalised float32)."""
    start = time.perf_counter()
    s = Settings(**dict(settings))
    shape = tuple(x.shape[1:])
    dm = pixel_view(dense_mondeq(net, shape), mean, std, shape)
    pixels = pixels.double().flatten(1)
    pair = pair_constants(constant, dm.C.shape[1]) / min(float(v) for v in std)
    if s.norm != "l2":
        pair = torch.full_like(pair, math.inf)  # the global constants are l2's
    out = exact_radii(dm, pixels, labels, pair, [float(e) for e in eps], s)
    lower, upper = out["lower"], out["upper"]
    eps = [float(e) for e in eps]
    robust = [int((lower >= e).sum()) for e in eps]
    not_robust = [int((upper <= e).sum()) for e in eps]
    n = max(len(labels), 1)
    idx = upper.isfinite().nonzero().squeeze(1)
    cex = out["counterexample"][idx]
    with torch.no_grad():
        normalised = (cex - per_coordinate(mean, shape)) / per_coordinate(std, shape)
        device = next(net.parameters()).device
        predicted = net(normalised.view(-1, *shape).to(device, torch.float32)).argmax(1).cpu() if len(idx) else \
            torch.zeros(0, dtype=torch.long)
    float32_fooled = predicted != labels[idx]
    scale = min(float(v) for v in std)
    return {"eps": eps, "eps_normalised": [e / scale for e in eps],
            "accuracy": [r / n for r in robust],
            "accuracy_upper": [(len(labels) - b) / n for b in not_robust],
            "status": {"robust": robust, "not_robust": not_robust,
                       "undecided": [len(labels) - r - b for r, b in zip(robust, not_robust)]},
            "norm": s.norm, "box": s.box,
            "radii": lower.tolist(), "radii_lower": lower.tolist(),
            "radii_upper": [v if math.isfinite(v) else None for v in upper.tolist()],
            "radii_normalised": (lower / scale).tolist(),
            "radius_semantics": "robust at eps iff eps <= radii_lower; not robust iff eps >= radii_upper "
                                "(pixel units); undecided between",
            "stages": out["stages"], "region_solves": out["solves"], "branch_programmes": out["programmes"],
            "counterexamples": int(len(idx)), "counterexamples_float32_fooled": int(float32_fooled.sum()),
            **dataclasses.asdict(s), "seconds": time.perf_counter() - start,
            "_counterexamples": {"index": idx.numpy(), "eps": upper[idx].numpy(),
                                 "pixels": cex.view(-1, *shape).numpy(), "float32_fooled": float32_fooled.numpy()}}
