"""Feed-forward baselines the paper compares monDEQs against: DNNs and CNNs.

Both are plain ``nn.Sequential`` subclasses, so state-dict keys are the bare
indices (``1.weight``, ...) and checkpoints of the original code load as is.
"""

from __future__ import annotations

import operator
from typing import Sequence

from torch import nn

CNN_SIZES = {"sm": 2, "med": 4, "lg": 6}
CNN_HIDDEN = 100  # dense layer after the convolutions (paper, Appendix F)
CNN_MAX_CHANNELS = 128


def _positive_int(name: str, value) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return value


def _check_in_shape(in_shape) -> tuple[int, int, int]:
    # Sequence rather than tuple/list so Hydra's ListConfig passes; a str is a Sequence too
    if isinstance(in_shape, str) or not isinstance(in_shape, Sequence) or len(in_shape) != 3:
        raise ValueError(
            f"in_shape must be 3-D (channels, height, width), e.g. (1, 28, 28); got {in_shape!r}")
    return tuple(_positive_int("in_shape entry", s) for s in in_shape)


class _Sequential(nn.Sequential):
    def layers(self) -> list[nn.Module]:
        """The modules in forward order, for AutoLip/SeqLip to walk."""
        return list(self)


class DNN(_Sequential):
    """Fully connected ReLU network: Flatten, Linear, ReLU, ..., Linear.

    ``depth`` is the number of Linear layers (weight matrices), so the net
    has ``depth - 1`` hidden layers of ``width`` units. This is the paper's
    convention: the naive bound is "prod_{i=1}^d ||W_i||_2" (Sec. 5.1) for
    the DNNs of depth d = 3..14 with hidden width h = 40, and the original
    lipschitz_mondeq notebook builds depth d as Linear(784, h), d - 2 times
    Linear(h, h), Linear(h, 10). ``depth=1`` is a linear classifier.

    Index 0 is the Flatten, so the Linear layers sit at 1, 3, ..., 2*depth - 1.
    """

    def __init__(self, in_shape, num_classes: int, depth: int, width: int):
        in_shape = _check_in_shape(in_shape)
        num_classes = _positive_int("num_classes", num_classes)
        depth = _positive_int("depth", depth)
        width = _positive_int("width", width)
        c, h, w = in_shape
        dims = [c * h * w] + [width] * (depth - 1) + [num_classes]
        mods: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            mods.append(nn.Linear(a, b))
            if i < depth - 1:
                mods.append(nn.ReLU())
        super().__init__(*mods)
        self.in_shape, self.num_classes, self.depth, self.width = in_shape, num_classes, depth, width

    def linear_layers(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]


class CNN(_Sequential):
    """Convolutional ReLU network: depth x (Conv2d 3x3, ReLU), Flatten,
    Linear(., 100), ReLU, Linear(100, num_classes).

    Give exactly one of ``depth`` (number of conv layers) or ``size``.

    ``size`` names the CIFAR-10 models of the paper's Appendix F, which are
    just depths 2, 4, 6 ("CNN sm, med, and lg, having 2, 4, and 6
    convolutions respectively", Sec. 5.1; called "CNN d=2, d=4, d=6" in
    Appendix H). Appendix F fixes their conv channels/strides
    (32 s1, 32 s2 | 64 s1, 64 s2 | 128 s1, 128 s2), the dense layers
    (Linear 100, Linear 10), "ReLU activations and kernels of size 3".

    ``depth`` continues that pattern for the MNIST CNNs of Figure 1c (depth
    4..10 on its axis), whose architecture the paper does not give (its
    numbers are transcribed from Virmaux & Scaman 2018, Fig. 5): conv layer
    i (from 0) has stride 1 if i is even and 2 if odd, and
    min(32 * 2**(i // 2), 128) channels; the cap at 128, the largest count
    in any of the paper's CNNs, keeps deep nets cheap for SeqLip.

    Not in the paper, chosen here: padding 1 on every conv ("same" size at
    stride 1; spatial size n -> n at stride 1, ceil(n / 2) at stride 2,
    so CIFAR lg ends at 128 x 4 x 4 and any depth stays >= 1 x 1), biases
    on all layers, no pooling or normalisation.
    """

    def __init__(self, in_shape, num_classes: int, depth: int | None = None, size: str | None = None):
        in_shape = _check_in_shape(in_shape)
        num_classes = _positive_int("num_classes", num_classes)
        if (depth is None) == (size is None):
            raise ValueError(
                f"give exactly one of depth (int >= 1) or size (one of {sorted(CNN_SIZES)}); "
                f"got depth={depth!r}, size={size!r}"
            )
        if size is not None:
            if size not in CNN_SIZES:
                raise ValueError(f"unknown CNN size {size!r}; allowed: {sorted(CNN_SIZES)}")
            depth = CNN_SIZES[size]
        depth = _positive_int("depth", depth)
        c, h, w = in_shape
        mods: list[nn.Module] = []
        for i in range(depth):
            out, stride = min(32 * 2 ** (i // 2), CNN_MAX_CHANNELS), 1 + i % 2
            mods += [nn.Conv2d(c, out, 3, stride=stride, padding=1), nn.ReLU()]
            c, h, w = out, (h - 1) // stride + 1, (w - 1) // stride + 1
        mods += [nn.Flatten(), nn.Linear(c * h * w, CNN_HIDDEN), nn.ReLU(),
                 nn.Linear(CNN_HIDDEN, num_classes)]
        super().__init__(*mods)
        self.in_shape, self.num_classes, self.depth, self.size = in_shape, num_classes, depth, size
