"""An ImageNet-sized LipNet for the benchmarks: 3x224x224 input, nine stride-2 convs up to
512 channels, GroupSort2 after each, a 1,000-class linear head.

Weights are random: orthogonal reshaped kernels divided by their operator norm at their input
size, and an orthogonal head, so every layer is (about) 1-Lipschitz and the bounds work on
realistic spectra; the benchmarks measure time, not accuracy.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

# (in channels, out channels): 224 -> 112 -> 56 -> 28 -> 14 -> 7 -> 4 -> 2 -> 1 -> 1 pixels.
WIDTHS = [
    (3, 32),
    (32, 64),
    (64, 128),
    (128, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
]
CLASSES = 1000
INPUT_SHAPE = (3, 224, 224)
# A small model of the same kind (3x32x32, three stride-2 convs, 10 classes): the benchmark
# runs end to end on it in seconds (`--model tiny`), to check the script, not to measure.
TINY_WIDTHS = [(3, 8), (8, 16), (16, 16)]
TINY_INPUT_SHAPE = (3, 32, 32)
TINY_CLASSES = 10


class GroupSort2(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        pairs = x.view(shape[0], shape[1] // 2, 2, *shape[2:])
        return torch.cat([pairs.min(2, keepdim=True)[0], pairs.max(2, keepdim=True)[0]], 2).view(
            shape
        )


def operator_norm(conv: torch.nn.Conv2d, size: int, iterations: int = 30) -> float:
    """||conv|| on size x size inputs by power iteration (an estimate from below)."""
    x = torch.randn(1, conv.in_channels, size, size)
    for _ in range(iterations):
        y = torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
        x = torch.nn.grad.conv2d_input(x.shape, conv.weight, y, stride=2, padding=1)
        x = x / x.norm()
    y = torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    return float(y.norm())


def imagenet_lipnet(
    seed: int = 0,
    *,
    widths: list[tuple[int, int]] = WIDTHS,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    classes: int = CLASSES,
) -> torch.nn.Module:
    """The module (eval mode, float32). Each conv is divided by its operator norm at its
    input size (power iteration, so lipcert's bound ends a little above 1 per layer, as with
    trained LipNets)."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    size = input_shape[1]
    for c_in, c_out in widths:
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        torch.nn.init.orthogonal_(conv.weight)
        with torch.no_grad():
            conv.weight /= operator_norm(conv, size)
            conv.bias.uniform_(-0.01, 0.01)
        layers += [conv, GroupSort2()]
        size = (size + 1) // 2
    head = torch.nn.Linear(widths[-1][1] * size * size, classes)
    torch.nn.init.orthogonal_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
    layers += [torch.nn.Flatten(), head]
    return torch.nn.Sequential(*layers).eval()


def export(
    module: torch.nn.Module, path: Path, input_shape: tuple[int, int, int] = INPUT_SHAPE
) -> Path:
    """ONNX (TorchScript exporter, opset 18, dynamic batch), as users' files come."""
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.zeros(1, *input_shape),),
        buffer,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    path.write_bytes(buffer.getvalue())
    return path
