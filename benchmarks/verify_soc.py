"""Time of `lipcert verify` on a CIFAR-sized SOC network (target: under 5 s on 2 cores).

The network follows SOC's LipConvnet (singlasahil14/SOC): zero channel padding of the
3x32x32 input to 16 channels, then five skew-orthogonal convolutions (3x3 kernels equal to
minus their flipped transpose, zero padding, the exponential truncated after 12 terms as at
evaluation), each followed by MaxMin; the last three first regroup each 2x2 patch into
channels (stride 2, as the reference's einops rearrange) and keep half of the channels after
the series; a dense head. Random weights, each kernel scaled to norm 0.7 like the reference's
`correction`. Exported with the TorchScript exporter (dynamic batch) or dynamo, then
`lipcert verify` runs end to end in a fresh process, several times; the median is reported
with the in-process split between loading and bounding.
Usage: python benchmarks/verify_soc.py [--runs 5] [--dynamo]
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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def skew_kernel(channels: int, generator: torch.Generator, norm: float = 0.7) -> torch.Tensor:
    v = torch.randn(channels, channels, 3, 3, generator=generator, dtype=torch.float64)
    skew = 0.5 * (v - torch.flip(v.transpose(0, 1), [2, 3]))
    spectrum = np.fft.fft2(skew.numpy(), s=(8, 8), axes=(2, 3))
    largest = np.linalg.svd(np.moveaxis(spectrum, (0, 1), (2, 3)), compute_uv=False).max()
    return (skew * (norm / largest)).float()


class SOC(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, generator: torch.Generator) -> None:
        super().__init__()
        self.stride = stride
        self.channels = max(c_in * stride * stride, c_out)
        self.pad_channels = self.channels - c_in * stride * stride
        self.c_out = c_out
        self.weight = nn.Parameter(skew_kernel(self.channels, generator))
        self.bias = nn.Parameter(0.01 * torch.randn(c_out, 1, 1, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        z = current = x
        for i in range(1, 13):
            current = F.conv2d(current, self.weight, padding=1) / float(i)
            z = z + current
        return z[:, : self.c_out] + self.bias


class MaxMin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.split], x[:, self.split :]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def soc_network() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    plan = [(3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 64, 2), (64, 128, 2)]
    layers: list[nn.Module] = []
    for c_in, c_out, stride in plan:
        layers += [SOC(c_in, c_out, stride, g), MaxMin(c_out)]
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 10)]
    return nn.Sequential(*layers).eval()


def export(module: nn.Module, path: Path, dynamo: bool) -> Path:
    example = torch.rand(1, 3, 32, 32)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dynamo", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as folder:
        model = export(soc_network(), Path(folder) / "soc_cifar.onnx", args.dynamo)
        times = []
        for _ in range(args.runs):
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
    blocks = [layer for layer in analysis.layers if layer.op == "AffineBlock"]
    exporter = "dynamo" if args.dynamo else "TorchScript"
    print(
        "lipcert verify on a CIFAR-sized SOC network (3x32x32, 5 SOC layers of 16 to 256 "
        f"channels, 12 terms each, MaxMin), {exporter} export, {args.runs} runs"
    )
    print(
        f"  end to end, fresh process: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )
    print(f"  in process: load {loading:.2f} s, bounds {bounding:.2f} s")
    print(
        f"  {len(blocks)} SOC blocks, largest block bound {max(b.bound for b in blocks):.12f} "
        f"({blocks[0].method}); network bound {analysis.spec.lipschitz_bound:.6f}"
    )


if __name__ == "__main__":
    main()
