"""A CIFAR-sized LipNet for the benchmarks: 3x32x32 input, 8 convs up to 128 channels.

Weights are random with orthogonal reshaped kernels (as Björck-normalised layers have), so
the bounds work on realistic spectra; the benchmarks measure time, not accuracy.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch


class GroupSort2(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        pairs = x.view(shape[0], shape[1] // 2, 2, *shape[2:])
        return torch.cat([pairs.min(2, keepdim=True)[0], pairs.max(2, keepdim=True)[0]], 2).view(
            shape
        )


def cifar_lipnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    widths = [
        (3, 32, 1),
        (32, 32, 1),
        (32, 64, 2),
        (64, 64, 1),
        (64, 128, 2),
        (128, 128, 1),
        (128, 128, 2),
        (128, 128, 1),
    ]
    layers: list[torch.nn.Module] = []
    for c_in, c_out, stride in widths:
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        torch.nn.init.orthogonal_(conv.weight)
        with torch.no_grad():
            conv.weight /= 3.0  # sqrt(k*k): the size-free normalisation of deel-lip
        layers += [conv, GroupSort2()]
    head = torch.nn.Linear(128 * 4 * 4, 10)
    torch.nn.init.orthogonal_(head.weight)
    layers += [torch.nn.Flatten(), head]
    return torch.nn.Sequential(*layers).eval()


def export(module: torch.nn.Module, path: Path) -> Path:
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, 32, 32),),
        buffer,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    path.write_bytes(buffer.getvalue())
    return path
