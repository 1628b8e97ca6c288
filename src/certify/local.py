"""Per-input certified l2 radii of monDEQ classifiers: local Lipschitz bounds over a ball.

Notation of src/bounds/theorem1.py: z = relu(v), v = W z + u, u = U x + b, logits
f = C^T z + b_out (C: the read-out pulled back to z, `readout_rows`).  Around a
centre x0 with equilibrium z0, v0, every x of the ball B(x0, eps) has

    dz = D (W dz + U dx),   D = diag(d),   d_i = (relu(v_i) - relu(v0_i)) / (v_i - v0_i) in [0, 1]

(the secant slopes), so dz = (I - D W)^-1 D U dx (I - D W is invertible for
every D in [0, 1]^h: I - W is strongly monotone).  A neuron is *stable* on the
ball when v_i keeps the sign of v0_i there: its slope is then exactly 1 or 0.

Vertex bound (`vertex`).  Any linear output o = c^T z + e^T u (a pre-activation
v_i, a margin f_y - f_j) changes by phi(d) = (c^T (I - D W)^-1 D + e^T) U dx.
By Sherman-Morrison phi is linear-fractional in each d_i with the others fixed,
without a pole in [0, 1], hence monotone in each coordinate: its extremes over
a box of slopes are attained at a vertex.  So the largest change over the ball
and the box is eps * max over the 2^n vertices of ||grad o|| (n unstable
neurons): the exact local Lipschitz constant of o over that slope box.  The
stable neurons are eliminated once per point (Schur complement), leaving one
n x n solve per vertex.

Monotone bound (`monotone`, the cheaper comparison).  With the provably
inactive neurons removed, the system stays monotone with the same m, so
||dz|| <= ||U_K|| eps / m (K: the other neurons) and |dv_i| <= (||W_iK|| ||U_K||
/ m + ||U_i||) eps; margins move by at most ||c_K|| ||U_K|| eps / m.

Why a guessed stable set is sound (both bounds).  Take S, claimed stable, and
bounds rho_i with eps * rho_i < |v0_i| for i in S, where rho_i bounds ||grad v_i||
over every slope box with S's slopes fixed.  If some neuron of S changed sign
on a ray x0 + t dx, take the first such t: before it, every secant slope lies
in the box, so |v_i - v0_i| <= t eps rho_i < |v0_i| for all of S: no sign
change, a contradiction.  The stable set is found from above: start with every
neuron stable and drop those that fail until none does (the largest such set).
The unstable neurons' slopes are then narrowed soundly: with |v_i - v0_i| <= r_i,
a neuron active at x0 has slope >= v0_i / r_i, one inactive at x0 slope <=
1 - |v0_i| / r_i; each narrowing uses bounds already proved.

A point is certified at eps when every margin f_y - f_j exceeds eps times
min(its local constant, the global class-pair constant); its certified radius
is found by bisection between the global radius and the radius of the centre's
affine piece (an upper limit: the local constant is never below the centre's
gradient norm).  All of it runs in float64 on an equilibrium recomputed exactly
(the centre's activation pattern solved as a linear system and verified).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..mondeq.dense import DenseMonDEQ, dense_mondeq, equilibrium, live_units
from ..mondeq.networks import MonDEQNet
from .balls import Ball
from .rules import ROUNDING, Gaps, clears, gaps_of, radius

# Dense (h x h) per-point solves: beyond this state size the method is refused (a
# width-40 FC net has 40; the paper's conv nets 16 * 30 * 30 and more).
MAX_STATE = 1024
# Vertex enumerations are chunked so that one batch of solves stays near this many bytes.
CHUNK_BYTES = 1 << 26


def check_applies(net) -> None:
    """ConfigError unless `net` is a monDEQ whose state is small enough for dense per-input solves."""
    if not isinstance(net, MonDEQNet):
        raise ConfigError(f"certify.bound=local: allowed for monDEQs only, got {type(net).__name__}")
    size = int(live_units(net).sum())
    if size > MAX_STATE:
        raise ConfigError(f"certify.bound=local: the state size {size} of {type(net.mon.operator).__name__} needs "
                          f"dense per-input solves of that size; allowed: state sizes <= {MAX_STATE} "
                          f"(theorem1_pooled certifies larger conv monDEQs)")


# --------------------------------------------------------------------------- sups over a box of slopes

def _outputs(dm: DenseMonDEQ, labels: torch.Tensor):
    """(c, e) of every output o = c^T z + e^T u: the h pre-activations, then f_y - f_j for each class j."""
    n, h = len(labels), dm.W.shape[0]
    classes = dm.C.shape[1]
    margin_c = dm.C[:, labels].T.unsqueeze(-1) - dm.C.unsqueeze(0)                  # (N, h, classes)
    c = torch.cat([dm.W.T.expand(n, h, h), margin_c], dim=2)
    e = torch.cat([torch.eye(h, dtype=torch.float64), torch.zeros(h, classes, dtype=torch.float64)], dim=1)
    return c, e


def _vertex_sup(dm: DenseMonDEQ, active, unstable, lo, hi, c, e, ball: Ball | None = None):
    """max over the slope box's vertices of ||grad o|| (N, q) for every output; all points have the same n.
    With a `ball` (its rows: these points), the largest change |o(x) - o(x0)| over it instead.

    active (N, h): stable and active at the centre; unstable (N, n): indices; lo, hi (N, n): slope box.
    z_A = (I - W_AA)^-1 (u_A + W_AN z_N) on the stable active set A; eliminating it,
    z_N = (D C + I - D)^-1 D T u with C = I - (W + W A^-1 W)_NN and T = rows N of I + W A^-1,
    so grad o = U^T (r0 + T^T w), r0 = A^-T c + e, w = D (C^T D + I - D)^-T phi, phi = V^T c.
    """
    N, h = active.shape
    n = unstable.shape[1]
    eye = torch.eye(h, dtype=torch.float64)
    a = active.double()
    mask = a[:, :, None] * a[:, None, :]
    Ainv = torch.linalg.inv(eye - dm.W * mask) * mask                               # (N, h, h)
    r0 = Ainv.transpose(1, 2) @ c + e                                               # (N, h, q)
    if n == 0:
        if ball is not None:
            return ball.magnitude(torch.einsum("hd,nhq->nqd", dm.U, r0))
        return (r0 * (dm.G @ r0)).sum(1).clamp_min(0).sqrt()
    sel = torch.nn.functional.one_hot(unstable, h).double().transpose(1, 2)         # (N, h, n)
    WA = dm.W @ Ainv
    V = sel + Ainv @ dm.W @ sel                                                     # (N, h, n)
    T = sel.transpose(1, 2) @ (eye + WA)                                            # (N, n, h)
    Cm = torch.eye(n, dtype=torch.float64) - sel.transpose(1, 2) @ (dm.W + WA @ dm.W) @ sel
    phi = V.transpose(1, 2) @ c                                                     # (N, n, q)
    bits = ((torch.arange(2 ** n)[:, None] >> torch.arange(n)) & 1).double()       # (P, n)

    def vertex_w(chosen):
        D = lo[:, None] + chosen * (hi - lo)[:, None]                                # (N, P, n)
        M = Cm.transpose(1, 2)[:, None] * D[:, :, None, :] + torch.diag_embed(1 - D)  # C^T D + I - D
        return D.unsqueeze(-1) * torch.linalg.solve(M, phi[:, None].expand(-1, D.shape[1], -1, -1))

    if ball is not None:  # the gradients themselves, a chunk of vertices at a time
        out = torch.zeros(N, c.shape[2], dtype=torch.float64)
        step = max(1, CHUNK_BYTES // (N * c.shape[2] * dm.U.shape[1] * 8 * 4))
        for s in range(0, len(bits), step):
            R = r0[:, None] + T.transpose(1, 2)[:, None] @ vertex_w(bits[s:s + step])  # (N, P, h, q)
            g = torch.einsum("hd,nphq->npqd", dm.U, R)
            out = torch.maximum(out, ball.magnitude(g).amax(1))
        return out
    b0 = (r0 * (dm.G @ r0)).sum(1)                                                  # (N, q)
    TG = T @ dm.G
    Q = TG @ T.transpose(1, 2)                                                      # (N, n, n)
    lin = TG @ r0                                                                   # (N, n, q)
    w = vertex_w(bits)
    sq = b0[:, None] + 2 * (w * lin[:, None]).sum(2) + (w * (Q[:, None] @ w)).sum(2)  # (N, P, q)
    return sq.amax(1).clamp_min(0).sqrt()


def _monotone_sup(dm: DenseMonDEQ, keep, c, e):
    """Theorem 1 on the neurons `keep` (N, h; the others provably inactive): bounds of ||grad o|| (N, q)."""
    k = keep.double()
    u_norm = torch.linalg.eigvalsh(dm.G * k[:, :, None] * k[:, None, :])[:, -1].clamp_min(0).sqrt()
    e_norm = (e * (dm.G @ e)).sum(0).clamp_min(0).sqrt()                            # (q,): ||U^T e||
    return ((c * k[:, :, None]).norm(dim=1) * u_norm[:, None] / dm.m + e_norm)


def _by_count(unstable_mask):
    """(rows, indices (len(rows), n)) of the points with n unstable neurons, for each n present."""
    counts = unstable_mask.sum(1)
    for n in counts.unique().tolist():
        rows = (counts == n).nonzero().squeeze(1)
        idx = torch.argsort((~unstable_mask[rows]).to(torch.int8), dim=1, stable=True)[:, :n]
        yield rows, idx


def box_sup(dm: DenseMonDEQ, method: str, v0, stable, lo, hi, c, e, ball: Ball | None = None) -> torch.Tensor:
    """(N, q) bounds of ||grad o|| over the slope box: stable neurons fixed, the others in [lo, hi]; with
    a `ball` (one row per point), bounds of the change |o(x) - o(x0)| over it (the vertex bound only).

    Arguments are per point (N, h); lo and hi are read at the unstable neurons.
    """
    if method == "monotone":
        return _monotone_sup(dm, ~(stable & (v0 <= 0)), c, e)
    out = torch.empty(c.shape[0], c.shape[2], dtype=torch.float64)
    active = stable & (v0 > 0)
    for rows, idx in _by_count(~stable):
        n = idx.shape[1]
        per_point = (2 ** n) * max(n, 1) * (c.shape[2] + n) * 8
        if ball is not None:
            per_point = (2 ** n) * c.shape[2] * dm.U.shape[1] * 8 * 4
        step = max(1, CHUNK_BYTES // per_point)
        for s in range(0, len(rows), step):
            r, i = rows[s:s + step], idx[s:s + step]
            out[r] = _vertex_sup(dm, active[r], i, lo[r].gather(1, i), hi[r].gather(1, i), c[r], e,
                                 None if ball is None else ball.rows(r))
    return out


# --------------------------------------------------------------------------- certificates at a radius

@dataclass
class Centres:
    """What the certificates need of each input: its exact equilibrium and the margins there."""
    v0: torch.Tensor       # (N, h) pre-activations
    margins: Gaps          # f_y - f_j at the exact equilibrium (src/certify/rules.py)
    ok: torch.Tensor       # (N,) the exact equilibrium was found
    c: torch.Tensor        # (N, h, q), e (h, q): the outputs (`_outputs`)
    e: torch.Tensor
    pair: torch.Tensor     # (N, classes): the global constant of f_y - f_j (inf where none is known)


def centres(dm: DenseMonDEQ, x: torch.Tensor, labels: torch.Tensor, pair: torch.Tensor,
            z_start: torch.Tensor | None = None) -> Centres:
    """pair: the (classes, classes) global constants L_ij of f_i - f_j (inf where none is known)."""
    z, v, ok = equilibrium(dm, x, z_start)
    c, e = _outputs(dm, labels)
    return Centres(v0=v, margins=gaps_of(z @ dm.C + dm.b_out, labels), ok=ok, c=c, e=e, pair=pair[labels])


def _certifies(cen: Centres, constants, eps) -> torch.Tensor:
    """f_y - f_j > eps L_j for every j != y, beyond rounding (src/certify/rules.py: clears)."""
    need = torch.where(constants.isinf() & (eps[:, None] == 0), 0.0, eps[:, None] * constants)
    return clears(cen.margins, need)


def _below(change, size):
    """|v - v0| <= change keeps v0's sign (|v0| = size), beyond rounding (src/certify/rules.py: ROUNDING)."""
    return change + ROUNDING * (change + size) < size


def _stable_set(dm: DenseMonDEQ, cen: Centres, scale: torch.Tensor, method: str, max_unstable: int, refine: int,
                ball: Ball | None = None):
    """The largest self-consistent stable set at each point and the bounds it proves.

    Without a ball the changes over the l2 ball of radius `scale` (N,) are scale * box_sup; with one,
    scale is 1 and box_sup bounds the changes over the ball itself.  Returns (stable (N, h), sup (N, q),
    found (N,), first (N, q): sup before the slopes were narrowed), sup inf where no stable set was found.
    """
    N, h = cen.v0.shape
    size = cen.v0.abs()
    stable = cen.v0 != 0
    zero, one = torch.zeros_like(cen.v0), torch.ones_like(cen.v0)
    sup = torch.full((N, cen.c.shape[2]), math.inf, dtype=torch.float64)
    todo = cen.ok.clone()

    def bounds(rows, now_stable, lo, hi):
        return box_sup(dm, method, cen.v0[rows], now_stable, lo, hi, cen.c[rows], cen.e,
                       None if ball is None else ball.rows(rows))

    # the largest self-consistent stable set, slopes of the others in [0, 1]
    for _ in range(h + 1):
        if not todo.any():
            break
        rows = todo.nonzero().squeeze(1)
        sup[rows] = bounds(rows, stable[rows], zero[rows], one[rows])
        keep = stable[rows] & _below(scale[rows, None] * sup[rows, :h], size[rows])
        changed = (keep != stable[rows]).any(1)
        stable[rows] = keep
        over = (~keep).sum(1) > (max_unstable if method == "vertex" else h)  # the cap bounds 2^n solves
        sup[rows[over]] = math.inf  # given up: only the global constants certify these
        todo[rows] = changed & ~over
    found = cen.ok & sup[:, 0].isfinite()
    first = sup.clone()
    if method == "vertex":  # narrow the unstable slopes with the proved bounds |v - v0| <= eps rho
        for _ in range(refine):
            rows = found.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            r = scale[rows, None] * sup[rows, :h]
            now_stable = stable[rows] | _below(r, size[rows])
            ratio = (size[rows] / r).clamp(max=1)
            lo = torch.where(cen.v0[rows] > 0, ratio, zero[rows])
            hi = torch.where(cen.v0[rows] > 0, one[rows], 1 - ratio)
            new = bounds(rows, now_stable, lo, hi)
            stable[rows] = now_stable
            sup[rows] = torch.minimum(sup[rows], new)
    return stable, sup, found, first


def check(dm: DenseMonDEQ, cen: Centres, eps: torch.Tensor, method: str = "vertex", max_unstable: int = 10,
          refine: int = 2) -> dict:
    """Which points the local certificate proves robust at their radius eps (N,), normalised units.

    Returns {certified (N,) bool, unstable (N,) the count left unstable (-1: over max_unstable, which
    only the vertex bound has),
    lipschitz (N, classes): the margins' Lipschitz constants on the ball (unstable slopes in [0, 1]),
    centred (N, classes): bounds of |gap(x) - gap(x0)| / ||x - x0|| on the ball (the narrowed slopes:
    what certifies; <= lipschitz), both inf where the stable set was not found}.
    """
    h = cen.v0.shape[1]
    stable, sup, found, first = _stable_set(dm, cen, eps, method, max_unstable, refine)
    centred = sup[:, h:]
    constants = torch.minimum(centred, cen.pair)
    certified = (found & _certifies(cen, constants, eps)) | (cen.ok & _certifies(cen, cen.pair, eps))
    unstable = torch.where(found, (~stable).sum(1), torch.full_like(eps, -1, dtype=torch.long))
    return {"certified": certified, "unstable": unstable, "lipschitz": first[:, h:], "centred": centred}


def ball_check(dm: DenseMonDEQ, cen: Centres, ball: Ball, max_unstable: int = 10, refine: int = 2) -> dict:
    """The vertex bound over any ball of src/certify/balls.py (l2 or l_inf, with or without a box).

    Returns {certified (N,), stable (N, h) the proved stable neurons, reach (N, q) bounds of |o(x) - o(x0)|
    over the ball for every output (the h pre-activations, then f_y - f_j), found (N,)}.  For an l2 ball
    the global class-pair constants certify too (the ball lies in the l2 ball they speak of).
    """
    h = cen.v0.shape[1]
    if ball.norm == "l2":  # the whole l2 ball (a box only shrinks it): its quadratic forms are far cheaper
        stable, sup, found, _ = _stable_set(dm, cen, ball.radius, "vertex", max_unstable, refine)
        reach = ball.radius[:, None] * sup
    else:
        ones = torch.ones(len(cen.v0), dtype=torch.float64)
        stable, reach, found, _ = _stable_set(dm, cen, ones, "vertex", max_unstable, refine, ball)
    certified = found & clears(cen.margins, reach[:, h:])
    if ball.norm == "l2":
        certified |= cen.ok & _certifies(cen, cen.pair, ball.radius)
    return {"certified": certified, "stable": stable, "reach": reach, "found": found}


def certified_radii(dm: DenseMonDEQ, cen: Centres, method: str = "vertex", max_unstable: int = 10,
                    refine: int = 2, steps: int = 10) -> dict:
    """Per-input certified radii (normalised units) by bisection, and the state at the radius found.

    The bracket: below, the global class-pair radius min_j gap_j / L_yj (certified by `check` too);
    above, the radius of the centre's affine piece min_j gap_j / ||grad (f_y - f_j)(x0)||, which no
    local constant beats.  `steps` halvings leave the radius within 2^-steps of the bracket below
    the largest radius `check` certifies (certification is monotone in eps: a smaller ball keeps
    every stable neuron stable and every bound smaller).  Certified at eps: eps < radius.
    """
    N, h = cen.v0.shape
    inf = torch.full_like(cen.pair, math.inf)
    lo = radius(cen.margins, cen.pair)
    lo = torch.where(cen.ok, lo, torch.zeros_like(lo))
    every = torch.ones_like(cen.v0, dtype=torch.bool)
    no_box = torch.zeros_like(cen.v0)  # every neuron fixed: the slope box is the centre's pattern
    centre = box_sup(dm, "vertex", cen.v0, every, no_box, no_box, cen.c, cen.e)[:, h:]
    hi = torch.where(cen.margins.own, inf, cen.margins.low / centre).amin(1)
    # a locally flat margin (no gradient at all) gives no upper limit: keep the global radius there
    hi = torch.where(hi.isfinite() & (hi > lo), hi, lo)
    unstable = torch.full((N,), -1, dtype=torch.long)
    lipschitz = torch.full_like(cen.pair, math.inf)
    for _ in range(steps):
        rows = (hi > lo).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        mid = (lo[rows] + hi[rows]) / 2
        out = check(dm, _rows(cen, rows), mid, method, max_unstable, refine)
        passed = out["certified"]
        lo[rows] = torch.where(passed, mid, lo[rows])
        hi[rows] = torch.where(passed, hi[rows], mid)
        unstable[rows[passed]] = out["unstable"][passed]
        lipschitz[rows[passed]] = out["lipschitz"][passed]
    return {"radius": lo, "upper": hi, "unstable": unstable, "lipschitz": lipschitz}


def _rows(cen: Centres, rows) -> Centres:
    m = cen.margins
    return Centres(v0=cen.v0[rows], margins=Gaps(low=m.low[rows], size=m.size[rows], own=m.own[rows]),
                   ok=cen.ok[rows], c=cen.c[rows], e=cen.e, pair=cen.pair[rows])


def pair_constants(value, classes: int) -> torch.Tensor:
    """The global constants of the margins as a (classes, classes) matrix: a class-pair matrix as it is
    (None, a failed solve: inf), a scalar L of the whole logit vector as sqrt(2) L (src/certify/rules.py)."""
    if isinstance(value, (list, tuple)):
        return torch.tensor([[math.inf if v is None else float(v) for v in row] for row in value],
                            dtype=torch.float64)
    return torch.full((classes, classes), math.sqrt(2.0) * float(value), dtype=torch.float64)


def curve(net, x: torch.Tensor, labels: torch.Tensor, constant, eps, settings, *, pixels, mean, std) -> dict:
    """The certificate's curve (src/certify/registry.py): the local radii over the global `constant` (a
    class-pair matrix or a scalar L) and the certify.local settings."""
    return local_curve(net, x, labels, pair_constants(constant, net.Wout.out_features), eps, std, **settings)


def local_curve(net, x: torch.Tensor, labels: torch.Tensor, pair: torch.Tensor, eps, std, method: str = "vertex",
                max_unstable: int = 10, refine: int = 2, steps: int = 10) -> dict:
    """The certified-accuracy curve of the local certificate on normalised inputs x (N, C, H, W).

    eps are pixel-unit radii (converted as src/certify/rules.py does); `radii` the per-input certified
    radii in pixel units (certified at eps: eps < radius), `radii_normalised` in the inputs' units.
    """
    from .rules import normalised_radius

    start = time.perf_counter()
    dm = dense_mondeq(net, tuple(x.shape[1:]))
    cen = centres(dm, x.flatten(1), labels, pair)
    out = certified_radii(dm, cen, method, max_unstable, refine, steps)
    radius = out["radius"]
    scale = normalised_radius(1.0, std)  # pixel radius -> normalised radius, linear
    eps = [float(e) for e in eps]
    eps_norm = [normalised_radius(e, std) for e in eps]
    found = out["unstable"][out["unstable"] >= 0]
    return {"eps": eps, "eps_normalised": eps_norm,
            "accuracy": [float((radius > e).double().mean()) for e in eps_norm],
            "method": method,
            "lipschitz": [[v if math.isfinite(v) else None for v in row] for row in pair.tolist()],
            "radii": (radius / scale).tolist(), "radii_normalised": radius.tolist(),
            "exact_equilibrium": float(cen.ok.double().mean()),
            "local_at_radius": float(out["unstable"].ge(0).double().mean()),
            "mean_unstable_at_radius": float(found.double().mean()) if len(found) else None,
            "max_unstable": int(max_unstable), "refine": int(refine), "steps": int(steps),
            "seconds": time.perf_counter() - start}
