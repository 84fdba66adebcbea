"""Shared by the verify benchmarks (verify_time.py, verify_soc.py, verify_sll.py).

`run(network, name, block_op, description)`: export the network with the TorchScript exporter
(dynamic batch) or dynamo, time `lipcert verify` end to end in a fresh process several times,
then split one run in process between loading and bounding, and print the median with the
blocks lipcert recognised.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def export(module: nn.Module, path: Path, dynamo: bool, batch: int = 1) -> Path:
    example = torch.rand(batch, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=18)
            assert program is not None
            program.save(str(path))
            return path
        buffer = io.BytesIO()
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=18,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    path.write_bytes(buffer.getvalue())
    return path


def time_verify(model: Path, runs: int) -> tuple[list[float], float, float, Any]:
    """Seconds of `lipcert verify MODEL` end to end in a fresh process, `runs` times; then
    one load and one analysis in process: (times, load seconds, bound seconds, analysis)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lipcert", "verify", str(model), "--json"],
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - started)
        if done.returncode not in (0, 1):
            raise SystemExit(f"lipcert verify failed: {done.stderr}")
    from lipcert.bounds.compose import analyse
    from lipcert.frontends import load_model

    started = time.perf_counter()
    loaded = load_model(model)
    loading = time.perf_counter() - started
    started = time.perf_counter()
    analysis = analyse(loaded.graph)
    bounding = time.perf_counter() - started
    return times, loading, bounding, analysis


def run(
    network: Callable[[], nn.Module],
    name: str,
    block_op: str,
    description: str,
    *,
    batch: int = 1,
    digits: int = 6,
) -> None:
    """Parse --runs/--dynamo, export `network()` and report the timing of `lipcert verify`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dynamo", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        model = export(network(), Path(folder) / f"{name}_cifar.onnx", args.dynamo, batch)
        times, loading, bounding, analysis = time_verify(model, args.runs)
    blocks = [layer for layer in analysis.layers if layer.op == block_op]
    exporter = "dynamo" if args.dynamo else "TorchScript"
    print(f"lipcert verify on {description}, {exporter} export, {args.runs} runs")
    print(
        f"  end to end, fresh process: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )
    print(f"  in process: load {loading:.2f} s, bounds {bounding:.2f} s")
    if not blocks:
        print(f"  no {block_op} recognised; network bound {analysis.spec.lipschitz_bound:.6f}")
        return
    print(
        f"  {len(blocks)} {name.upper()} blocks, largest block bound "
        f"{max(b.bound for b in blocks):.{digits}f} ({blocks[0].method}); "
        f"network bound {analysis.spec.lipschitz_bound:.6f}"
    )
