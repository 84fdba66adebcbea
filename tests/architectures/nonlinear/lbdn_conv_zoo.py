"""LBDN's convolutional Sandwich layer (Wang & Manchester 2023, acfr/LBDN `SandwichConv`), in
plain torch, as its reference forward computes it at evaluation.

Per frequency f of the n x n grid's half spectrum, `Q(f) = cayley(alpha W(f) / ||W||)`
(C_out x (C_out + C_in), orthonormal rows) from the FFT of a real 3x3 kernel with the
reference's shift; with A = Q[:, :, :C_out], B = Q[:, :, C_out:]:
    h = irfft2(sqrt2 Psi^-1 B(f) rfft2(x)) + b,   y = irfft2(sqrt2 A(f)^H Psi rfft2(relu(h)))
with Psi = diag(exp(psi)). Stride 2 regroups each 2x2 patch into channels first (the
reference's einops rearrange, which is pixel_unshuffle's order). At evaluation Q is computed
once: here at construction, in float64, and stored as a complex64 buffer. `psi_after`
replaces the psi of the second half (a look-alike whose T no longer matches); `partner`
replaces A by another Cayley transform's (a look-alike whose halves are not one unitary);
`activation` replaces the ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def cayley(w: torch.Tensor) -> torch.Tensor:
    """The reference's cayley: orthonormal columns (or rows, for wide inputs) per frequency."""
    if w.dim() == 2:
        return cayley(w[None])[0]
    _, c_out, c_in = w.shape
    if c_in > c_out:
        return cayley(w.transpose(1, 2)).transpose(1, 2)
    u, v = w[:, :c_in], w[:, c_in:]
    eye = torch.eye(c_in, dtype=w.dtype)[None]
    a = u - u.conj().transpose(1, 2) + v.conj().transpose(1, 2) @ v
    inverse = torch.inverse(eye + a)
    return torch.cat((inverse @ (eye - a), -2 * v @ inverse), dim=1)


def _shift(n: int, s: int) -> torch.Tensor:
    grid = torch.arange(0, n).repeat((n, 1))
    grid = grid + grid.T
    return torch.exp(1j * 2 * np.pi * s * grid / n)


def sandwich_symbol(c_in: int, c_out: int, n: int, seed: int, kernel: int = 3) -> torch.Tensor:
    """Q (n (n // 2 + 1), C_out, C_out + C_in), complex128, as SandwichConv computes it."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in + c_out, kernel, kernel, generator=g, dtype=torch.float64)
    shift = _shift(n, -((kernel - 1) // 2))[:, : n // 2 + 1].reshape(n * (n // 2 + 1), 1, 1)
    bins = n * (n // 2 + 1)
    spectrum = torch.fft.rfft2(weight, (n, n)).reshape(c_out, c_in + c_out, bins)
    wfft = shift * spectrum.permute(2, 0, 1).conj()
    return cayley(wfft.norm() * wfft / wfft.norm())


class SandwichConv(nn.Module):
    """SandwichConv(c_in, c_out, 3, stride) on an n x n input (n / 2 for its grid at stride 2)."""

    q: torch.Tensor
    partner_q: torch.Tensor

    def __init__(
        self,
        c_in: int,
        c_out: int,
        n: int,
        seed: int,
        stride: int = 1,
        scale: float = 1.0,
        psi_after: np.ndarray | None = None,
        partner: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.relu,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.stride, self.scale = stride, scale
        self.c_in = c_in * stride * stride
        self.c_out = c_out
        self.n = n // stride
        q = sandwich_symbol(self.c_in, c_out, self.n, seed)
        self.register_buffer("q", q.to(torch.complex64))
        other = sandwich_symbol(self.c_in, c_out, self.n, seed + 1000) if partner else q
        self.register_buffer("partner_q", other.to(torch.complex64))
        g = torch.Generator().manual_seed(seed + 1)
        self.psi = nn.Parameter(0.3 * torch.randn(c_out, generator=g))
        after = self.psi.detach() if psi_after is None else torch.as_tensor(psi_after)
        self.psi_after = nn.Parameter(after.clone().float())
        self.bias = nn.Parameter(0.1 * torch.randn(c_out, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pixel_unshuffle(x, 2)
        x = self.scale * x
        n, batch, c_out = self.n, x.shape[0], self.c_out
        bins = n * (n // 2 + 1)
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(bins, self.c_in, batch)
        pre = torch.exp(-self.psi).diag().type(spectrum.dtype)
        spectrum = 2**0.5 * pre @ self.q[:, :, c_out:] @ spectrum
        h = torch.fft.irfft2(spectrum.reshape(n, n // 2 + 1, c_out, batch).permute(3, 2, 0, 1))
        h = h + self.bias[:, None, None]
        spectrum = (
            torch.fft.rfft2(self.activation(h)).permute(2, 3, 1, 0).reshape(bins, c_out, batch)
        )
        post = torch.exp(self.psi_after).diag().type(spectrum.dtype)
        a_h = self.partner_q[:, :, :c_out].conj().transpose(1, 2)
        spectrum = 2**0.5 * a_h @ post @ spectrum
        return torch.fft.irfft2(spectrum.reshape(n, n // 2 + 1, c_out, batch).permute(3, 2, 0, 1))

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """W1 (F, C_out, C_in) and W2 (F, C_out, C_out) per frequency, complex128, from the
        float32 weights the export holds."""
        q = self.q.to(torch.complex128)
        partner = self.partner_q.to(torch.complex128)
        c_out = self.c_out
        pre = torch.exp(-self.psi.detach().double()).to(torch.complex128)
        post = torch.exp(self.psi_after.detach().double()).to(torch.complex128)
        w1 = 2**0.5 * pre[None, :, None] * q[:, :, c_out:]
        w2 = 2**0.5 * partner[:, :, :c_out].conj().transpose(1, 2) * post[None, None, :]
        return w1.numpy(), w2.numpy()


def all_active_norm(layer: SandwichConv) -> float:
    """max over frequencies of ||W2(f) W1(f)||: the layer's Jacobian where every unit is active
    (reached at some input when W1 is invertible), so a lower bound of its constant. Each bin
    stands for itself and its conjugate mirror: the symbols are Hermitian-consistent."""
    w1, w2 = layer.halves()
    return float(np.linalg.svd(w2 @ w1, compute_uv=False).max())


def jacobian_norm(layer: nn.Module, shape: tuple[int, ...], seed: int, steps: int = 40) -> float:
    """||J(x)|| at a random x (power iteration, float64): a lower bound of the constant."""
    import copy

    m64 = copy.deepcopy(layer).double().eval()
    for name, buffer in m64.named_buffers():
        if buffer.is_complex():
            setattr(m64, name, buffer.to(torch.complex128))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    v = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    estimate = 0.0
    for _ in range(steps):
        v = v / v.norm()
        jv = torch.func.jvp(m64, (x,), (v,))[1]
        vjp = torch.autograd.functional.vjp(m64, x, jv)[1]
        estimate = float(jv.detach().norm())
        v = vjp.detach()
    return estimate
