"""PAC-Bayes generalization bounds (paper section 4, 5.2, Appendix B, C, E).

- `perturbation_bound`: Theorem 2, the change of the equilibrium when W, U, b change.
- `mondeq_pac_bayes`: Theorem 3 for FC monDEQs, with the lipschitz_mondeq notebook's constants.
- `neyshabur`: the spectrally normalised margin bound of Neyshabur, Bhojanapalli, Srebro
  (ICLR 2018, their Theorem 1) for DNNs, every constant of their proof written out.
- `unrolled_fb`: Appendix E, Neyshabur's bound applied to a monDEQ unrolled into FB iterations.
- `generalization`: the entry point of the bound app; returns the bounds.json
  `generalization` record for one model.

All three bounds have the form  L_0(f) <= L^_gamma(f) + 4 sqrt((KL + ln(...)) / (M - 1)),
Lemma 1 of Neyshabur et al. (the paper's Appendix C): L_0 is the expected 0-1 loss,
L^_gamma the empirical margin loss at margin gamma on the M training points, KL an upper
bound on the KL divergence between the perturbed posterior and the prior, and the log term
pays the union bound over a grid of beta values.  The numbers can be astronomically large
(unrolled networks); each is computed in log space and `log10` is reported beside it.

Norms are measured from zero (the prior is centred at zero, as the notebook and both papers);
with `reference` (the weights at initialisation, kept in our checkpoints as
`initial_state_dict`) the Frobenius sums are distances from initialisation, a prior centred at
the (data-independent) initial weights.  Spectral norms (beta) are always of the weights.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

# Neyshabur et al. 2018, proof of Theorem 1: sigma = gamma / (42 d B beta~^(d-1) sqrt(h ln(4hd))).
# 42 >= 4 e^2 sqrt(2) = 41.80: the perturbation must stay below gamma/4 (Lemma 1), Lemma 2 gives
# e B beta^(d-1) sum ||U_i|| <= e^2 d B beta~^(d-1) sigma sqrt(2h ln(4hd)) with beta^(d-1) <= e beta~^(d-1).
NEYSHABUR_SIGMA_CONST = 42.0
# Lemma 1 (their Lemma 1; the paper's Appendix C): the log term is ln(6 M / delta).
LEMMA1_LOG_CONST = 6.0
# Lemma 1's factor in front of the square root.
LEMMA1_FACTOR = 4.0
# Theorem 3 (Appendix C): with probability >= 1/2 the six perturbations have ||.||_2 <= sigma sqrt(2h ln(24h)).
THEOREM3_TAIL = 24.0
# Appendix E: four perturbed matrices (A, B, U, W_o): ||.||_2 <= sigma sqrt(2h ln(16h)).
APPENDIX_E_TAIL = 16.0

DEFAULTS = {"M": 4096, "gamma": 10.0, "delta": 0.1, "c": 1e-4, "B": 50.0}


# --------------------------------------------------------------------------- Theorem 2

def strong_monotonicity(W: torch.Tensor) -> float:
    """The largest m with I - W >= m I: the smallest eigenvalue of the symmetric part of I - W."""
    G = torch.eye(W.shape[0], dtype=torch.float64) - W.detach().cpu().double()
    return float(torch.linalg.eigvalsh((G + G.T) / 2)[0])


def perturbation_bound(x: torch.Tensor, W: torch.Tensor, U: torch.Tensor, b: torch.Tensor,
                       W2: torch.Tensor, U2: torch.Tensor, b2: torch.Tensor,
                       m: float | None = None, m2: float | None = None) -> torch.Tensor:
    """Theorem 2: ||f(W,U,b) - f(W2,U2,b2)||_2 for each row of x (shape (N, n)) is at most

        ||W - W2||_2 ||U x + b||_2 / (m m2) + (||(U - U2) x||_2 + ||b - b2||_2) / m2,

    f the equilibrium z* = relu(W z* + U x + b), I - W >= m I and I - W2 >= m2 I.  In the
    proof (Appendix B) m2 is the monotonicity of the operator the iteration difference
    contracts under and U x + b bounds the unperturbed iterates; with A, B perturbed in the
    monDEQ parameterisation both satisfy the parameter m.  m, m2 default to the exact
    values, the smallest eigenvalues of the symmetric parts of I - W and I - W2.
    Returns a float64 tensor of shape (N,).
    """
    m = strong_monotonicity(W) if m is None else float(m)
    m2 = strong_monotonicity(W2) if m2 is None else float(m2)
    if not (m > 0 and m2 > 0):
        raise ValueError(f"Theorem 2 needs I - W >= m I with m > 0 for both operators; got m={m}, m2={m2}")
    W, U, b, W2, U2, b2, x = (t.detach().cpu().double() for t in (W, U, b, W2, U2, b2, x))
    x = x.flatten(1)
    dW = torch.linalg.matrix_norm(W - W2, ord=2)
    drive = (x @ U.T + b).norm(dim=1)
    return dW * drive / (m * m2) + ((x @ (U - U2).T).norm(dim=1) + (b - b2).norm()) / m2


def fc_parameters(op) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, U, b) of a FullyConnectedOperator in float64."""
    A, B = op.A.weight.detach().cpu().double(), op.B.weight.detach().cpu().double()
    W = (1 - op.m) * torch.eye(op.state_size, dtype=torch.float64) - A.T @ A + B - B.T
    return W, op.U.weight.detach().cpu().double(), op.U.bias.detach().cpu().double()


# --------------------------------------------------------------------------- helpers

def _spec(t: torch.Tensor) -> float:
    t = t.detach().cpu().double()
    return float(torch.linalg.matrix_norm(t, ord=2)) if t.ndim == 2 else float(t.norm())


def _sq(t: torch.Tensor, ref: torch.Tensor | None = None) -> float:
    t = t.detach().cpu().double()
    if ref is not None:
        t = t - ref.detach().cpu().double()
    return float((t ** 2).sum())


def _ln(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf  # a zero norm sum (norms from an identical reference)


def _lemma1(log_kl: float, log_term: float, M: int) -> tuple[float, float]:
    """(complexity, log10 complexity) of 4 sqrt((KL + log_term)/(M - 1)) with ln KL = log_kl."""
    if M < 2:
        raise ValueError(f"the training set size M must be >= 2, got {M}")
    log_sum = float(np.logaddexp(log_kl, math.log(log_term)))
    ln_c = math.log(LEMMA1_FACTOR) + 0.5 * (log_sum - math.log(M - 1))
    return (math.exp(ln_c) if ln_c < 700 else math.inf), ln_c / math.log(10)


def _finish(out: dict, train_margin_loss: float | None, key: str = "pac_bayes") -> dict:
    out["train_margin_loss"] = None if train_margin_loss is None else float(train_margin_loss)
    out[key] = None if train_margin_loss is None else float(train_margin_loss) + out["complexity_term"]
    return out


def _reference_tensor(reference: Mapping | None, key: str) -> torch.Tensor | None:
    if reference is None:
        return None
    if key not in reference:
        raise KeyError(f"reference weights lack {key!r} (keys: {sorted(reference)[:8]}...)")
    return reference[key]


def measure_B(x: torch.Tensor) -> float:
    """The input radius B measured from data: the largest l2 norm of a (flattened) input."""
    return float(x.detach().flatten(1).double().norm(dim=1).max())


# --------------------------------------------------------------------------- Theorem 3

def mondeq_pac_bayes(net, train_margin_loss: float | None, M: int = 4096, gamma: float = 10.0,
                     delta: float = 0.1, c: float = 1e-4, B: float = 50.0,
                     reference: Mapping | None = None, h: int | None = None) -> dict:
    """Theorem 3 for an FC monDEQ (MonFCNet), as the lipschitz_mondeq notebook computes it:

        complexity = 4 sqrt( 16 h ln(24h) K^2 S / (gamma^2 m^4 (1-c)^6 (M-1))
                             + ln(3 M^1.5 / (c delta)) / (M-1) ),
        K = 2 beta^3 (1+c)^3 (1 + gamma/(4 beta)) (B+1) + 2 m beta (1+c) (B+1) (1-c)^2 + m^2 (1-c)^3,
        beta = max(||b||_2, ||U||_2, ||W_out||_2, ||A||_2),
        S = ||A||_F^2 + ||B||_F^2 + ||U||_F^2 + ||b||^2 + ||W_out||_F^2 + ||b_out||^2,

    h the width, m the network's monotonicity parameter, c the paper's c_1 (the beta-grid
    resolution).  The first term is KL/(M-1) with KL <= S / (2 sigma^2); the log term pays the
    grid of sqrt(M)/(2c) beta values (ln(6M/delta) of Lemma 1 becomes ln(3 M^1.5/(c delta))).
    pac_bayes = train_margin_loss + complexity.

    Deviations from the notebook, both following the paper's Appendix C:
    - the notebook writes m^2 (c-1)^3 where the paper has m^2 (1-c)^3 (a sign flip of the last
      term of K); we use the paper's (1-c).
    The notebook's (1 + gamma/(4 beta)) is kept; the paper's proof has 1 + c_3 with
    c_3 = (1+c) gamma / (4 (1-c) beta), larger by a factor (1+c)/(1-c) = 1.0002 in c_3.
    """
    op, Wo = net.mon.operator, net.Wout
    m = float(op.m)
    h = int(op.state_size if h is None else h)
    A, Bm, U, b = op.A.weight, op.B.weight, op.U.weight, op.U.bias
    ref = lambda k: _reference_tensor(reference, k)  # noqa: E731
    beta = max(_spec(b), _spec(U), _spec(Wo.weight), _spec(A))
    S = (_sq(A, ref("mon.operator.A.weight")) + _sq(Bm, ref("mon.operator.B.weight"))
         + _sq(U, ref("mon.operator.U.weight")) + _sq(b, ref("mon.operator.U.bias"))
         + _sq(Wo.weight, ref("Wout.weight")) + _sq(Wo.bias, ref("Wout.bias")))
    K = (2 * beta ** 3 * (1 + c) ** 3 * (1 + gamma / (4 * beta)) * (B + 1)
         + 2 * m * beta * (1 + c) * (B + 1) * (1 - c) ** 2
         + m ** 2 * (1 - c) ** 3)  # the paper's (1-c); the notebook has (c-1) here
    kl = 16 * h * math.log(24 * h) * K ** 2 * S / (gamma ** 2 * m ** 4 * (1 - c) ** 6)
    log_term = math.log(3 * M ** 1.5 / (c * delta))
    complexity, log10 = _lemma1(_ln(kl), log_term, M)
    out = {"complexity_term": complexity, "log10_complexity": log10,
           "kl": kl, "log_term": log_term, "K": K,
           "inputs": {"beta": beta, "norm_sum": S, "M": int(M), "gamma": float(gamma),
                      "delta": float(delta), "c": float(c), "B": float(B), "h": h, "m": m,
                      "norms_from": "zero" if reference is None else "init"}}
    return _finish(out, train_margin_loss)


# --------------------------------------------------------------------------- Neyshabur et al. 2018

def neyshabur(dnn, train_margin_loss: float | None, M: int = 4096, gamma: float = 10.0,
              delta: float = 0.1, B: float = 50.0, reference: Mapping | None = None,
              h: int | None = None) -> dict:
    """The spectrally normalised margin bound (Neyshabur, Bhojanapalli, Srebro 2018, Theorem 1)
    of a DNN (`linear_layers()` W_1..W_d), with the constants of their proof:

        KL <= C_sigma^2 e^2 d^2 B^2 h ln(4hd) prod_i ||W_i||_2^2 sum_i ||W_i||_F^2/||W_i||_2^2 / (2 gamma^2)
        complexity = 4 sqrt( (KL + ln(6 d M^(1 + 1/(2d)) / delta)) / (M - 1) )

    with C_sigma = 42 (their sigma = gamma / (42 d B beta~^(d-1) sqrt(h ln(4hd))),
    KL <= |w~|^2 / (2 sigma^2) for the weights rescaled to equal spectral norms beta,
    beta~^(2d-2) <= e^2 beta^(2d-2) for the grid point beta~), Lemma 1's 4 and ln(6M/delta),
    and their beta-grid of d M^(1/(2d)) points (a union bound: delta -> delta / (d M^(1/(2d)))).

    h: "an upper bound on the number of units in each layer"; by default the hidden width
    (the paper's h, as for the monDEQ bound).  Strictly, their Gaussian tail bound for a
    rectangular layer needs the larger of its two sizes (784 for MNIST's first layer): pass
    h=784 for that reading.  Biases are ignored, as in their analysis (bias-free networks).
    With `reference`, ||W_i||_F^2 becomes ||W_i - W_i^0||_F^2 (distance from initialisation).
    """
    layers = dnn.linear_layers()
    d = len(layers)
    if h is None:  # the hidden width
        h = max((lin.out_features for lin in layers[:-1]), default=layers[0].in_features)
    h = int(h)
    names = [f"{i}.weight" for i, mod in enumerate(dnn) if isinstance(mod, torch.nn.Linear)]
    spectral = [_spec(l.weight) for l in layers]
    frob = [_sq(l.weight, _reference_tensor(reference, k)) for l, k in zip(layers, names)]
    ratio_sum = sum(f / s ** 2 for f, s in zip(frob, spectral))
    log_prod_sq = sum(2 * math.log(s) for s in spectral)
    log_kl = (2 * math.log(NEYSHABUR_SIGMA_CONST) + 2 + 2 * math.log(d) + 2 * math.log(B)
              + math.log(h) + math.log(math.log(4 * h * d)) + log_prod_sq + _ln(ratio_sum)
              - math.log(2) - 2 * math.log(gamma))
    log_term = math.log(LEMMA1_LOG_CONST * d * M ** (1 + 1 / (2 * d)) / delta)
    complexity, log10 = _lemma1(log_kl, log_term, M)
    out = {"complexity_term": complexity, "log10_complexity": log10,
           "kl": math.exp(log_kl) if log_kl < 700 else math.inf, "log10_kl": log_kl / math.log(10),
           "log_term": log_term,
           "constants": {"sigma_const": NEYSHABUR_SIGMA_CONST, "beta_grid_e2": math.e ** 2,
                         "lemma1_factor": LEMMA1_FACTOR, "lemma1_log_const": LEMMA1_LOG_CONST,
                         "tail_ln_arg": "4hd", "grid_size": "d M^(1/(2d))"},
           "inputs": {"depth": d, "spectral_norms": spectral, "frobenius_sq": frob,
                      "prod_spectral_sq": math.exp(log_prod_sq) if log_prod_sq < 700 else math.inf,
                      "sum_frob_over_spec": ratio_sum, "M": int(M), "gamma": float(gamma),
                      "delta": float(delta), "B": float(B), "h": h, "biases": "ignored",
                      "norms_from": "zero" if reference is None else "init"}}
    return _finish(out, train_margin_loss, key="neyshabur")


# --------------------------------------------------------------------------- Appendix E

def unrolled_fb(net, d: int, alpha: float, train_margin_loss: float | None = None, M: int = 4096,
                gamma: float = 10.0, delta: float = 0.1, B: float = 50.0,
                reference: Mapping | None = None, h: int | None = None) -> dict:
    """Appendix E: Neyshabur's bound for an FC monDEQ unrolled into `d` FB iterations.

    The unrolled network acts on [z; x] (z_0 = 0, ||[0; x]|| <= B) with d layers
    W_u = [[I - alpha (I - W), alpha U], [0, I]] (the first one is W_u on [0; x]) and the
    read-out W_f = [W_o, 0]: depth D = d + 1 (the paper's "depth-d network" with its d - 1
    middle layers W_u, so its d is our D).  No bias term (b, b_o), as there.  With
    beta = max(||A||_2, ||B||_2, ||W_u||_2, ||W_o||_2) and S = ||A||_F^2 + ||B||_F^2 +
    ||U||_F^2 + ||W_o||_F^2, the bound as printed at the end of Appendix E:

        KL <= 16 e^2 B^2 beta^(2D-2) ((D-1) alpha (beta/D + 2 beta + 3) + 1)^2 2h ln(16h) S / gamma^2
        complexity = 4 sqrt( (KL + ln(6 D M^(1 + 1/(2D)) / delta)) / (M - 1) )

    (the log term with Neyshabur's beta-grid of D M^(1/(2D)) points, which the appendix says
    it uses; its printed log term is illegible).  The printed KL keeps e^2 and a factor 2h
    where its own preceding step has e^4 and h (1/(2 sigma^2) cancels the 2): the printed
    form is followed here; it differs from that step by e^2/2 = 3.7 in KL.
    """
    from .unrolled import unrolled_layers

    op, Wo = net.mon.operator, net.Wout
    h = int(op.state_size if h is None else h)
    D = int(d) + 1
    W, U, _ = fc_parameters(op)
    # ||W_u||_2 exactly, in reduced size: U = P S Q^T, the x part orthogonal to Q passes by I.
    P, sv, _ = torch.linalg.svd(U, full_matrices=False)
    _, Wu, _, _, _ = unrolled_layers(W.numpy(), (P * sv).numpy(), Wo.weight.detach().double().numpy(), "fb",
                                     float(alpha))
    norms = {"A": _spec(op.A.weight), "B": _spec(op.B.weight), "W_u": float(np.linalg.norm(Wu, 2)),
             "W_o": _spec(Wo.weight)}
    beta = max(norms.values())
    ref = lambda k: _reference_tensor(reference, k)  # noqa: E731
    S = (_sq(op.A.weight, ref("mon.operator.A.weight")) + _sq(op.B.weight, ref("mon.operator.B.weight"))
         + _sq(op.U.weight, ref("mon.operator.U.weight")) + _sq(Wo.weight, ref("Wout.weight")))
    inner = (D - 1) * alpha * (beta / D + 2 * beta + 3) + 1
    log_kl = (math.log(16) + 2 + 2 * math.log(B) + (2 * D - 2) * math.log(beta) + 2 * math.log(inner)
              + math.log(2 * h * math.log(APPENDIX_E_TAIL * h)) + math.log(S) - 2 * math.log(gamma))
    log_term = math.log(LEMMA1_LOG_CONST * D) + (1 + 1 / (2 * D)) * math.log(M) - math.log(delta)
    complexity, log10 = _lemma1(log_kl, log_term, M)
    out = {"complexity_term": complexity, "log10_complexity": log10, "log10_kl": log_kl / math.log(10),
           "log_term": log_term,
           "inputs": {"iterations": int(d), "depth": D, "alpha": float(alpha), "beta": beta, "norms": norms,
                      "norm_sum": S, "M": int(M), "gamma": float(gamma), "delta": float(delta),
                      "B": float(B), "h": h, "biases": "ignored",
                      "norms_from": "zero" if reference is None else "init"}}
    return _finish(out, train_margin_loss)


def unrolled_fb_best(net, x: torch.Tensor, alphas, tol: float, train_margin_loss: float | None,
                     max_iter: int = 3000, **kwargs) -> dict:
    """`unrolled_fb` at the FB iteration count each alpha needs on inputs x (relative residual
    <= tol, the network's own solver, as the Lipschitz `unrolled` bound); the smallest bound."""
    from .unrolled import count_iterations

    per_alpha = []
    for alpha in alphas:
        k = count_iterations(net, "fb", float(alpha), x, tol, max_iter)
        per_alpha.append({"alpha": float(alpha), "iterations": k,
                          **({} if k is None else {"log10_complexity": unrolled_fb(
                              net, k, float(alpha), train_margin_loss, **kwargs)["log10_complexity"]})})
    done = [p for p in per_alpha if p["iterations"] is not None]
    if not done:
        return {"value": None, "status": "FB did not converge for any alpha", "per_alpha": per_alpha, "tol": tol}
    best = min(done, key=lambda p: p["log10_complexity"])
    record = unrolled_fb(net, best["iterations"], best["alpha"], train_margin_loss, **kwargs)
    record.update(per_alpha=per_alpha, tol=tol)
    record["value"] = record["pac_bayes"]
    return record


# --------------------------------------------------------------------------- entry point

@torch.no_grad()
def margin_loss(model, x: torch.Tensor, y: torch.Tensor, gamma: float, batch: int = 500) -> float:
    """Empirical margin loss L^_gamma: the fraction of points with f_y <= gamma + max_{j != y} f_j."""
    bad = 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        yy = y[i:i + batch]
        true = logits.gather(1, yy[:, None]).squeeze(1)
        others = logits.scatter(1, yy[:, None], float("-inf")).amax(1)
        bad += int((true <= gamma + others).sum())
    return bad / len(x)


def applies(model) -> bool:
    """Whether `generalization` covers `model`: FC monDEQs (Theorem 3, Appendix E) and DNNs (Neyshabur)."""
    from ..baselines import DNN
    from ..mondeq.fc import FullyConnectedOperator

    return isinstance(model, DNN) or (hasattr(model, "mon")
                                      and isinstance(model.mon.operator, FullyConnectedOperator))


def generalization(model, train_x: torch.Tensor | None, train_y: torch.Tensor | None, cfg: Mapping,
                   reference: Mapping | None = None) -> dict:
    """The bounds.json `generalization` record of `model` (a MonFCNet or a DNN).

    train_x, train_y: the training set the model was trained on (normalised inputs); they give
    the empirical margin loss at gamma, B when cfg.B_from_data, and (FC monDEQs) the FB
    iteration counts of the unrolled bound.  cfg: the `generalization` config block (M, gamma,
    delta, c, B, B_from_data, norms_from, h, unrolled_alphas, unrolled_tol, unrolled_batch).
    reference: the initial weights (checkpoint["initial_state_dict"]); needed when
    norms_from is "init".
    """
    get = lambda k, default=None: cfg.get(k, default) if hasattr(cfg, "get") else default  # noqa: E731
    gamma, delta = float(get("gamma", 10.0)), float(get("delta", 0.1))
    M = get("M")
    M = int(M) if M is not None else len(train_x)
    norms_from = get("norms_from", "zero")
    if norms_from not in ("zero", "init"):
        raise ValueError(f"generalization.norms_from must be zero or init, got {norms_from!r}")
    if norms_from == "init" and reference is None:
        raise ValueError("generalization.norms_from=init needs the initial weights "
                         "(the checkpoint's initial_state_dict; train again to store them)")
    ref = reference if norms_from == "init" else None
    B = measure_B(train_x) if get("B_from_data", False) else float(get("B", 50.0))
    h = get("h")
    loss = None
    if train_x is not None:
        was_training = model.training
        model.eval()
        loss = margin_loss(model, train_x, train_y, gamma)
        model.train(was_training)
    common = {"train_margin_loss": loss, "gamma": gamma, "M": M, "B": B, "norms_from": norms_from}
    from ..baselines import DNN

    if isinstance(model, DNN):
        ney = neyshabur(model, loss, M=M, gamma=gamma, delta=delta, B=B, reference=ref, h=h)
        return {**common, "method": "neyshabur2018", "complexity_term": ney["complexity_term"],
                "log10_complexity": ney["log10_complexity"], "neyshabur": ney["neyshabur"],
                "pac_bayes": ney["neyshabur"], "details": {"neyshabur": ney}}
    if not applies(model):
        raise TypeError(f"generalization bounds cover FC monDEQs and DNNs, not {type(model).__name__}")
    thm3 = mondeq_pac_bayes(model, loss, M=M, gamma=gamma, delta=delta, c=float(get("c", 1e-4)), B=B,
                            reference=ref, h=h)
    record = {**common, "method": "theorem3", "complexity_term": thm3["complexity_term"],
              "log10_complexity": thm3["log10_complexity"], "pac_bayes": thm3["pac_bayes"],
              "inputs": thm3["inputs"], "details": {"theorem3": thm3}}
    alphas = get("unrolled_alphas")
    if alphas and train_x is not None:
        x = train_x[: int(get("unrolled_batch", 256))]
        unr = unrolled_fb_best(model, x, [float(a) for a in alphas], float(get("unrolled_tol", 1e-3)), loss,
                               M=M, gamma=gamma, delta=delta, B=B, reference=ref, h=h)
        record["unrolled_fb"] = unr["value"]
        record["log10_unrolled_fb_complexity"] = unr.get("log10_complexity")
        record["details"]["unrolled_fb"] = unr
    return record
