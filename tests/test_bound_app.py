"""The bound app: every method that applies, on every family, ends above the lower bound."""
import json
import re

import pytest
import torch

from src.bounds import compute
from src.bounds.compute import compute_bounds
from src.bounds.registry import METHODS, select_methods
from src.models import build_model

# (model, input shape, sampled points): conv monDEQs get few points, each costs ten implicit solves
FAMILIES = {
    "mon_fc": ({"name": "mon_fc", "width": 8}, (1, 6, 6), 64),
    "mon_conv": ({"name": "mon_conv", "channels": 3}, (1, 6, 6), 8),
    "mon_multiconv": ({"name": "mon_multiconv", "channels": [2, 3, 2]}, (1, 8, 8), 8),
    "dnn": ({"name": "dnn", "depth": 3, "width": 8}, (1, 6, 6), 64),
    "cnn": ({"name": "cnn", "depth": 2, "size": None}, (1, 8, 8), 64),
}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in ("mon_conv", "mon_multiconv")
                                    else f for f in sorted(FAMILIES)])
def test_every_upper_bound_is_above_the_lower_bound(family, compose):
    model_cfg, in_shape, points = FAMILIES[family]
    cfg = compose(["dataset=synthetic", f"dataset.in_shape={list(in_shape)}", f"bound.lower_points={points}",
                   "bound.ascent_steps=2", "m=5", "bound.unrolled_alphas=[0.01,0.1,1.0]", "bound.unrolled_batch=16"],
                  config_name="bound")
    torch.manual_seed(0)
    model = build_model(model_cfg, cfg.m, cfg.splitting, in_shape, 10).eval()
    x = torch.randn(32, *in_shape)
    y = torch.randint(0, 10, (32,))
    record = compute_bounds(model, cfg, x, y)
    assert set(record["upper"]) | set(record["failed"]) == {n for n in METHODS if METHODS[n].kind == "upper"
                                                           and METHODS[n].applies(model_cfg["name"])}
    assert not record["failed"], record["failed"]
    low = record["lower"]["grad_norm"]
    assert low > 0
    for name, value in record["upper"].items():
        if name == "sdp_pairwise":  # class pairs: each L_ij bounds |grad(f_i - f_j)| <= sqrt(2) ||J||
            assert max(max(row) for row in value) >= low / 2 ** 0.5 * (1 - 1e-6)
            continue
        if name.startswith("unrolled"):  # bounds the k-th iterate, equal to the equilibrium only up to tol
            continue
        assert value >= low * (1 - 1e-6), (name, value, low)
    json.dumps(record)  # everything recorded is JSON


def test_unknown_or_inapplicable_methods_are_rejected():
    with pytest.raises(ValueError, match="unknown bound.methods.*'nope'"):
        select_methods("dnn", ["nope"])
    with pytest.raises(ValueError, match="sdp_diag.*do not apply to model dnn; those that do: .*'lipsdp_neuron'"):
        select_methods("dnn", ["sdp_diag"])


@pytest.mark.parametrize("overrides,needle", [
    (["model=dnn", "bound.methods=[autolip,sdp_diag]"], "bound.methods ['sdp_diag'] do not apply to model dnn"),
    (["model=mon_conv", "certify.bound=[auto,sdp_pairwise]"], "certify.bound ['sdp_pairwise'] do not apply"),
])
def test_a_bound_that_does_not_apply_to_the_model_is_refused_before_any_work(compose, overrides, needle):
    from src.cli import validate
    from src.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(needle)):
        validate(compose(overrides, config_name="robustness"))


def test_every_declared_method_has_its_function():
    assert all(callable(getattr(compute, name, None)) for name in METHODS)


@pytest.mark.slow
def test_bound_app_writes_bounds_json_next_to_the_checkpoint(run_app, tmp_path, tiny):
    assert run_app("run", *tiny, "logger=none").returncode == 0
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/model.ckpt")]
    proc = run_app("bound", *tiny, "bound.methods=[theorem1,sdp_diag,grad_norm]", "bound.lower_points=64",
                   "bound.ascent_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "bounds.json").read_text())
    assert set(record["upper"]) == {"theorem1", "sdp_diag"} and set(record["lower"]) == {"grad_norm"}
    assert record["upper"]["sdp_diag"] <= record["upper"]["theorem1"] * (1 + 1e-6)
    assert record["lower"]["grad_norm"] <= record["upper"]["sdp_diag"] * (1 + 1e-6)
    assert record["solver"]["sdp_diag"]["solver"] in {"MOSEK", "SCS"}
    assert set(record["seconds"]) == {"theorem1", "sdp_diag", "grad_norm"}
    assert (record["dataset"], record["profile"]) == ("synthetic", "tiny") and 0 <= record["test_error"] <= 1
