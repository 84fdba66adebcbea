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

import math

import block_verify
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


def main() -> None:
    block_verify.run(
        sll_network,
        "sll",
        "SLLBlock",
        "a CIFAR-sized SLL network (3x32x32, 12 SLL convs of 32 channels, "
        "2 SLL dense layers of 2048 features)",
        batch=2,
        digits=6,
    )


if __name__ == "__main__":
    main()
