"""Time of `lipcert verify` on a CIFAR-sized SLL network (target: under 5 s on 2 cores).

The network follows SLL's architecture (araujoalexandre/Lipschitz-SLL-Networks): zero
channel padding of the 3x32x32 input to 32 channels, 12 SLL convolutional layers (3x3,
inner width 32), 4x4 average pooling, 2 SLL dense layers (2048 features, inner width 512)
and a row-normalised linear head; random weights with SLL's own T normalisation. It is
exported with the TorchScript exporter (dynamic batch), then `lipcert verify` runs end to end
in a fresh process, several times, and the median is reported with the in-process split
between loading and bounding. Usage: python benchmarks/verify_sll.py [--runs 5] [--dynamo]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class PaddingChannels(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.channels, *x.shape[2:], dtype=x.dtype)
        out[:, : x.shape[1]] = x
        return out


class SLLConv(nn.Module):
    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(
            torch.randn(inner, channels, 3, 3) * math.sqrt(2 / (9 * channels))
        )
        self.bias = nn.Parameter(torch.randn(1, inner, 1, 1) * 0.01)
        self.q = nn.Parameter(torch.randn(inner) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ktk = F.conv2d(self.kernel, self.kernel, padding=2).abs()
        q = torch.exp(self.q).reshape(-1, 1, 1, 1)
        t = 1.0 / (torch.exp(-self.q).reshape(-1, 1, 1, 1) * ktk * q).sum((1, 2, 3))
        res = t.reshape(1, -1, 1, 1) * F.relu(F.conv2d(x, self.kernel, padding=1) + self.bias)
        return x - 2 * F.conv_transpose2d(res, self.kernel, padding=1)


class SLLLinear(nn.Module):
    def __init__(self, features: int, inner: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inner, features) / math.sqrt(features))
        self.bias = nn.Parameter(torch.randn(1, inner) * 0.01)
        self.q = nn.Parameter(torch.randn(inner) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, q_inv = torch.exp(self.q), torch.exp(-self.q)
        t = 1.0 / torch.einsum("i,ik,kj,j -> ij", q_inv, self.weight, self.weight.T, q).abs().sum(1)
        return x - 2 * F.linear(t * F.relu(F.linear(x, self.weight) + self.bias), self.weight.T)


class LinearNormalized(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, p=2, dim=1), self.bias)


def sll_network(width: int = 32, convs: int = 12, dense: int = 2, inner: int = 512) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [PaddingChannels(width)]
    layers += [SLLConv(width, width) for _ in range(convs)]
    layers += [nn.AvgPool2d(4), nn.Flatten()]
    layers += [SLLLinear(width * 64, inner) for _ in range(dense)]
    layers += [LinearNormalized(width * 64, 10)]
    return nn.Sequential(*layers).eval()


def export(module: nn.Module, path: Path, dynamo: bool) -> Path:
    example = torch.rand(2, 3, 32, 32)
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
        model = export(sll_network(), Path(folder) / "sll_cifar.onnx", args.dynamo)
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
    blocks = [layer for layer in analysis.layers if layer.op == "SLLBlock"]
    exporter = "dynamo" if args.dynamo else "TorchScript"
    print(
        "lipcert verify on a CIFAR-sized SLL network (3x32x32, 12 SLL convs of 32 channels, "
        f"2 SLL dense layers of 2048 features), {exporter} export, {args.runs} runs"
    )
    print(
        f"  end to end, fresh process: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )
    print(f"  in process: load {loading:.2f} s, bounds {bounding:.2f} s")
    print(
        f"  {len(blocks)} SLL blocks, largest block bound {max(b.bound for b in blocks):.6f}; "
        f"network bound {analysis.spec.lipschitz_bound:.6f}"
    )


if __name__ == "__main__":
    main()
