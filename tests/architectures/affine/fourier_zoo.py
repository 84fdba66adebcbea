"""Layers applied through the Fourier domain, in plain torch, as their papers' code does.

Trockman & Kolter's CayleyConv (locuslab/orthogonal-convolutions) and Xu et al.'s LOT run
`xfft = rfft2(x).permute(2, 3, 1, 0).reshape(n * (n // 2 + 1), cin, batch)`, one complex
matrix per frequency `Q @ xfft`, then `irfft2` of the product put back in place; at
evaluation Q is computed once from the weights (here: given as a constant, as exported).
`HalfSpectrumLayer` is that forward for any half-spectrum symbol (2-D, also non-square, and
1-D with rfft / irfft), with an optional scale before and bias after, and an optional roll
of the spectrum over the frequencies by a constant permutation matrix (a look-alike that
mixes frequencies).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DTYPE = torch.float32


class HalfSpectrumLayer(nn.Module):
    """y = irfft(Q(f) rfft(scale x)) + bias, Q given on the bins rfft keeps.

    2-D: `symbol` is (n1, n2 // 2 + 1, C_out, C_in) and `size` (n1, n2); 1-D: `symbol` is
    (n // 2 + 1, C_out, C_in) and `size` (n,).
    """

    real: torch.Tensor
    imag: torch.Tensor

    def __init__(
        self,
        symbol: np.ndarray,
        size: tuple[int, ...],
        scale: float = 1.0,
        bias: np.ndarray | None = None,
        roll: bool = False,
    ) -> None:
        super().__init__()
        self.size = size
        self.scale = scale
        self.roll = roll
        self.register_buffer("real", torch.as_tensor(np.real(symbol), dtype=DTYPE))
        self.register_buffer("imag", torch.as_tensor(np.imag(symbol), dtype=DTYPE))
        self.bias = None if bias is None else nn.Parameter(torch.as_tensor(bias, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        q = torch.complex(self.real, self.imag)
        c_out, c_in = q.shape[-2:]
        if self.scale != 1.0:
            x = self.scale * x
        if len(self.size) == 2:
            n1, n2 = self.size
            bins = n1 * (n2 // 2 + 1)
            spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(bins, c_in, batch)
            if self.roll:
                spectrum = self._roll(spectrum)
            mixed = q.reshape(bins, c_out, c_in) @ spectrum
            mixed = mixed.reshape(n1, n2 // 2 + 1, c_out, batch).permute(3, 2, 0, 1)
            y = torch.fft.irfft2(mixed, s=(n1, n2))
        else:
            (n,) = self.size
            spectrum = torch.fft.rfft(x).permute(2, 1, 0)
            if self.roll:
                spectrum = self._roll(spectrum)
            y = torch.fft.irfft((q @ spectrum).permute(2, 1, 0), n=n)
        if self.bias is not None:
            y = y + self.bias[:, None, None] if y.dim() == 4 else y + self.bias[:, None]
        return y

    @staticmethod
    def _roll(spectrum: torch.Tensor) -> torch.Tensor:
        """Bin f takes bin f - 1's values: a constant cyclic permutation over the bins."""
        bins = spectrum.shape[0]
        shift = torch.roll(torch.eye(bins, dtype=spectrum.real.dtype), 1, dims=0)
        moved = spectrum.permute(1, 2, 0) @ torch.complex(shift.T, torch.zeros_like(shift))
        return moved.permute(2, 0, 1)


class LOTReference(nn.Module):
    """LOT's forward (AI-secure/Layerwise-Orthogonal-Training, `LOT.forward` with the cached
    per-frequency matrices): zero-pad by k // 2, full fft2, Q(f) @ x(f) over all n^2 bins,
    ifft2, the real part, crop, bias. `symbol` is (m, m, C_out, C_in) on the padded grid."""

    real: torch.Tensor
    imag: torch.Tensor

    def __init__(self, symbol: np.ndarray, pad: int) -> None:
        super().__init__()
        m = symbol.shape[0]
        flat = symbol.reshape(m * m, *symbol.shape[2:])
        self.register_buffer("real", torch.as_tensor(np.real(flat), dtype=DTYPE))
        self.register_buffer("imag", torch.as_tensor(np.imag(flat), dtype=DTYPE))
        self.pad = pad
        self.bias = nn.Parameter(torch.full((symbol.shape[2],), 0.05, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = torch.nn.functional.pad(x, (self.pad,) * 4)
        batch, c_in, n, _ = x.shape
        c_out = self.real.shape[1]
        spectrum = torch.fft.fft2(x).permute(2, 3, 1, 0).reshape(n * n, c_in, batch)
        mixed = torch.complex(self.real, self.imag) @ spectrum
        z = torch.fft.ifft2(mixed.reshape(n, n, c_out, batch).permute(3, 2, 0, 1)).real
        if self.pad:
            z = z[:, :, self.pad : -self.pad, self.pad : -self.pad]
        return z + self.bias[:, None, None]


def random_symbol(shape: tuple[int, ...], channels: tuple[int, int], seed: int) -> np.ndarray:
    """Complex Gaussian matrices per bin: not Hermitian-consistent on the self-conjugate bins."""
    rng = np.random.default_rng(seed)
    full = (*shape, *channels)
    return (rng.standard_normal(full) + 1j * rng.standard_normal(full)) / np.sqrt(2 * channels[1])


def exported_symbol(layer: nn.Module) -> np.ndarray:
    """The symbol as the exported file holds it (its float32 buffers `real` and `imag`, as
    HalfSpectrumLayer and affine_zoo.FourierLayer keep them), in complex128."""
    real, imag = layer.get_buffer("real"), layer.get_buffer("imag")
    return real.double().numpy() + 1j * imag.double().numpy()


def per_frequency_norm(symbol: np.ndarray) -> float:
    """max over the bins of ||Q(f)||_2, in numpy: the operator's norm when the symbol is
    Hermitian-consistent (Q(-f) = conj Q(f) on the self-conjugate bins), as Cayley's and
    LOT's are (they come from the FFT of a real kernel)."""
    matrices = symbol.reshape(-1, *symbol.shape[-2:])
    return float(np.linalg.svd(matrices, compute_uv=False).max())
