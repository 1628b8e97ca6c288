"""The CUDA checks (`make gpu-check` on a machine with a CUDA GPU; `make test` deselects them): every
operator, splitting method and torch bound placed on the GPU gives the CPU's numbers."""
from __future__ import annotations

import os

import pytest
import torch

from src.bounds.lower import grad_norm
from src.evaluation import pick_device
from src.models import build_model
from src.mondeq.layer import MonDEQLayer
from src.mondeq.splitting import SolverConfig
from tests.test_mondeq import conv_op, fc_op, multiconv_op

pytestmark = pytest.mark.cuda
TIGHT = dict(fwd_tol=1e-10, bwd_tol=1e-10, fwd_max_iter=20000, bwd_max_iter=20000, check_every=1)
FAMILIES = [("mon_fc", {"width": 40}, (1, 28, 28)), ("mon_conv", {"channels": 16}, (3, 32, 32)),
            ("mon_multiconv", {"channels": [8, 16, 32]}, (3, 32, 32))]


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    # GPU_CHECK_DEVICE=cpu runs the same checks against the CPU itself (tests/test_gpu_readiness.py)
    device = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
    assert device.type != "cuda" or torch.cuda.is_available(), \
        "the CUDA checks need a CUDA device: run `make gpu-check` on a GPU machine"
    return device


def test_auto_picks_the_gpu(cuda):
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("method", ["fb", "pr"])
@pytest.mark.parametrize("anderson", [0, 5])
@pytest.mark.parametrize("make_op", [fc_op, conv_op, multiconv_op])
def test_equilibria_and_implicit_gradients_on_the_gpu_equal_the_cpus(cuda, make_op, method, anderson):
    results = []
    for device in (torch.device("cpu"), cuda):
        op = make_op().to(device)  # float64, the same weights on both (same seed)
        x = torch.randn(4, *op.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
        alpha = 1.0 if method == "pr" else 0.05
        layer = MonDEQLayer(op, SolverConfig(name=method, alpha=alpha, anderson=anderson, **TIGHT), "cuda-check")
        x.requires_grad_(True)
        z = layer(x)
        z.square().sum().backward()
        assert z.device == x.device and layer.fwd_stats.converged and layer.bwd_stats.converged
        results.append((z.detach().cpu(), x.grad.cpu()))
    for cpu, gpu in zip(*results):
        assert (cpu - gpu).norm() <= 1e-7 * cpu.norm()


@pytest.mark.parametrize("name,fields,in_shape", FAMILIES)
def test_a_training_step_of_every_family_runs_on_the_gpu(cuda, name, fields, in_shape):
    torch.manual_seed(0)
    model = build_model({"name": name, **fields}, 20.0, {"name": "pr", "alpha": 1.0, "anderson": 5}, in_shape, 10)
    model = model.to(cuda)
    x, y = torch.randn(8, *in_shape, device=cuda), torch.randint(0, 10, (8,), device=cuda)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.device.type == cuda.type
                                        for p in model.parameters() if p.requires_grad)


def test_the_lower_bound_of_a_conv_mondeq_on_the_gpu_equals_the_cpus(cuda):
    # FC monDEQs are bounded on the CPU in float64 whatever their device; conv ones by autograd where they are
    torch.manual_seed(0)
    splitting = {"name": "pr", "alpha": 1.0, **TIGHT}
    model = build_model({"name": "mon_conv", "channels": 4}, 1.0, splitting, (1, 8, 8), 10).double()
    points = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    cpu = grad_norm(model, points, ascent_steps=3, ascent_top=4)["value"]
    gpu = grad_norm(model.to(cuda), points.to(cuda), ascent_steps=3, ascent_top=4)["value"]
    assert gpu == pytest.approx(cpu, rel=1e-6)


def test_the_exact_model_and_its_audit_on_the_gpu_agree_with_the_cpus(cuda):
    from src.certify.audit import audit
    from src.certify.exact_model import ExactModel

    torch.manual_seed(0)
    model = build_model({"name": "mon_conv", "channels": 4}, 1.0, {"name": "pr", "alpha": 1.0}, (1, 8, 8), 10)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cpu = ExactModel(model, torch.device("cpu")).evaluate(x, 8)
    exact = ExactModel(model.to(cuda), cuda)
    gpu = exact.evaluate(x, 8)
    assert (gpu.logits - cpu.logits).abs().max() <= 1e-7 and gpu.state_error.max() <= 1e-6
    labels = cpu.logits.argmax(1)
    radii = torch.full((16,), 1e-3, dtype=torch.float64)
    found = audit(exact, x, labels, radii, steps=3, restarts=2, batch_size=8)
    assert found["points"] == 16 and found["counterexamples"] == 0
