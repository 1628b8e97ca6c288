"""Lipschitz estimates of feed-forward ReLU networks (the paper's DNN and CNN baselines).

All bounds are for the l2 norm on the flattened input and output (the logits),
biases ignored (they do not change the Lipschitz constant), ReLU treated as
1-Lipschitz with slopes in [0, 1]. Every function returns a plain dict with
`value` and `seconds` (plus method-specific keys).

- `naive`: product of the exact layer spectral norms; Linear by SVD, Conv2d
  by the exact norm of a circular convolution that dominates the zero-padded
  one (see `conv_fft_norm`), so the product is a rigorous upper bound.
- `autolip` (Virmaux & Scaman 2018): product of per-layer norms from power
  iteration through autograd; each factor converges to the layer norm from
  below, so AutoLip equals `naive` up to that accuracy for Linear layers and
  is at most `naive` for convolutions.
- `seqlip_greedy` (Virmaux & Scaman 2018): the SeqLip product over
  consecutive layer pairs, with the max over activation patterns chosen
  greedily (tests/references.py enumerates it exactly, for small nets).

LipSDP is in `lipsdp.py`; the empirical lower bound in `lower.py`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["naive", "autolip", "seqlip_greedy", "linear_maps", "conv_fft_norm", "power_iteration", "top_singular"]

DTYPE = torch.float64


# --------------------------------------------------------------------------- layers

@dataclass
class LinearMap:
    """The bias-free linear part of one Linear/Conv2d layer, acting on flat float64 batches."""
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: torch.Tensor  # float64 copy

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, n_in) -> (batch, n_out)."""
        if isinstance(self.module, nn.Linear):
            return x @ self.weight.T
        y = self.module._conv_forward(x.reshape(-1, *self.in_shape), self.weight, None)
        return y.reshape(x.shape[0], -1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y for y: (batch, n_out), through autograd (exact for a linear map)."""
        x = torch.zeros(y.shape[0], self.n_in, dtype=DTYPE, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self(x), x, grad_outputs=y)
        return g

    def gram(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T A v, A v) for v: (batch, n_in), by one forward and one backward pass."""
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self(v)
            (g,) = torch.autograd.grad(y, v, grad_outputs=y.detach())
        return g, y.detach()

    def dense(self, chunk: int = 1024) -> torch.Tensor:
        """The (n_out, n_in) matrix."""
        if isinstance(self.module, nn.Linear):
            return self.weight.clone()
        cols = [self(torch.eye(self.n_in, dtype=DTYPE)[i:i + chunk]) for i in range(0, self.n_in, chunk)]
        return torch.cat(cols).T.contiguous()


def _modules(model: nn.Module) -> list[nn.Module]:
    mods = model.layers() if hasattr(model, "layers") else list(model.children()) or [model]
    out = []
    for m in mods:
        out.extend(_modules(m) if isinstance(m, nn.Sequential) else [m])
    return out


def linear_maps(model: nn.Module, in_shape: Sequence[int] | None = None) -> list[LinearMap]:
    """The linear layers of a Sequential of Flatten/Linear/Conv2d/ReLU, in order.

    Linear (or Conv2d) layers and ReLUs must alternate, starting and ending
    with a linear layer (Flatten and Identity may sit anywhere), which is the
    form of `src.baselines.DNN` and `CNN`. `in_shape` (C, H, W) is required
    for convolutions; it defaults to `model.in_shape` when the model has one.
    """
    if in_shape is None:
        in_shape = getattr(model, "in_shape", None)
    shape = tuple(int(s) for s in in_shape) if in_shape is not None else None
    maps: list[LinearMap] = []
    expect_linear = True
    for m in _modules(model):
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, nn.Flatten):
            if shape is not None:
                shape = (math.prod(shape),)
            continue
        if isinstance(m, nn.ReLU):
            if expect_linear:
                raise ValueError("ReLU without a linear layer before it: linear layers and ReLUs must alternate")
            expect_linear = True
            continue
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"unsupported layer {type(m).__name__}: only Flatten, Linear, Conv2d, ReLU")
        if not expect_linear:
            raise ValueError("two linear layers without a ReLU between them")
        expect_linear = False
        w = m.weight.detach().to("cpu", DTYPE)
        if isinstance(m, nn.Linear):
            if shape is None:
                shape = (m.in_features,)
            if math.prod(shape) != m.in_features or len(shape) != 1:
                raise ValueError(f"Linear({m.in_features}, .) gets input of shape {shape} (missing Flatten?)")
            out = (m.out_features,)
        else:
            if shape is None or len(shape) != 3:
                raise ValueError(f"Conv2d needs the (C, H, W) input shape; got {shape} (pass in_shape)")
            with torch.no_grad():
                out = tuple(m._conv_forward(torch.zeros(1, *shape, dtype=DTYPE), w, None).shape[1:])
        maps.append(LinearMap(m, shape, out, w))
        shape = out
    if not maps:
        raise ValueError("the model has no Linear or Conv2d layer")
    if expect_linear:
        raise ValueError("the model must end with a linear layer")
    return maps


# --------------------------------------------------------------------------- spectral norms

def conv_fft_norm(conv: nn.Conv2d, in_hw: Sequence[int]) -> float:
    """Exact 2-norm of a circular convolution that dominates the zero-padded `conv` on in_hw.

    Why it is an upper bound: with zero padding p, stride s and kernel k, the
    output is y[i] = sum_a K[a] x_pad[s i + a] (cross-correlation), reading
    rows s i + a <= s (H_out - 1) + k - 1 of the padded input. Embed x at
    offset p in a G-periodic grid with G a multiple of s, G >= p + H and
    G >= s (H_out - 1) + k: no read wraps around and every padded entry read
    is a zero of the grid, so y = Crop(C_s(Embed x)) where Embed is an
    isometry, Crop has norm <= 1 and C_s is the circular cross-correlation on
    the G x G grid followed by subsampling with stride s. Hence ||conv|| <= ||C_s||.

    ||C_s|| exactly: with unitary DFTs, subsampling by s folds the s aliases
    of each frequency (1-D: z_hat(w) = s^-1/2 sum_j c_hat(w + j G/s)), and
    c_hat(w) = K_hat(w) x_hat(w) with K_hat(w) the out x in matrix of kernel
    transforms. So C_s is block diagonal over the (G/s)^2 folded frequencies
    with blocks [K_hat(w + aliases)] / s (out x in*s^2), whose largest
    singular value is ||C_s||. torch's fft2 uses e^{-i..}, the conjugate of
    K_hat for a cross-correlation; conjugating a whole block keeps its
    singular values. For s = 1 this is the classical per-frequency bound.
    """
    if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        raise NotImplementedError("FFT bound only for groups=1, dilation=1, zero padding")
    if isinstance(conv.padding, str):
        raise NotImplementedError("string padding")
    w = conv.weight.detach().to("cpu", DTYPE)
    cout, cin, kh, kw = w.shape
    grids = []
    for n, k, s, p in zip(in_hw, (kh, kw), conv.stride, conv.padding):
        n_out = (n + 2 * p - k) // s + 1
        need = max(p + n, s * (n_out - 1) + k)
        grids.append(-(-need // s) * s)
    gh, gw = grids
    sh, sw = conv.stride
    fk = torch.fft.fft2(w, s=(gh, gw))  # (cout, cin, gh, gw); index w = j * (g / s) + k
    fk = fk.reshape(cout, cin, sh, gh // sh, sw, gw // sw).permute(3, 5, 0, 1, 2, 4)
    blocks = fk.reshape((gh // sh) * (gw // sw), cout, cin * sh * sw)
    best = 0.0
    for i in range(0, blocks.shape[0], 256):
        best = max(best, float(torch.linalg.matrix_norm(blocks[i:i + 256], ord=2).max()))
    return best / math.sqrt(sh * sw)


def power_iteration(f: LinearMap, tol: float = 1e-9, max_iter: int = 3000, extra: int = 20,
                    block: int = 4, seed: int = 0) -> dict:
    """Largest singular value of a linear map by (block) power iteration through autograd.

    Iterates V <- orth(A^T A V) on a block of `block` vectors (v <- grad of
    ||A v||^2 / 2, normalised, for block = 1), with a Rayleigh-Ritz step: the
    estimate is the top singular value of A V, which never exceeds ||A||
    (Cauchy interlacing), so it converges from below. Stops when the relative
    change is below `tol`, then runs `extra` more iterations.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(f.n_in, min(block, f.n_in), generator=gen, dtype=DTYPE))[0]
    sigma, done, it = 0.0, -1, 0
    for it in range(1, max_iter + extra + 1):
        g, y = f.gram(v.T)
        new = float(torch.linalg.matrix_norm(y.T, ord=2))  # sigma_max(A V), V orthonormal
        v = torch.linalg.qr(g.T)[0]
        if done < 0 and abs(new - sigma) <= tol * new:
            done = it
        sigma = max(sigma, new)
        if done >= 0 and it >= done + extra or it >= max_iter and done < 0:
            break
    return {"sigma": sigma, "iters": it, "converged": done >= 0}


def top_singular(f: LinearMap, k: int, gram_limit: int = 2048, dense_limit: int = 4_000_000,
                 iters: int = 30, tol: float = 1e-5, oversample: int = 10, seed: int = 0) -> dict:
    """Top-k singular triplets: S (k,), U (n_out, k), V (n_in, k), all float64.

    Exact when the layer is small: an SVD of its dense matrix (Linear, or a
    conv with n_in * n_out <= dense_limit), else an eigendecomposition of the
    Gram matrix in the smaller dimension (formed through autograd) when
    min(n_in, n_out) <= gram_limit. Otherwise block subspace iteration
    (V <- orth(A^T A V), `oversample` extra vectors, at most `iters` steps)
    with a final Rayleigh-Ritz step, stopped when the top-k values change by
    less than `tol` relatively; its values never exceed the true ones.
    `exact` in the result says which.
    """
    n_in, n_out = f.n_in, f.n_out
    r = min(n_in, n_out)
    k = min(k, r)
    if isinstance(f.module, nn.Linear) or n_in * n_out <= dense_limit:
        u, s, vt = torch.linalg.svd(f.dense(), full_matrices=False)
        return {"S": s[:k], "U": u[:, :k], "V": vt[:k].T, "exact": True, "iters": 0}
    if r <= gram_limit:
        if n_in <= n_out:
            eye = torch.eye(n_in, dtype=DTYPE)
            gram = torch.cat([f.gram(eye[i:i + 512])[0] for i in range(0, n_in, 512)])
            ev, vecs = torch.linalg.eigh((gram + gram.T) / 2)
            ev, vecs = ev.flip(0)[:k].clamp_min(0), vecs.flip(1)[:, :k]
            s = ev.sqrt()
            av = f(vecs.T).T
            u = av / s.clamp_min(1e-300)
            return {"S": s, "U": u, "V": vecs, "exact": True, "iters": 0}
        eye = torch.eye(n_out, dtype=DTYPE)
        at = torch.cat([f.adjoint(eye[i:i + 512]) for i in range(0, n_out, 512)])  # rows A^T e_j
        gram = at @ at.T
        ev, vecs = torch.linalg.eigh((gram + gram.T) / 2)
        ev, vecs = ev.flip(0)[:k].clamp_min(0), vecs.flip(1)[:, :k]
        s = ev.sqrt()
        v = f.adjoint(vecs.T).T / s.clamp_min(1e-300)
        return {"S": s, "U": vecs, "V": v, "exact": True, "iters": 0}
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n_in, min(k + oversample, r), generator=gen, dtype=DTYPE))[0]
    prev = None
    for it in range(1, iters + 1):
        g, _ = f.gram(q.T)
        q = torch.linalg.qr(g.T)[0]
        if it % 5 == 0 or it == iters:
            s = torch.linalg.svdvals(f(q.T).T)[:k]
            if prev is not None and float(((s - prev).abs() / s[0]).max()) < tol:
                break
            prev = s
    b = f(q.T).T  # (n_out, k + p) = A Q;  A Q = U_b S W^T  =>  A ~ U_b S (Q W)^T
    ub, s, wt = torch.linalg.svd(b, full_matrices=False)
    return {"S": s[:k], "U": ub[:, :k], "V": (q @ wt.T)[:, :k], "exact": False, "iters": it}


def _exact_linear_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w, ord=2))


# --------------------------------------------------------------------------- bounds

def naive(model: nn.Module, in_shape: Sequence[int] | None = None) -> dict:
    """Product of layer spectral norms: a rigorous upper bound on the Lipschitz constant.

    Linear: exact 2-norm (SVD, float64). Conv2d with zero padding: exact norm
    of the dominating circular convolution (`conv_fft_norm`); other convs
    fall back to power iteration and `rigorous` becomes False.
    """
    start = time.perf_counter()
    maps = linear_maps(model, in_shape)
    norms, how, rigorous = [], [], True
    for f in maps:
        if isinstance(f.module, nn.Linear):
            norms.append(_exact_linear_norm(f.weight)); how.append("svd")
            continue
        try:
            norms.append(conv_fft_norm(f.module, f.in_shape[1:])); how.append("fft")
        except NotImplementedError:
            norms.append(power_iteration(f)["sigma"]); how.append("power"); rigorous = False
    return {"method": "naive", "value": math.prod(norms), "layer_norms": norms, "layer_method": how,
            "guaranteed": rigorous, "seconds": time.perf_counter() - start}


def autolip(model: nn.Module, in_shape: Sequence[int] | None = None, tol: float = 1e-9,
            max_iter: int = 3000, seed: int = 0) -> dict:
    """AutoLip (Virmaux & Scaman 2018) for a Sequential: product of per-layer power-iteration norms.

    Each factor converges to the layer's norm from below, so the product is
    an estimate of the (valid) product of norms; for Linear layers it matches
    `naive` to the power-iteration tolerance. `guaranteed` is False because a
    truncated power iteration can stop below the norm (see `naive` for the
    rigorous product).
    """
    start = time.perf_counter()
    runs = [power_iteration(f, tol=tol, max_iter=max_iter, seed=seed + i)
            for i, f in enumerate(linear_maps(model, in_shape))]
    norms = [r["sigma"] for r in runs]
    return {"method": "autolip", "value": math.prod(norms), "layer_norms": norms,
            "iters": [r["iters"] for r in runs], "converged": all(r["converged"] for r in runs),
            "guaranteed": False, "seconds": time.perf_counter() - start}


def _pair_factors(svds: list[dict], i: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of SeqLip's pair i: A = S~_{i+1} V_{i+1}^T (k' x n), B = U_i S~_i (n x k)."""
    d = len(svds)
    si, sj = svds[i]["S"], svds[i + 1]["S"]
    ti = si if i == 0 else si.sqrt()
    tj = sj if i + 1 == d - 1 else sj.sqrt()
    a = (tj[:, None] * svds[i + 1]["V"].T).numpy()
    b = (svds[i]["U"] * ti[None, :]).numpy()
    return a, b


def _norm2(m: np.ndarray) -> float:
    return float(np.linalg.norm(m, 2)) if m.size else 0.0


def greedy_pattern(a: np.ndarray, b: np.ndarray, max_sweeps: int = 11, exact: bool | None = None) -> dict:
    """Greedy max over sigma in {0,1}^n of ||a diag(sigma) b||_2, starting from sigma = 1.

    exact=True: Virmaux & Scaman's greedy (their `optim_nn_pca_greedy`):
    sweep the coordinates, flip one when the exact spectral norm grows; at
    most `max_sweeps` sweeps (theirs: max_iteration=10, i.e. 11 sweeps).
    exact=False (large n x k): the same sweeps, but a flip is accepted when it
    grows ||a diag(sigma) b v|| for v the top right singular vector of the
    current matrix (recomputed after each sweep) -- a lower bound on the new
    norm, so the norm still increases monotonically, at O(k) per coordinate
    instead of an SVD. Default: exact when n * k^3 is small.
    Returns value (the exact norm at the final sigma), sigma, sweeps, flips.
    """
    n = a.shape[1]
    if exact is None:
        exact = n * a.shape[0] * b.shape[1] * min(a.shape[0], b.shape[1]) <= 5e8
    sigma = np.ones(n, dtype=bool)
    m = a @ b
    at = np.ascontiguousarray(a.T)
    na2 = np.einsum("ij,ij->i", at, at)
    s = _norm2(m)
    flips = 0
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        changed = 0
        if exact:
            for i in range(n):
                c = -1.0 if sigma[i] else 1.0
                mi = m + c * np.outer(a[:, i], b[i])
                si = _norm2(mi)
                if si > s * (1 + 1e-12):
                    m, s, sigma[i], changed = mi, si, not sigma[i], changed + 1
        else:
            if s == 0:
                break
            _, _, vt = np.linalg.svd(m)
            v = vt[0]
            beta = b @ v
            w = m @ v
            for i in np.flatnonzero(beta != 0):
                c = -1.0 if sigma[i] else 1.0
                ai = at[i]
                # ||w + c beta_i a_i||^2 - ||w||^2
                gain = 2 * c * beta[i] * (ai @ w) + beta[i] ** 2 * na2[i]
                if gain > 1e-12 * (w @ w):
                    w += c * beta[i] * ai
                    sigma[i] = not sigma[i]
                    changed += 1
            m = a @ (sigma[:, None] * b)
            s = _norm2(m)
        flips += changed
        if not changed:
            break
    return {"value": _norm2(m), "sigma": sigma, "sweeps": sweeps, "flips": flips, "exact_norm": exact}


def _seqlip(model, in_shape, n_sv, pair_fn, name, guaranteed, seed) -> dict:
    start = time.perf_counter()
    maps = linear_maps(model, in_shape)
    svds = [top_singular(f, n_sv, seed=seed + i) for i, f in enumerate(maps)]
    truncated = [i for i, (f, s) in enumerate(zip(maps, svds))
                 if len(s["S"]) < min(f.n_in, f.n_out) and float(s["S"][-1]) > 0]
    if len(maps) == 1:
        pairs = []
        value = float(svds[0]["S"][0])
    else:
        pairs = [pair_fn(*_pair_factors(svds, i)) for i in range(len(maps) - 1)]
        value = math.prod(p["value"] for p in pairs)
    spectral = math.prod(float(s["S"][0]) for s in svds)
    return {"method": name, "value": value, "pair_values": [p["value"] for p in pairs],
            "spectral_product": spectral, "n_sv": n_sv, "truncated_layers": truncated,
            "exact_svd": [s["exact"] for s in svds],
            "guaranteed": guaranteed and not truncated and all(s["exact"] for s in svds),
            "seconds": time.perf_counter() - start,
            **({"sweeps": [p["sweeps"] for p in pairs], "flips": [p["flips"] for p in pairs]}
               if pairs and "sweeps" in pairs[0] else {})}


def seqlip_greedy(model: nn.Module, in_shape: Sequence[int] | None = None, n_sv: int = 200,
                  max_sweeps: int = 11, seed: int = 0) -> dict:
    """Greedy SeqLip (Virmaux & Scaman 2018): an ESTIMATE, not a guaranteed upper bound.

    With SVDs M_i = U_i S_i V_i^T of the linear layers (biases dropped),
    L <= prod_i max_{sigma in {0,1}^n} ||S~_{i+1} V_{i+1}^T diag(sigma) U_i S~_i||_2,
    S~ = S^(1/2) except S~ = S on the first and last layer (REFERENCE.md).
    The max over sigma is taken greedily (`greedy_pattern`), which can stop
    below it, and layers with more than `n_sv` singular values keep only the
    top `n_sv` (as the original lipEstimation code, n_sv = 200), which drops
    the tail; so `guaranteed` is always False. Each pair value is at most the
    product of the two S~ tops, so the result never exceeds the product of
    layer norms (AutoLip / naive) up to SVD accuracy.
    """
    out = _seqlip(model, in_shape, n_sv, lambda a, b: greedy_pattern(a, b, max_sweeps), "seqlip_greedy",
                  False, seed)
    return out
