"""The model a certificate speaks of: the exact network, not its float32 evaluation.

For a DNN or CNN that is the network evaluated in float64.  For a monDEQ it is the network
with its exact equilibrium z* = relu(W z* + U x + b), which no solver returns.  Its margins are
bounded from below by a proved a posteriori bound:

From a float64 solve's state z take one more step p = relu(W z + u) (u = U x + b; relu is the
projection onto the cone of the operator's non-negative, unmasked states, so the step is
forward-backward with alpha = 1) and d = z - p.  Then e = W d satisfies e - G(p) in N(p), with
G(x) = (I - W) x - u and N the cone's normal cone, while -G(z*) in N(z*).  Monotonicity of N and
strong monotonicity of G (I - W >= m I) give m ||p - z*||^2 <= <e, p - z*>, so

    ||p - z*|| <= ||W d|| / m.

Each margin f_y - f_j = (c_y - c_j)^T z + b_y - b_j (c: the read-out pulled back to z) of the exact
model is then at least its value at p minus ||c_y - c_j|| ||W d|| / m.  Nothing rests on the solver
having converged: a looser solve only gives a larger (still proved) allowance.

Rounding.  The float64 arithmetic behind the state adds an allowance of ROUNDING (src/certify/rules.py)
relative to ||z|| + ||u||, divided by m.  This is a margin, not a proof: float64 sums of n terms err
by at most n u (u = 2^-53) relative to the sum of magnitudes, at most sqrt(n) times the norm, and
n sqrt(n) u <= 2^-26 for states up to 2.6e5 units (the paper's conv monDEQs have 1.2e5 to 1.5e5); a
rigorous allowance also carries ||W|| (the error of W z is relative to ||W|| ||z||) and ||W|| / m
(through W d).  The comparisons' allowance (certify.clears) is relative to the logits compared, so a
sum whose terms cancel far below their own size is not covered either.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import torch

from ..mondeq.networks import MonDEQNet, readout_rows
from ..progress import ticking
from .rules import ROUNDING, Gaps, gaps_of

STATE_TOL = 1e-9       # relative residual the float64 solve aims at (the bound holds whatever it reaches)
STATE_MAX_ITER = 5000


@dataclasses.dataclass
class ExactLogits:
    """The exact model's logits at each test point, up to a proved allowance per class pair."""
    logits: torch.Tensor       # (N, C) float64: the logits at p (or of the float64 network)
    state_error: torch.Tensor  # (N,) a bound on ||p - z*|| (0 for feed-forward networks)
    pair_norms: torch.Tensor   # (C, C) ||c_i - c_j|| (0 for feed-forward networks)

    def _spread(self, labels: torch.Tensor) -> torch.Tensor:
        return self.pair_norms[labels] * self.state_error[:, None]

    def gaps(self, labels: torch.Tensor) -> Gaps:
        """Lower bounds of the exact model's f_y - f_j."""
        return gaps_of(self.logits, labels, self._spread(labels))

    def worst_margin_above(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) upper bounds of the exact model's min_{j != y} f_y - f_j: below 0, a proved misclassification."""
        upper = gaps_of(self.logits, labels, -self._spread(labels))
        return (upper.low + ROUNDING * upper.size).masked_fill(upper.own, float("inf")).amin(1)


def _pair_norms(net) -> torch.Tensor:
    rows = readout_rows(net).cpu()
    return (rows[:, :, None] - rows[:, None, :]).norm(dim=0)  # the differences themselves: no cancellation


class ExactModel:
    """`model` in float64 on `device`, a monDEQ solving its forward problem to STATE_TOL: built once for a
    whole evaluation and its audit (`net` is what the audit attacks, `evaluate` what proves its findings)."""

    def __init__(self, model, device):
        self.device = device
        self.net = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
        self.pair_norms = None  # (C, C) ||c_i - c_j|| of a monDEQ's read-out
        if isinstance(self.net, MonDEQNet):
            layer = self.net.mon
            layer.solver = dataclasses.replace(layer.solver, fwd_tol=STATE_TOL, fwd_max_iter=max(
                STATE_MAX_ITER, layer.solver.fwd_max_iter), on_nonconvergence="warn")
            self.pair_norms = _pair_norms(self.net)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, batch_size: int) -> ExactLogits:
        """The exact model's logits on normalised inputs x, with the allowance that makes them proved."""
        starts = range(0, len(x), batch_size)
        logits, errors = [], []
        with warnings.catch_warnings():  # an unconverged float64 solve only widens the proved allowance
            warnings.simplefilter("ignore", RuntimeWarning)
            for i in ticking(starts, len(starts), "exact logits"):
                batch = x[i:i + batch_size].to(self.device, torch.float64)
                logit, error = self._feedforward(batch) if self.pair_norms is None else self._mondeq(batch)
                logits.append(logit)
                errors.append(error)
        logits = torch.cat(logits)
        pairs = self.pair_norms if self.pair_norms is not None else torch.zeros(logits.shape[1], logits.shape[1],
                                                                                   dtype=torch.float64)
        return ExactLogits(logits, torch.cat(errors), pairs)

    def _feedforward(self, batch: torch.Tensor):
        return self.net(batch).cpu(), torch.zeros(len(batch), dtype=torch.float64)

    def _mondeq(self, batch: torch.Tensor):
        net, op = self.net, self.net.mon.operator
        prepared = net.prepare(batch)
        u = op.input_term(prepared)
        z = net.mon(prepared)
        p = net.mon.nonlinearity(op.multiply(z) + u)
        step = op.multiply(z - p).norm(dim=1)
        rounding = ROUNDING * (z.norm(dim=1) + u.norm(dim=1))
        return net.Wout(net.readout(p)).cpu(), ((step + rounding) / op.m).cpu()
