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

import block_verify
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


def main() -> None:
    block_verify.run(
        soc_network,
        "soc",
        "AffineBlock",
        "a CIFAR-sized SOC network (3x32x32, 5 SOC layers of 16 to 256 channels, "
        "12 terms each, MaxMin)",
        batch=1,
        digits=12,
    )


if __name__ == "__main__":
    main()
