"""Original-layout state dicts load and give the original architecture's outputs; files that would
run code or take memory, and weights that do not fit, are refused with one line."""
import io
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.checkpoints import CheckpointLayoutError, load_model, load_weights, read_checkpoint
from src.errors import CheckpointError
from src.models import build_model

SOLVER = dict(name="pr", alpha=1.0, fwd_tol=1e-11, fwd_max_iter=5000, bwd_tol=1e-6, bwd_max_iter=100, check_every=1)


def fixed_point(apply_W, b, mask, alpha, iters):
    """Forward-backward written out, independent of src.mondeq."""
    z = torch.zeros_like(b)
    for _ in range(iters):
        z = torch.relu((1 - alpha) * z + alpha * (apply_W(z) + b)) * mask
    return z


def test_original_fc_state_dict_loads_and_matches_independent_forward():
    torch.manual_seed(0)
    h, m = 10, 2.0
    sd = {"mon.linear_module.U.weight": torch.randn(h, 16) * 0.3, "mon.linear_module.U.bias": torch.randn(h),
          "mon.linear_module.A.weight": torch.randn(h, h) * 0.3, "mon.linear_module.B.weight": torch.randn(h, h) * 0.3,
          "Wout.weight": torch.randn(10, h), "Wout.bias": torch.randn(10)}
    sd = {k: v.double() for k, v in sd.items()}
    net = build_model({"name": "mon_fc", "width": h}, m, SOLVER, (1, 4, 4), 10).double()
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    A, B = sd["mon.linear_module.A.weight"], sd["mon.linear_module.B.weight"]
    W = (1 - m) * torch.eye(h, dtype=torch.float64) - A.T @ A + B - B.T
    b = x.flatten(1) @ sd["mon.linear_module.U.weight"].T + sd["mon.linear_module.U.bias"]
    alpha = m / torch.linalg.matrix_norm(torch.eye(h, dtype=torch.float64) - W, ord=2) ** 2
    z = fixed_point(lambda z: z @ W.T, b, torch.ones(h, dtype=torch.float64), alpha, 20000)
    want = z @ sd["Wout.weight"].T + sd["Wout.bias"]
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-9)


def test_original_single_conv_state_dict_loads_and_matches_independent_forward():
    torch.manual_seed(1)
    C, m = 3, 1.0
    sd = {"mon.linear_module.U.weight": torch.randn(C, 1, 3, 3), "mon.linear_module.U.bias": torch.randn(C),
          "mon.linear_module.A.weight": torch.randn(C, C, 3, 3), "mon.linear_module.B.weight": torch.randn(C, C, 3, 3),
          "mon.linear_module.g": torch.tensor(1.3), "mon.linear_module.h": torch.tensor(0.7),
          "Wout.weight": torch.randn(10, C * 2 * 2), "Wout.bias": torch.randn(10)}
    sd = {k: v.double() for k, v in sd.items()}
    net = build_model({"name": "mon_conv", "channels": C}, m, SOLVER, (1, 6, 6), 10).double()
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    p = lambda v: F.pad(v, (1, 1, 1, 1), mode="circular")
    A = sd["mon.linear_module.A.weight"] / sd["mon.linear_module.A.weight"].norm()
    B = sd["mon.linear_module.h"] * sd["mon.linear_module.B.weight"] / sd["mon.linear_module.B.weight"].norm()
    g = sd["mon.linear_module.g"]
    conv = lambda v, k: F.conv2d(p(v), k)
    conv_t = lambda v, k: conv(v, k.flip(-1, -2).transpose(0, 1))
    apply_W = lambda z: (1 - m) * z - g * conv_t(conv(z, A), A) + conv(z, B) - conv_t(z, B)
    xp = F.pad(x, (1, 1, 1, 1))  # the network zero-pads 6 -> 8
    b = conv(xp, sd["mon.linear_module.U.weight"]) + sd["mon.linear_module.U.bias"][:, None, None]
    mask = torch.zeros(1, C, 8, 8, dtype=torch.float64)
    mask[..., 1:-1, 1:-1] = 1
    z = fixed_point(apply_W, b, mask, 0.05, 4000)
    want = F.avg_pool2d(z, 4).flatten(1) @ sd["Wout.weight"].T + sd["Wout.bias"]
    with torch.no_grad():
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-8)


def test_sequential_dnn_and_lightning_checkpoints_load():
    torch.manual_seed(2)
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 10))
    net = build_model({"name": "dnn", "depth": 3, "width": 8}, None, None, (1, 4, 4), 10)
    assert load_weights(net, seq.state_dict()) == "ours"
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(net(x), seq(x))
    lightning = {"state_dict": {f"model.{k}": v for k, v in seq.state_dict().items()}}
    assert load_weights(net, lightning) == "lightning"


def test_unknown_layout_lists_missing_and_unexpected_keys():
    net = build_model({"name": "mon_fc", "width": 4}, 1.0, {}, (1, 2, 2), 10)
    bad = {"mon.linear_module.U.weight": torch.zeros(4, 4), "foo.bar": torch.zeros(1)}
    with pytest.raises(CheckpointLayoutError, match=r"missing keys: \[.*Wout\.weight.*unexpected keys: \['foo\.bar'\]"):
        load_weights(net, bad)


def test_original_multi_tier_state_dict_loads_and_matches_independent_forward():
    from test_multiconv import ref_multiply  # the independent transcription of MONMultiConv

    torch.manual_seed(3)
    net = build_model({"name": "mon_multiconv", "channels": [2, 3, 2]}, 2.0, SOLVER, (1, 8, 8), 10).double()
    op = net.mon.operator
    sd = {("mon.linear_module." + k): torch.randn_like(v) for k, v in op.state_dict().items()}
    sd.update({f"mon.linear_module.{s}.{i}": torch.tensor(0.5 + i, dtype=torch.float64)
               for s, n in (("g", 3), ("h", 3), ("gn", 2)) for i in range(n)})
    sd.update({"Wout.weight": torch.randn(10, 2 * 4 * 4, dtype=torch.float64),
               "Wout.bias": torch.randn(10, dtype=torch.float64)})
    assert load_weights(net, sd) == "monotone_op_net"
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    xp = F.pad(x, (1, 1, 1, 1))
    b0 = F.conv2d(F.pad(xp, (1, 1, 1, 1), mode="circular"), sd["mon.linear_module.U.weight"],
                  sd["mon.linear_module.U.bias"])
    b = torch.cat([b0.flatten(1), torch.zeros(3, 3 * 6 * 6 + 2 * 4 * 4, dtype=torch.float64)], 1)
    with torch.no_grad():
        z = fixed_point(lambda z: ref_multiply(op, z), b, op.border_mask(), 0.05, 3000)
        want = z[:, -2 * 4 * 4:] @ sd["Wout.weight"].T + sd["Wout.bias"]
        got = net(x)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-8)


# --- reading a file safely, and refusing weights that do not fit ------------------------------

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def _saved(obj, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _deflated_bomb(path: Path) -> Path:
    """A torch.save archive of ~1 MB whose data.pkl, deflated, inflates to 1 GiB: the pickle, then zeros."""
    blob = io.BytesIO()
    torch.save({"w": torch.ones(4)}, blob)
    with zipfile.ZipFile(blob) as real, zipfile.ZipFile(path, "w") as bomb:
        for entry in real.infolist():
            if not entry.filename.endswith("/data.pkl"):
                bomb.writestr(entry.filename, real.read(entry))
                continue
            info = zipfile.ZipInfo(entry.filename)
            info.compress_type = zipfile.ZIP_DEFLATED
            with bomb.open(info, "w", force_zip64=True) as f:
                f.write(real.read(entry))  # torch reads the pickle up to its STOP opcode
                zeros = bytes(1 << 20)
                for _ in range(GiB // len(zeros)):
                    f.write(zeros)
    return path


def _legacy_declaring_1gib(path: Path) -> Path:
    """A legacy-format checkpoint whose one storage declares 2^28 floats (1 GiB) but holds 12345."""
    blob = _saved({"w": torch.ones(12345)}, path, legacy=True).read_bytes()
    numel = b"M" + struct.pack("<H", 12345) + b"Nt"  # BININT2 12345, None, TUPLE: the storage's size
    assert blob.count(numel) == 1
    path.write_bytes(blob.replace(numel, b"\x8a\x08" + struct.pack("<q", GiB // 4) + b"Nt"))  # LONG1
    return path


# ru_maxrss of a child counts its parent's peak too (Linux carries it over fork and exec: pytest's,
# here), so the child reads its own peak, VmHWM, reset after torch's import (which alone peaks near
# 500 MB): what counts is what the read adds
MEASURE = """
import sys
from src.checkpoints import read_checkpoint
from src.errors import CheckpointError
def kib(field):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field + ":")))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = kib("VmRSS")
try:
    read_checkpoint(sys.argv[1])
except CheckpointError as err:
    print(err)
print(kib("VmHWM") - before)
"""


@pytest.mark.parametrize("make,needle", [
    (_deflated_bomb, r"entry archive/data\.pkl is compressed, which torch\.save never does .* refused unread "
                     r"\(it declares 1073741\d\d\d bytes inflated\)"),
    (_legacy_declaring_1gib, r"is truncated or damaged \(storage has wrong byte size"),
])
def test_a_checkpoint_declaring_a_gigabyte_is_refused_without_taking_it(tmp_path, make, needle):
    path = make(tmp_path / "big.ckpt")
    assert path.stat().st_size < 2 << 20
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    *message, added_kib = proc.stdout.strip().splitlines()
    assert int(added_kib) < 500 * 1024, proc.stdout + proc.stderr
    assert re.search(needle, "".join(message)), proc.stdout + proc.stderr


def _declaring(blob: bytes, sizes: dict[str, int]) -> bytes:
    """`blob` (a zip archive) with the uncompressed sizes its central directory gives set to `sizes`."""
    out = bytearray(blob)
    at = out.find(b"PK\x01\x02")  # a central directory record: size at +24, name length at +28, name at +46
    while at != -1:
        name = out[at + 46:at + 46 + struct.unpack_from("<H", out, at + 28)[0]].decode()
        if name in sizes:
            struct.pack_into("<I", out, at + 24, sizes.pop(name))
        at = out.find(b"PK\x01\x02", at + 4)
    assert not sizes, f"no entries {sorted(sizes)}"
    return bytes(out)


def test_a_stored_entry_declaring_more_than_the_file_is_refused_unread(tmp_path):
    path = _saved({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "c.ckpt")
    blob, size = path.read_bytes(), path.stat().st_size
    tensor, pickled = "c/data/0", "c/data.pkl"  # torch.save names the archive's folder after the file
    path.write_bytes(_declaring(blob, {tensor: 2**31}))
    with pytest.raises(CheckpointError, match=rf"entry {tensor} declares 2147483648 bytes, more than the whole "
                                              rf"file \({size} bytes\); refused unread$"):
        read_checkpoint(path)
    path.write_bytes(_declaring(blob, {tensor: size - 1, pickled: size - 1}))
    with zipfile.ZipFile(path) as archive:
        declared = sum(e.file_size for e in archive.infolist())
    with pytest.raises(CheckpointError, match=rf"its entries declare {declared} bytes in all, more than the whole "
                                              rf"file \({size} bytes\); refused unread$"):
        read_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, legacy):
    from test_data import OpensAFile

    marker = tmp_path / "marker"
    path = _saved({"state_dict": {"w": torch.ones(2)}, "x": OpensAFile(marker)}, tmp_path / "c.ckpt", legacy)
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain values"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)["x"].close()  # the payload is real: the unsafe loader runs it
    assert marker.exists()


@pytest.mark.parametrize("trained,given,needle", [
    (["model.width=40"], ["model.width=41"], "mon.operator.U.weight has shape [40, 784] in the checkpoint but "
                                             "[41, 784] in the configured model: set model.width=40 (now 41)"),
    (["model=mon_multiconv", "model.channels=[2,3,4]"], ["model=mon_multiconv", "model.channels=[2,5,4]"],
     "mon.operator.A0.1.weight has shape [3, 3, 3, 3] in the checkpoint but [5, 5, 3, 3] in the configured model: "
     "set model.channels=[2,3,4] (now [2,5,4])"),
    (["model=dnn"], ["model=dnn", "dataset.num_classes=5"],
     "5.weight has shape [10, 40] in the checkpoint but [5, 40] in the configured model: "
     "set dataset.num_classes=10 (now 5)"),
])
def test_weights_of_another_size_name_the_setting_that_fits(compose, tmp_path, trained, given, needle):
    cfg = compose(trained)
    net = build_model(cfg.model, cfg.m, cfg.splitting, tuple(cfg.dataset.in_shape), cfg.dataset.num_classes)
    path = _saved(net.state_dict(), tmp_path / "c.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(compose([*given, f"ckpt={path}"]), tmp_path)
    assert str(err.value) == f"checkpoint {path}: {needle}, as the checkpoint was trained"


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_weight_is_refused_by_name(bad):
    net = build_model({"name": "mon_fc", "width": 4}, 1.0, SOLVER, (1, 2, 2), 10)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["Wout.weight"][3, 1] = bad
    before = net.Wout.weight.clone()
    with pytest.raises(CheckpointError, match=r"^the checkpoint's Wout\.weight holds 1 Inf or NaN values of 40: "
                                              r"the training that wrote it diverged; allowed: finite weights$"):
        load_weights(net, state)
    assert torch.equal(net.Wout.weight, before)  # nothing loaded


@pytest.mark.parametrize("content,problem", [
    ({"state_dict": torch.ones(3), "hyper_parameters": {}}, "its state_dict is a Tensor"),
    ({"Wout.weight": torch.ones(2, 2), "Wout.bias": 3}, "entry 'Wout.bias' is a int, not a tensor"),
    ({"state_dict": {"model.w": torch.ones(1)}, "hyper_parameters": [1, 2, 3]}, "hyper_parameters is a list"),
    ({"state_dict": {"model.w": torch.ones(1)}, "hyper_parameters": {"model": "mon_fc"}},
     "hyper_parameters.model is a str"),
    ({"state_dict": {"model.w": torch.ones(1)}, "initial_state_dict": "junk"}, "initial_state_dict is a str"),
])
def test_a_checkpoint_whose_sections_are_of_other_types_is_refused_naming_the_section(tmp_path, content, problem):
    path = tmp_path / "odd.ckpt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=re.escape(problem)):
        read_checkpoint(path)


def test_a_single_conv_checkpoint_with_negative_g_is_refused():
    """W = (1 - m) I - g A^T A + B - B^T is strongly monotone with m only for g >= 0."""
    from src.models import build_model

    model = build_model({"name": "mon_conv", "channels": 2}, 1.0, {}, (1, 6, 6), 10)
    state = model.state_dict()
    state["mon.operator.g"] = torch.tensor(-0.2)
    with pytest.raises(CheckpointError, match=r"mon.operator.g is -0.2 < 0"):
        load_weights(build_model({"name": "mon_conv", "channels": 2}, 1.0, {}, (1, 6, 6), 10), state)
