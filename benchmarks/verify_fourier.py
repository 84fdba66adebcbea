"""Time of `lipcert verify` on a CIFAR-sized network of Cayley convolutions run through their
FFT forward (target: under 5 s on 2 cores). Dynamo only: the TorchScript exporter cannot
write complex tensors.

The layers follow Trockman & Kolter's CayleyConv (locuslab/orthogonal-convolutions): per
frequency of the 32 x 32 grid's half spectrum, Q(f) = cayley(alpha W(f) / ||W||) from the
shifted FFT of a random 3x3 kernel, computed once (as at evaluation) and applied as
`irfft2(Q(f) rfft2(x))` plus a bias; 3 -> 16 -> 16 -> 16 channels with MaxMin between, a
dense head. lipcert bounds each layer through its per-frequency matrices (exact).
Usage: python benchmarks/verify_fourier.py --dynamo [--runs 5]
"""

from __future__ import annotations

import block_verify
import numpy as np
import torch
from torch import nn


def cayley(w: torch.Tensor) -> torch.Tensor:
    """The reference's Cayley transform of a stack of (C_out, C_in) complex matrices."""
    _, c_out, c_in = w.shape
    if c_in > c_out:
        return cayley(w.transpose(1, 2)).transpose(1, 2)
    u, v = w[:, :c_in], w[:, c_in:]
    eye = torch.eye(c_in, dtype=w.dtype)[None]
    a = u - u.conj().transpose(1, 2) + v.conj().transpose(1, 2) @ v
    inverse = torch.inverse(eye + a)
    return torch.cat((inverse @ (eye - a), -2 * v @ inverse), dim=1)


def frequency_symbol(c_out: int, c_in: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Q (n (n // 2 + 1), C_out, C_in) as CayleyConv computes it from a 3x3 kernel."""
    weight = torch.randn(c_out, c_in, 3, 3, generator=generator, dtype=torch.float64)
    grid = torch.arange(0, n).repeat((n, 1))
    shift = torch.exp(1j * 2 * np.pi * -1 * (grid + grid.T) / n)
    shift = shift[:, : n // 2 + 1].reshape(n * (n // 2 + 1), 1, 1)
    spectrum = torch.fft.rfft2(weight, (n, n)).reshape(c_out, c_in, n * (n // 2 + 1))
    wfft = shift * spectrum.permute(2, 0, 1).conj()
    return cayley(wfft.norm() * wfft / wfft.norm())


class CayleyFFT(nn.Module):
    q: torch.Tensor

    def __init__(self, c_in: int, c_out: int, n: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("q", frequency_symbol(c_out, c_in, n, generator).to(torch.complex64))
        self.bias = nn.Parameter(0.01 * torch.randn(c_out, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, c_in, n, _ = x.shape
        c_out = self.q.shape[1]
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(n * (n // 2 + 1), c_in, batch)
        mixed = (self.q @ spectrum).reshape(n, n // 2 + 1, c_out, batch)
        return torch.fft.irfft2(mixed.permute(3, 2, 0, 1)) + self.bias[:, None, None]


class MaxMin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def cayley_network() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    return nn.Sequential(
        CayleyFFT(3, 16, 32, g),
        MaxMin(),
        CayleyFFT(16, 16, 32, g),
        MaxMin(),
        CayleyFFT(16, 16, 32, g),
        MaxMin(),
        nn.Flatten(),
        nn.Linear(16 * 32 * 32, 10),
    ).eval()


def main() -> None:
    block_verify.run(
        cayley_network,
        "cayley",
        "AffineBlock",
        "a CIFAR-sized network of Cayley convolutions through their FFT forward (3x32x32, "
        "3 layers of 16 channels, MaxMin)",
        digits=9,
    )


if __name__ == "__main__":
    main()
