"""What of the GPU check the CPU can test: the CUDA checks' own code (run against the CPU), and no
device fixed in the solver code."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cuda_checks_pass_against_the_cpu():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GPU_CHECK_DEVICE": "cpu"})
    # every CUDA check ran and passed: none skipped or deselected, whatever their number
    ran = re.search(r"\b\d+ passed\b", proc.stdout) and "failed" not in proc.stdout
    assert proc.returncode == 0 and ran, proc.stdout[-3000:]
    assert not re.search(r"skipped|deselected|xfail", proc.stdout), proc.stdout[-3000:]


def test_no_device_is_fixed_in_the_operators_and_solvers():
    # every tensor they make follows its input's or its weights' device
    fixed = re.compile(r"\.cuda\(|\.cpu\(|device=[\"'](cpu|cuda)")
    modules = [p for p in sorted((ROOT / "src" / "mondeq").glob("*.py")) if p.name != "dense.py"]  # float64 on the CPU
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in modules
            for n, line in enumerate(path.read_text().splitlines(), 1) if fixed.search(line)]
    assert not hits, hits


def test_the_gpu_check_is_one_prepared_command():
    # the target exists and runs the script, and the script parses (neither runs anything here)
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and ".ci/gpu-check" in dry.stdout, dry.stdout + dry.stderr
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "gpu-check")], timeout=60).returncode == 0
    assert os.access(ROOT / ".ci" / "gpu-check", os.X_OK)
