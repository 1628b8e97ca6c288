"""l2 PGD attacks (foolbox 3) on classifiers of normalised inputs, radii in pixel units.

The networks of this project take normalised images x = (p - mean) / std.
foolbox's input bounds are one scalar interval, so instead of attacking x in
the per-channel box [(0 - mean_c)/std_c, (1 - mean_c)/std_c] the model is
wrapped with the normalisation inside (foolbox's `preprocessing`, channel
axis -3): the attack works on pixels p in [0, 1]^n, the box is exactly the
image range, and the radius eps is the l2 norm of the pixel perturbation,
the unit of the paper's figures.  For one channel this is the same attack as
one on x with radius eps / std and bounds the normalised image range; for
CIFAR-10's three channels it is the pixel ball (an ellipsoid in x), which the
certificates of `src.certify` cover with the x-ball of radius eps / min(std).

monDEQs are attacked through their implicit gradient: the forward pass
solves the equilibrium with the network's own splitting settings (the
tolerances of the test evaluation), and autograd's backward pass solves the
adjoint system (src/mondeq/layer.py), so the input gradient is the exact
gradient of the solved network up to that tolerance.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .progress import ticking


def foolbox_model(model: nn.Module, mean: Sequence[float], std: Sequence[float], device=None):
    """`model` (normalised inputs) as a foolbox model of pixels in [0, 1]."""
    import foolbox as fb

    if device is None:
        device = next(model.parameters()).device
    mean_t = torch.tensor([float(v) for v in mean], dtype=torch.float32, device=device)
    std_t = torch.tensor([float(v) for v in std], dtype=torch.float32, device=device)
    return fb.PyTorchModel(model.eval(), bounds=(0.0, 1.0), device=device,
                           preprocessing=dict(mean=mean_t, std=std_t, axis=-3))


def make_attack(steps: int = 50, rel_stepsize: float = 0.025, abs_stepsize: float | None = None,
                random_start: bool = True):
    """foolbox's L2ProjectedGradientDescentAttack (its defaults: 50 steps of 0.025 eps, random start)."""
    import foolbox as fb

    return fb.attacks.L2ProjectedGradientDescentAttack(
        steps=int(steps), rel_stepsize=float(rel_stepsize),
        abs_stepsize=None if abs_stepsize is None else float(abs_stepsize), random_start=bool(random_start))


def pgd(fmodel, images: torch.Tensor, labels: torch.Tensor, eps: float, attack=None):
    """One l2 PGD run at pixel radius eps: (adversarial images in the ball and the box, fooled (N,) bool).

    `fooled` is foolbox's success: the perturbed image is misclassified (so
    also true for a clean image that is already misclassified).
    """
    attack = attack if attack is not None else make_attack()
    _, clipped, success = attack(fmodel, images, labels, epsilons=float(eps))
    return clipped.detach(), success.detach()


def cumulative(robust: torch.Tensor, eps: Sequence[float]) -> torch.Tensor:
    """robust (K, N) per radius -> robust at eps_k only if robust at every radius <= eps_k.

    An adversarial image found at a smaller radius lies in every larger ball,
    so the curve is the best of the independent PGD runs and never rises with eps.
    """
    out = robust.clone()
    running = torch.ones_like(robust[0])
    for k in sorted(range(len(eps)), key=lambda i: float(eps[i])):
        running = running & robust[k]
        out[k] = running
    return out


def pgd_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: Sequence[float],
                 mean: Sequence[float], std: Sequence[float], batch_size: int = 256, steps: int = 50,
                 rel_stepsize: float = 0.025, abs_stepsize: float | None = None, random_start: bool = True,
                 device=None, progress: bool = True) -> dict:
    """Accuracy under l2 PGD at each pixel radius of `eps`, over `images` in [0, 1] (N, C, H, W).

    A point counts as robust at eps_k when it is classified correctly and no
    PGD run at a radius <= eps_k fooled it; so the accuracy never exceeds the
    clean accuracy and never rises with eps.  Returns {eps, accuracy,
    accuracy_per_run (each radius alone), clean_accuracy, robust (K, N) bool
    tensor, clean_correct (N,) bool tensor}.
    """
    from tqdm import tqdm

    eps = [float(e) for e in eps]
    if any(e < 0 for e in eps):
        raise ValueError(f"PGD radii must be >= 0, got {eps}")
    if device is None:
        device = next(model.parameters()).device
    fmodel = foolbox_model(model, mean, std, device)
    attack = make_attack(steps, rel_stepsize, abs_stepsize, random_start)
    n = len(labels)
    robust = torch.zeros(len(eps), n, dtype=torch.bool)
    clean = torch.zeros(n, dtype=torch.bool)
    batches = range(0, n, int(batch_size))
    with tqdm(total=len(batches) * len(eps), desc="pgd", unit="attack", disable=not progress,
              dynamic_ncols=True) as bar:
        # without the bar (DVC, logs): a line every few seconds
        for start in (batches if progress else ticking(batches, len(batches), "pgd", unit="batches of points")):
            sl = slice(start, start + int(batch_size))
            x = images[sl].to(device=device, dtype=torch.float32)
            y = labels[sl].to(device)
            with torch.no_grad():
                ok = (fmodel(x).argmax(1) == y).cpu()
            clean[sl] = ok
            for k, e in enumerate(eps):
                _, fooled = pgd(fmodel, x, y, e, attack)
                robust[k, sl] = ok & ~fooled.cpu()
                bar.update(1)
    robust_cum = cumulative(robust, eps)
    return {"eps": eps, "accuracy": robust_cum.double().mean(1).tolist(),
            "accuracy_per_run": robust.double().mean(1).tolist(),
            "clean_accuracy": float(clean.double().mean()), "robust": robust_cum, "clean_correct": clean}
