import itertools as it

import pytest
import torch
from torch import nn

from src.baselines import CNN, DNN

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def convs(model):
    return [m for m in model.layers() if isinstance(m, nn.Conv2d)]


def linears(model):
    return [m for m in model.layers() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("shape", [MNIST, CIFAR])
@pytest.mark.parametrize("depth", [1, 3, 14])
def test_dnn_output_shape(shape, depth):
    model = DNN(shape, 10, depth=depth, width=40)
    assert model(torch.randn(5, *shape)).shape == (5, 10)
    assert len(model.linear_layers()) == depth


def test_dnn_param_count_depth3_width40():
    # 784*40+40 + 40*40+40 + 40*10+10
    assert sum(p.numel() for p in DNN(MNIST, 10, depth=3, width=40).parameters()) == 33450


def test_dnn_state_dict_keys():
    assert list(DNN(MNIST, 10, depth=3, width=40).state_dict()) == [
        "1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"]


def test_dnn_linear_layers_in_order():
    shapes = [tuple(m.weight.shape) for m in DNN(MNIST, 10, depth=4, width=40).linear_layers()]
    assert shapes == [(40, 784), (40, 40), (40, 40), (10, 40)]


@pytest.mark.parametrize("d", [3, 10])
def test_dnn_loads_original_sequential_checkpoint(d):
    h = 40  # built exactly as the lipschitz_mondeq robustness notebook does
    torch.manual_seed(0)
    orig = nn.Sequential(nn.Flatten(), nn.Linear(784, h), nn.ReLU(),
                         *it.chain(*[[nn.Linear(h, h), nn.ReLU()] for _ in range(d - 2)]),
                         nn.Linear(h, 10))
    model = DNN(MNIST, 10, depth=d, width=h)
    model.load_state_dict(orig.state_dict())  # strict
    x = torch.randn(7, *MNIST)
    assert torch.equal(model(x), orig(x))


@pytest.mark.parametrize("size", ["sm", "med", "lg"])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_cnn_named_output_shape(size, shape):
    assert CNN(shape, 10, size=size)(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("depth", [1, 4, 7, 10, 13])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_cnn_depth_output_shape(depth, shape):
    model = CNN(shape, 10, depth=depth)
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert len(convs(model)) == depth


# Appendix F tables: (channels out, stride) per conv, then Linear 100, Linear 10
APPENDIX_F = {
    "sm": [(32, 1), (32, 2)],
    "med": [(32, 1), (32, 2), (64, 1), (64, 2)],
    "lg": [(32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2)],
}


@pytest.mark.parametrize("size", ["sm", "med", "lg"])
def test_cnn_matches_appendix_f(size):
    model = CNN(CIFAR, 10, size=size)
    assert [(m.out_channels, m.stride[0]) for m in convs(model)] == APPENDIX_F[size]
    assert all(m.kernel_size == (3, 3) for m in convs(model))
    assert [m.out_features for m in linears(model)] == [100, 10]
    assert model.depth == len(APPENDIX_F[size])
    types = [type(m) for m in model.layers()]
    assert types == [nn.Conv2d, nn.ReLU] * model.depth + [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_cnn_sm_param_count_cifar():
    # conv 3->32, conv 32->32 (stride 2: 32x32 -> 16x16), Linear(32*16*16, 100), Linear(100, 10)
    expected = (3 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 16 * 16 * 100 + 100) + (100 * 10 + 10)
    assert sum(p.numel() for p in CNN(CIFAR, 10, size="sm").parameters()) == expected


def test_cnn_size_is_depth_alias_with_plain_keys():
    a, b = CNN(CIFAR, 10, size="med"), CNN(CIFAR, 10, depth=4)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert list(a.state_dict())[:2] == ["0.weight", "0.bias"]
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, *CIFAR)
    assert torch.equal(a(x), b(x))


def test_cnn_deep_channels_capped():
    model = CNN(MNIST, 10, depth=10)
    assert [m.out_channels for m in convs(model)] == [32, 32, 64, 64, 128, 128, 128, 128, 128, 128]
    assert [m.stride[0] for m in convs(model)] == [1, 2] * 5
    assert linears(model)[0].in_features == 128 * 1 * 1  # 28 -> 14 -> 7 -> 4 -> 2 -> 1


def test_layers_walk_equals_forward():
    model = CNN(MNIST, 10, depth=4)
    x = torch.randn(2, *MNIST)
    y = x
    for m in model.layers():
        y = m(y)
    assert torch.equal(y, model(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=0, width=40), "depth.*0"),
    (dict(depth=-2, width=40), "depth.*-2"),
    (dict(depth=3, width=0), "width.*0"),
    (dict(depth=2.5, width=40), "depth.*2.5"),
])
def test_dnn_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DNN(MNIST, 10, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one.*depth=None, size=None"),
    (dict(depth=4, size="sm"), "exactly one.*depth=4, size='sm'"),
    (dict(size="xl"), r"'xl'.*\['lg', 'med', 'sm'\]"),
    (dict(depth=0), "depth.*0"),
])
def test_cnn_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CNN(CIFAR, 10, **kwargs)


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 1, 28, 28), "abc", 784])
def test_bad_in_shape(shape):
    with pytest.raises(ValueError, match="in_shape must be 3-D"):
        DNN(shape, 10, depth=3, width=40)
    with pytest.raises(ValueError, match="in_shape must be 3-D"):
        CNN(shape, 10, depth=2)
