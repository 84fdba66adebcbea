"""Small networks of the affine 1-Lipschitz families, in plain torch, from their papers.

- AOL (Prach & Lampert 2022): W diag(d), d_j = (sum_i |W^T W|_ij)^(-1/2); for convs the same
  with the kernel of A^T A (the full self-correlation of the kernel).
- BCOP (Li et al. 2019): an orthogonal matrix composed with block convolutions [P, I - P]
  along each axis (P a symmetric projection, from Björck orthonormalisation): a circular
  convolution with a paraunitary symbol, orthogonal.
- Cayley (Trockman & Kolter 2021): per frequency, Q = (I - A)(I + A)^(-1) of the
  skew-Hermitian A = F(V) - F(V)^H; either applied through rfft2 / irfft2 (the paper's
  forward) or written as the full-size circular convolution with kernel ifft2(Q).
- LOT (Xu et al. 2022): per frequency, Q = V (V^H V)^(-1/2), the same two ways.
- SOC (Singla & Feizi 2021): sum_(k <= T) A^k / k! of a conv A whose kernel is minus its
  flipped transpose (zero padding k // 2), scaled to a small norm, then MaxMin.
- LiResNet (Hu et al. 2023): x + conv(x) blocks.

Weights are random (seeded); what the tests check is how lipcert bounds them as exported.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from user_export import export_like_users

DTYPE = torch.float32


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bjorck(w: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Björck orthonormalisation: w <- w (3/2 I - 1/2 w^T w), from w / ||w||."""
    w = w / torch.linalg.matrix_norm(w, ord=2)
    eye = torch.eye(w.shape[1], dtype=w.dtype)
    for _ in range(iterations):
        w = w @ (1.5 * eye - 0.5 * w.T @ w)
    return w


def compose_kernels(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Kernel of conv(outer) o conv(inner) on an infinite grid (cross-correlations)."""
    c_out, c_mid = outer.shape[:2]
    c_in = inner.shape[1]
    ko, ki = np.array(outer.shape[2:]), np.array(inner.shape[2:])
    result = np.zeros((c_out, c_in, *(ko + ki - 1)))
    for a in range(outer.shape[2]):
        for b in range(outer.shape[3]):
            for c in range(inner.shape[2]):
                for d in range(inner.shape[3]):
                    result[:, :, a + c, b + d] += outer[:, :, a, b] @ inner[:, :, c, d]
    del c_mid
    return result


# --- AOL --------------------------------------------------------------------------------------


class AOLDense(nn.Module):
    """W diag(d), the rescaling computed in the forward from the parameter (as AOL does)."""

    def __init__(self, features_in: int, features_out: int, seed: int) -> None:
        super().__init__()
        g = _generator(seed)
        self.weight = nn.Parameter(torch.randn(features_out, features_in, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(features_out, generator=g))

    def rescaled(self) -> torch.Tensor:
        gram = (self.weight.T @ self.weight).abs()
        return self.weight * gram.sum(dim=0).rsqrt()[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rescaled(), self.bias)


class AOLConv(nn.Module):
    """K diag(d) per input channel, d from the kernel of A^T A, computed in the forward, or
    once at construction (`precomputed`: the exported kernel is then a plain constant)."""

    def __init__(
        self,
        channels: int,
        kernel: int,
        seed: int,
        circular: bool = True,
        precomputed: bool = False,
    ) -> None:
        super().__init__()
        g = _generator(seed)
        self.weight = nn.Parameter(torch.randn(channels, channels, kernel, kernel, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(channels, generator=g))
        self.mode = "circular" if circular else "zeros"
        self.pad = kernel // 2
        self.precomputed = precomputed
        if precomputed:
            with torch.no_grad():
                self.weight.copy_(self._rescale(self.weight.double()).float())

    def rescaled(self) -> torch.Tensor:
        return self.weight if self.precomputed else self._rescale(self.weight)

    @staticmethod
    def _rescale(weight: torch.Tensor) -> torch.Tensor:
        k = weight.shape[-1]
        t = weight.transpose(0, 1)  # (in, out, k, k): the input channels as a batch
        gram = F.conv2d(t, t, padding=k - 1).abs()  # (in_i, in_j, 2k-1, 2k-1)
        scale = gram.sum(dim=(1, 2, 3)).rsqrt()
        return weight * scale[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "circular":
            x = F.pad(x, (self.pad,) * 4, mode="circular")
            return F.conv2d(x, self.rescaled(), self.bias)
        return F.conv2d(x, self.rescaled(), self.bias, padding=self.pad)


# --- BCOP -------------------------------------------------------------------------------------


def bcop_kernel(channels: int, kernel: int, seed: int) -> np.ndarray:
    g = _generator(seed)
    result = bjorck(torch.randn(channels, channels, generator=g, dtype=torch.float64))
    k = result.numpy()[:, :, None, None]
    eye = np.eye(channels)
    for _ in range(kernel - 1):
        for axis in (2, 3):
            u = bjorck(torch.randn(channels, channels // 2, generator=g, dtype=torch.float64))
            p = (u @ u.T).numpy()
            shape = (channels, channels, 2, 1) if axis == 2 else (channels, channels, 1, 2)
            block = np.zeros(shape)
            block[:, :, 0, 0] = p
            block[:, :, -1, -1] = eye - p
            k = compose_kernels(block, k)
    return k


class CircularConv(nn.Module):
    """A fixed kernel as a circular convolution (BCOP, or the full-size Cayley / LOT kernel)."""

    def __init__(self, kernel: np.ndarray, bias_seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(kernel, dtype=DTYPE))
        g = _generator(bias_seed)
        self.bias = nn.Parameter(0.1 * torch.randn(kernel.shape[0], generator=g))
        k = kernel.shape[-1]
        self.pads = ((k - 1) // 2, k - 1 - (k - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, e = self.pads
        x = F.pad(x, (b, e, b, e), mode="circular")
        return F.conv2d(x, self.weight, self.bias)


# --- Cayley and LOT ----------------------------------------------------------------------------


def _frequency_matrices(channels: int, size: int, seed: int, kernel: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.zeros((channels, channels, size, size))
    v[:, :, :kernel, :kernel] = rng.standard_normal((channels, channels, kernel, kernel)) * 0.3
    spectrum = np.fft.fft2(v, axes=(2, 3))  # (C, C, n, n)
    return np.moveaxis(spectrum, (0, 1), (2, 3))  # (n, n, C, C)


def cayley_symbol(channels: int, size: int, seed: int, kernel: int = 3) -> np.ndarray:
    """Per frequency (n, n, C, C): Q = (I - A)(I + A)^(-1), A = V - V^H."""
    v = _frequency_matrices(channels, size, seed, kernel)
    a = v - np.conj(np.swapaxes(v, -1, -2))
    eye = np.eye(channels)
    return (eye - a) @ np.linalg.inv(eye + a)


def lot_symbol(channels: int, size: int, seed: int, kernel: int = 3) -> np.ndarray:
    """Per frequency: Q = V (V^H V)^(-1/2)."""
    v = _frequency_matrices(channels, size, seed, kernel) + np.eye(channels)
    gram = np.conj(np.swapaxes(v, -1, -2)) @ v
    values, vectors = np.linalg.eigh(gram)
    inverse_root = (vectors * values[..., None, :] ** -0.5) @ np.conj(np.swapaxes(vectors, -1, -2))
    return v @ inverse_root


def symbol_to_kernel(symbol: np.ndarray) -> np.ndarray:
    """The full-size kernel (C, C, n, n) of the circular cross-correlation with that symbol.

    A cross-correlation y[p] = sum_t K[t] x[p + t] acts at frequency f as sum_t K[t] w^(t f)
    (w = e^(2 pi i / n)), i.e. n * ifft2(K) at f; K = fft2(Q) / n^2 ... up to a reflection
    that keeps every frequency's matrix unitary, so the operator stays orthogonal.
    """
    kernel = np.fft.ifft2(np.moveaxis(symbol, (2, 3), (0, 1)), axes=(2, 3))
    return np.real(kernel)


class FourierLayer(nn.Module):
    """Cayley / LOT forward as in the papers: rfft2, one complex matrix per frequency, irfft2."""

    def __init__(self, symbol: np.ndarray) -> None:
        super().__init__()
        n = symbol.shape[0]
        half = symbol[:, : n // 2 + 1]  # the bins rfft2 keeps
        self.register_buffer("real", torch.as_tensor(np.real(half), dtype=DTYPE))
        self.register_buffer("imag", torch.as_tensor(np.imag(half), dtype=DTYPE))
        self.size = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, batch, channels = self.size, x.shape[0], x.shape[1]
        q = torch.complex(self.real, self.imag).reshape(n * (n // 2 + 1), channels, channels)
        spectrum = torch.fft.rfft2(x).permute(2, 3, 1, 0).reshape(n * (n // 2 + 1), channels, batch)
        mixed = (q @ spectrum).reshape(n, n // 2 + 1, channels, batch).permute(3, 2, 0, 1)
        return torch.fft.irfft2(mixed, s=(n, n))


# --- SOC --------------------------------------------------------------------------------------


def soc_kernel(channels: int, kernel: int, seed: int, norm: float = 0.7) -> torch.Tensor:
    """(V - flipped V^T) / 2, scaled so that its circular-conv norm on a large grid is `norm`."""
    g = _generator(seed)
    v = torch.randn(channels, channels, kernel, kernel, generator=g, dtype=torch.float64)
    skew = 0.5 * (v - torch.flip(v.transpose(0, 1), [2, 3]))
    spectrum = np.fft.fft2(skew.numpy(), s=(32, 32), axes=(2, 3))
    largest = np.linalg.svd(np.moveaxis(spectrum, (0, 1), (2, 3)), compute_uv=False).max()
    return (skew * (norm / largest)).to(DTYPE)


class SOC(nn.Module):
    def __init__(
        self, channels: int, kernel: int, seed: int, terms: int = 12, circular: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(soc_kernel(channels, kernel, seed))
        g = _generator(seed + 1)
        self.bias = nn.Parameter(0.1 * torch.randn(channels, 1, 1, generator=g))
        self.terms = terms
        self.pad = kernel // 2
        self.circular = circular

    def conv(self, z: torch.Tensor) -> torch.Tensor:
        if self.circular:
            return F.conv2d(F.pad(z, (self.pad,) * 4, mode="circular"), self.weight)
        return F.conv2d(z, self.weight, padding=self.pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x
        current = x
        for i in range(1, self.terms + 1):
            current = self.conv(current) / float(i)
            z = z + current
        return z + self.bias


class MaxMin(nn.Module):
    """Sort each pair (channel c, channel c + C/2): max then min."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, : self.split], x[:, self.split :]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


# --- LiResNet ---------------------------------------------------------------------------------


class LiResBlock(nn.Module):
    """x + conv(x), the conv scaled to spectral norm `norm` (zero padding)."""

    def __init__(self, channels: int, kernel: int, seed: int, norm: float = 0.9) -> None:
        super().__init__()
        g = _generator(seed)
        w = torch.randn(channels, channels, kernel, kernel, generator=g, dtype=torch.float64)
        spectrum = np.fft.fft2(w.numpy(), s=(32, 32), axes=(2, 3))
        largest = np.linalg.svd(np.moveaxis(spectrum, (0, 1), (2, 3)), compute_uv=False).max()
        self.weight = nn.Parameter((w * (norm / largest)).to(DTYPE))
        self.bias = nn.Parameter(0.1 * torch.randn(channels, generator=g))
        self.pad = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.conv2d(x, self.weight, self.bias, padding=self.pad)


# --- exports and ground truth ------------------------------------------------------------------


def export(module: nn.Module, input_shape: tuple[int, ...], dynamo: bool) -> onnx.ModelProto:
    """torch.onnx.export as users call it: TorchScript with a dynamic batch, or dynamo."""
    example = torch.rand(1, *input_shape, generator=_generator(123))
    return export_like_users(module.eval(), example, dynamo)


def dense_matrix(module: nn.Module, input_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of an affine module in float64: f(e_j) - f(0), column by column."""
    m64 = _float64(module)
    n = int(np.prod(input_shape))
    with torch.no_grad():
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *input_shape)
        zero = torch.zeros(1, *input_shape, dtype=torch.float64)
        columns = (m64(basis) - m64(zero)).reshape(n, -1)
    return columns.T.numpy()


def exact_norm(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    return float(np.linalg.svd(dense_matrix(module, input_shape), compute_uv=False)[0])


def power_iteration(module: nn.Module, input_shape: tuple[int, ...], steps: int = 150) -> float:
    """A lower bound of ||A|| by power iteration on A^T A through autograd (second method)."""
    m64 = _float64(module)
    g = _generator(7)
    v = torch.randn(1, *input_shape, dtype=torch.float64, generator=g)
    zero = torch.zeros(1, *input_shape, dtype=torch.float64)
    with torch.no_grad():
        offset = m64(zero)
    estimate = 0.0
    for _ in range(steps):
        v = v / v.norm()
        x = v.clone().requires_grad_(True)
        y = m64(x) - offset
        (grad,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
        estimate = float(y.detach().norm())
        v = grad.detach()
    return estimate


def _float64(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).double().eval()
