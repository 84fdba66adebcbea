"""Time of `lipcert verify` on a CIFAR-sized LBDN network of convolutional Sandwich layers
(Wang & Manchester 2023, acfr/LBDN `SandwichConv`; target: under 5 s on 2 cores). Dynamo
only: the TorchScript exporter cannot write complex tensors.

Each layer is `irfft2(sqrt2 A(f)^H Psi rfft2(relu(irfft2(sqrt2 Psi^-1 B(f) rfft2(x)) + b)))`
with [A(f) B(f)] = cayley(alpha W(f) / ||W||) per frequency (computed once, as at
evaluation); the second layer regroups 2x2 patches into channels first (stride 2, the
reference's einops rearrange); consecutive layers follow each other with no activation
between, as in LBDN's DNN. Then LBDN's dense Sandwich layer and a linear head.
lipcert certifies each conv layer with a per-frequency LipSDP certificate.
Usage: python benchmarks/verify_lbdn.py --dynamo [--runs 5]
"""

from __future__ import annotations

import block_verify
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from verify_fourier import cayley


def sandwich_symbol(c_in: int, c_out: int, n: int, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(c_out, c_in + c_out, 3, 3, generator=generator, dtype=torch.float64)
    grid = torch.arange(0, n).repeat((n, 1))
    shift = torch.exp(1j * 2 * np.pi * -1 * (grid + grid.T) / n)
    shift = shift[:, : n // 2 + 1].reshape(n * (n // 2 + 1), 1, 1)
    spectrum = torch.fft.rfft2(weight, (n, n)).reshape(c_out, c_in + c_out, n * (n // 2 + 1))
    wfft = shift * spectrum.permute(2, 0, 1).conj()
    return cayley(wfft.norm() * wfft / wfft.norm())


class SandwichConv(nn.Module):
    q: torch.Tensor

    def __init__(self, c_in: int, c_out: int, n: int, stride: int, g: torch.Generator) -> None:
        super().__init__()
        self.stride, self.n = stride, n // stride
        self.c_in, self.c_out = c_in * stride * stride, c_out
        q = sandwich_symbol(self.c_in, c_out, self.n, g)
        self.register_buffer("q", q.to(torch.complex64))
        self.psi = nn.Parameter(0.3 * torch.randn(c_out, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(c_out, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pixel_unshuffle(x, 2)
        n, batch, c_out = self.n, x.shape[0], self.c_out
        bins = n * (n // 2 + 1)
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(bins, self.c_in, batch)
        pre = torch.exp(-self.psi).diag().type(spectrum.dtype)
        spectrum = 2**0.5 * pre @ self.q[:, :, c_out:] @ spectrum
        h = torch.fft.irfft2(spectrum.reshape(n, n // 2 + 1, c_out, batch).permute(3, 2, 0, 1))
        h = h + self.bias[:, None, None]
        spectrum = torch.fft.rfft2(F.relu(h)).permute(2, 3, 1, 0).reshape(bins, c_out, batch)
        post = torch.exp(self.psi).diag().type(spectrum.dtype)
        spectrum = 2**0.5 * self.q[:, :, :c_out].conj().transpose(1, 2) @ post @ spectrum
        return torch.fft.irfft2(spectrum.reshape(n, n // 2 + 1, c_out, batch).permute(3, 2, 0, 1))


class SandwichFc(nn.Module):
    q: torch.Tensor

    def __init__(self, features_in: int, features_out: int, g: torch.Generator) -> None:
        super().__init__()
        w = torch.randn(1, features_out, features_in + features_out, generator=g)
        self.register_buffer("q", cayley(w.double())[0].float())
        self.psi = nn.Parameter(0.3 * torch.randn(features_out, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(features_out, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fout = self.q.shape[0]
        x = F.linear(x, self.q[:, fout:]) * torch.exp(-self.psi) * 2**0.5 + self.bias
        x = F.relu(x) * torch.exp(self.psi)
        return 2**0.5 * F.linear(x, self.q[:, :fout].T)


def lbdn_network() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    return nn.Sequential(
        SandwichConv(3, 16, 32, 1, g),
        SandwichConv(16, 16, 32, 2, g),
        SandwichConv(16, 32, 16, 2, g),
        nn.Flatten(),
        SandwichFc(32 * 8 * 8, 128, g),
        nn.Linear(128, 10),
    ).eval()


def main() -> None:
    block_verify.run(
        lbdn_network,
        "lbdn",
        "FourierSandwich",
        "a CIFAR-sized LBDN network (3x32x32, conv Sandwich 3->16, 16->16 and 16->32 at "
        "stride 2, dense Sandwich 2048->128, linear head)",
        digits=9,
    )


if __name__ == "__main__":
    main()
