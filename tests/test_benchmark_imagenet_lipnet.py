"""benchmarks/imagenet_lipnet.py stays runnable: the tiny model, a handful of images, with the
--device part on the CPU (the same code a GPU run takes), end to end in seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("PIL.Image", reason="Pillow (the `images` extra) is not installed")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "imagenet_lipnet.py"


def test_device_benchmark_runs_on_the_cpu() -> None:
    arguments = ["--model", "tiny", "--images", "6", "--batch-size", "3", "--threads", "1"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments, "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    rate = r"\d+\.\d+ images/s"
    assert re.search(rf"cpu, batch 3: bare torch float32 {rate}, certify {rate} \(\d", out), out
    assert re.search(rf"bare onnxruntime float32 \(CPUExecutionProvider\) {rate}", out), out
    assert "certify's predictions equal the cpu path's: True" in out
    assert re.search(r"50,000 images on cpu \(extrapolated\): certify \d+\.\d min", out), out
