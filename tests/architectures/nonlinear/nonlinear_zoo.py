"""Small networks of the nonlinear 1-Lipschitz families, in plain torch, and their exports.

Written from the papers and their reference code (read, not copied):
- SLL (Araujo et al., ICLR 2023; araujoalexandre/Lipschitz-SLL-Networks, core/models/layers.py):
  x - 2 W T s(W^T x + b), T = diag(1 / sum_j |W^T W|_ij q_j / q_i), and the zero channel
  padding of the first layer (a slice assignment into zeros: ScatterND once exported).
- CPL (Meunier et al., ICML 2022; MILES-PSL/Convex-Potential-Layer, layers.py):
  x - 2 / (||W||^2 + eps) W relu(W^T x + b), ||W|| from a power iteration.
- Sandwich (Wang & Manchester, ICML 2023; acfr/LBDN, layer.py SandwichFc):
  sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b), [A B] from a Cayley transform.
- LiResNet's MinMax (Hu et al., 2023; hukkai/liresnet, models/layers/activation.py):
  a > b of two channel halves, then where(., a, b) and where(., b, a), concatenated.

Ground truth (see each test): the explicit matrices of the exported float32 weights (torch's
own conv, probed by autograd in float64), the supremum of the Jacobian norm over the
activation slopes (closed form, and enumeration of the vertices on tiny sizes), and the
largest Jacobian norm of the float64 module at random points (a lower bound).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from user_export import export_like_users

# --- layers -----------------------------------------------------------------------------------


class PaddingChannels(nn.Module):
    """Zero channels appended to the input (SLL's and CPL's first layer, mode "zero")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.channels, *x.shape[2:], dtype=x.dtype)
        out[:, : x.shape[1]] = x
        return out


class SLLConv(nn.Module):
    """SLL convolutional layer; `t_scale` (1 in SLL) multiplies T to leave the 1-Lipschitz
    regime in tests; `activation` replaces ReLU for look-alikes; `other` (a second kernel)
    makes the look-alike x - W T s(V^T x)."""

    def __init__(
        self,
        channels: int,
        inner: int,
        kernel: int = 3,
        t_scale: float = 1.0,
        activation: nn.Module | None = None,
        other: bool = False,
        negative_unit: bool = False,
        flipped: bool = False,
    ) -> None:
        super().__init__()
        self.flipped = flipped
        self.kernel = nn.Parameter(torch.randn(inner, channels, kernel, kernel) * 0.5)
        self.bias = nn.Parameter(torch.randn(1, inner, 1, 1) * 0.1)
        self.q = nn.Parameter(torch.randn(inner) * 0.5)
        self.t_scale = t_scale
        self.activation = activation or nn.ReLU()
        self.other = nn.Parameter(self.kernel.detach() * 1.1 + 0.01) if other else None
        self.negative_unit = negative_unit
        self.padding = kernel // 2

    def compute_t(self) -> torch.Tensor:
        ktk = F.conv2d(self.kernel, self.kernel, padding=self.kernel.shape[-1] - 1).abs()
        q = torch.exp(self.q).reshape(-1, 1, 1, 1)
        q_inv = torch.exp(-self.q).reshape(-1, 1, 1, 1)
        t = 1.0 / (q_inv * ktk * q).sum((1, 2, 3))
        if self.negative_unit:
            t = t * torch.tensor([-1.0] + [1.0] * (t.numel() - 1), dtype=t.dtype)
        return t * self.t_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.compute_t().reshape(1, -1, 1, 1)
        res = F.conv2d(x, self.kernel, padding=self.padding) + self.bias
        res = t * self.activation(res)
        second = self.kernel if self.other is None else self.other
        if self.flipped:  # the adjoint written as a conv with the flipped, transposed kernel
            back = second.transpose(0, 1).flip(2, 3)
            pad = second.shape[-1] - 1 - self.padding
            return x - 2 * F.conv2d(res, back, padding=pad)
        res = 2 * F.conv_transpose2d(res, second, padding=self.padding)
        return x - res


class SLLLinear(nn.Module):
    """SLL dense layer (same options as SLLConv)."""

    def __init__(
        self,
        features: int,
        inner: int,
        t_scale: float = 1.0,
        activation: nn.Module | None = None,
        other: bool = False,
        negative_unit: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inner, features) / math.sqrt(features))
        self.bias = nn.Parameter(torch.randn(1, inner) * 0.1)
        self.q = nn.Parameter(torch.randn(inner) * 0.5)
        self.t_scale = t_scale
        self.activation = activation or nn.ReLU()
        self.other = nn.Parameter(self.weight.detach() * 1.1 + 0.01) if other else None
        self.negative_unit = negative_unit

    def compute_t(self) -> torch.Tensor:
        q, q_inv = torch.exp(self.q), torch.exp(-self.q)
        gram = torch.einsum("i,ik,kj,j -> ij", q_inv, self.weight, self.weight.T, q)
        t = 1.0 / gram.abs().sum(1)
        if self.negative_unit:
            t = t * torch.tensor([-1.0] + [1.0] * (t.numel() - 1), dtype=t.dtype)
        return t * self.t_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.compute_t()
        res = t * self.activation(F.linear(x, self.weight) + self.bias)
        second = self.weight if self.other is None else self.other
        return x - 2 * F.linear(res, second.T)


def _power_iteration(operator, adjoint, shape: tuple[int, ...], steps: int = 100) -> float:
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for _ in range(steps):
        x = adjoint(operator(x))
        x = x / x.norm()
    return float(operator(x).norm())


class CPLConv(nn.Module):
    """CPL convolutional layer at eval time: h = 2 / (sigma^2 + eps), sigma by 100 power
    iterations on the conv at the input size (as the reference does), frozen as a buffer."""

    def __init__(self, input_shape: tuple[int, int, int], inner: int, stride: int = 1) -> None:
        super().__init__()
        channels = input_shape[0]
        self.kernel = nn.Parameter(torch.randn(inner, channels, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(inner) * 0.1)
        self.stride = stride
        kernel = self.kernel.detach().double()
        sigma = _power_iteration(
            lambda v: F.conv2d(v, kernel, stride=stride, padding=1),
            lambda v: F.conv_transpose2d(
                v, kernel, stride=stride, padding=1, output_padding=stride - 1
            ),
            input_shape,
        )
        self.register_buffer("h", torch.tensor([2.0 / (sigma**2 + 1e-4)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(F.conv2d(x, self.kernel, bias=self.bias, stride=self.stride, padding=1))
        extra = self.stride - 1  # output_padding: back to the input's (even) size
        res = F.conv_transpose2d(
            res, self.kernel, stride=self.stride, padding=1, output_padding=extra
        )
        return x - self.h * res


class CPLLinear(nn.Module):
    """CPL dense layer at eval time."""

    def __init__(self, features: int, inner: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(inner, features) / math.sqrt(features))
        self.bias = nn.Parameter(torch.randn(inner) * 0.1)
        weight = self.weights.detach().double()
        sigma = _power_iteration(lambda v: v @ weight.T, lambda v: v @ weight, (features,))
        self.register_buffer("h", torch.tensor([2.0 / (sigma**2 + 1e-4)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.linear(F.relu(F.linear(x, self.weights, self.bias)), self.weights.t())
        return x - self.h * res


def cayley(w: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a (cout, cin) matrix, rows orthonormal when cin >= cout
    (LBDN's `cayley`, from locuslab/orthogonal-convolutions)."""
    cout, cin = w.shape
    if cin > cout:
        return cayley(w.T).T
    u, v = w[:cin], w[cin:]
    eye = torch.eye(cin, dtype=w.dtype)
    a = u - u.T + v.T @ v
    inverse = torch.inverse(eye + a)
    return torch.cat((inverse @ (eye - a), -2 * v @ inverse), dim=0)


class SandwichFc(nn.Module):
    """LBDN's dense Sandwich layer: sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features_out, features_in + features_out) * 0.3)
        self.alpha = nn.Parameter(self.weight.detach().norm().reshape(1))
        self.psi = nn.Parameter(torch.randn(features_out) * 0.5)
        self.bias = nn.Parameter(torch.randn(features_out) * 0.1)
        self.Q: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fout = self.weight.shape[0]
        if self.Q is None:  # as LBDN at eval: computed once, then a constant
            with torch.no_grad():
                self.Q = cayley(self.alpha * self.weight / self.weight.norm())
        q = self.Q.to(x.dtype)
        x = F.linear(x, q[:, fout:])
        x = x * torch.exp(-self.psi) * (2**0.5)
        x = x + self.bias
        x = F.relu(x) * torch.exp(self.psi)
        return 2**0.5 * F.linear(x, q[:, :fout].T)


class MinMaxWhere(nn.Module):
    """LiResNet's MinMax over the channel halves, written with where."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        a, b = torch.split(x, half, dim=1)
        index = a > b
        return torch.cat([torch.where(index, a, b), torch.where(index, b, a)], dim=1)


class WhereMax(nn.Module):
    """max(x, 0) and min(x, y) written with single where's (each comparison used once)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        a, b = x[:, :half], x[:, half:]
        low = torch.where(a < b, a, b)
        return torch.cat([torch.where(a > 0, a, torch.zeros_like(a)), low], dim=1)


class NActivation(nn.Module):
    """The N-activation (Prach & Lampert; berndprach/1LipschitzLayersCompared): per channel,
    with t0 <= t1 the sorted parameters, x - 2 t0 below t0, -x between, x - 2 t1 above."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(channels, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta, _ = torch.sort(self.theta, dim=1)
        for _ in range(x.dim() - 2):
            theta = theta[..., None]
        low, high = theta[:, 0], theta[:, 1]
        piece = torch.where(torch.less(x, low), x - 2 * low, -x)
        return torch.where(torch.less(x, high), piece, x - 2 * high)


class HouseHolder(nn.Module):
    """Householder activation of order 1 (Singla et al., ICLR 2022; singlasahil14/
    improved_l2_robustness, custom_activations.py): per pair of channel halves (x, y), the
    reflection of z = (x, y) across the line at angle theta/2 where x sin(theta/2) >
    y cos(theta/2), else z. Its float32 sin/cos make the export jump by ~1e-7 |z|."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.rand(1, channels // 2) * math.pi)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.theta
        x, y = z.split(z.shape[1] // 2, 1)
        selector = (x * torch.sin(0.5 * theta)) - (y * torch.cos(0.5 * theta))
        a_2 = x * torch.cos(theta) + y * torch.sin(theta)
        b_2 = x * torch.sin(theta) - y * torch.cos(theta)
        a = x * (selector <= 0) + a_2 * (selector > 0)
        b = y * (selector <= 0) + b_2 * (selector > 0)
        return torch.cat([a, b], dim=1)


class Jump(nn.Module):
    """A discontinuous select: where(a > 0, a, a + 1) (must be refused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, x + 1)


# --- networks ---------------------------------------------------------------------------------

IMAGE = (2, 4, 4)  # channels, height, width of the image networks
FIXED_BATCH = 2


def sll_conv_net(seed: int = 0, **options: object) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        PaddingChannels(4),
        SLLConv(4, 4, **options),  # type: ignore[arg-type]
        SLLConv(4, 6, **options),  # type: ignore[arg-type]
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


def sll_dense_net(seed: int = 0, **options: object) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        SLLLinear(32, 8, **options),  # type: ignore[arg-type]
        SLLLinear(32, 16, **options),  # type: ignore[arg-type]
        nn.Linear(32, 3),
    ).eval()


def cpl_net(seed: int = 0, stride: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        CPLConv(IMAGE, 4, stride=stride),
        nn.Flatten(),
        CPLLinear(32, 12),
        nn.Linear(32, 3),
    ).eval()


def sandwich_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), SandwichFc(32, 10), SandwichFc(10, 8), nn.Linear(8, 3))
    net.eval()(torch.zeros(1, *IMAGE))  # computes and caches each layer's Q
    return net


def min_max_net(seed: int = 0, activation: type[nn.Module] = MinMaxWhere) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), activation(), nn.Linear(16, 3)).eval()


def n_activation_net(seed: int = 0, conv: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    if conv:
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), NActivation(4), nn.Flatten(), nn.Linear(64, 3)
        ).eval()
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), NActivation(16), nn.Linear(16, 3)).eval()


# --- export -----------------------------------------------------------------------------------


def export(module: nn.Module, dynamo: bool, shape: tuple[int, ...] = IMAGE) -> onnx.ModelProto:
    """The module exported as users export it: TorchScript with a dynamic batch, or dynamo."""
    example = torch.rand(FIXED_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    return export_like_users(module, example, dynamo)


# --- ground truth -----------------------------------------------------------------------------


def jacobian(function, x: torch.Tensor) -> np.ndarray:
    """The Jacobian of a float64 map at x (one sample), as a dense matrix."""
    matrix = torch.autograd.functional.jacobian(lambda v: function(v).reshape(-1), x)
    return matrix.reshape(-1, x.numel()).detach().numpy()


def largest_jacobian_norm(
    module: nn.Module, shape: tuple[int, ...], points: int = 16, steps: int = 0
) -> float:
    """Largest spectral norm of the float64 module's Jacobian over random points, then
    `steps` of gradient ascent on the norm from the best one (a lower bound of the constant)."""
    import copy

    double = copy.deepcopy(module).double().eval()
    generator = torch.Generator().manual_seed(5)
    best, best_x = 0.0, None
    for _ in range(points):
        x = torch.randn(1, *shape, dtype=torch.float64, generator=generator)
        value = float(np.linalg.norm(jacobian(double, x), 2))
        if value > best:
            best, best_x = value, x
    assert best_x is not None
    x = best_x.clone().requires_grad_(True)
    for _ in range(steps):
        matrix = torch.autograd.functional.jacobian(
            lambda v: double(v).reshape(-1), x, create_graph=True
        ).reshape(-1, x.numel())
        norm = torch.linalg.matrix_norm(matrix, ord=2)
        (grad,) = torch.autograd.grad(norm, x)
        with torch.no_grad():
            x += 0.05 * grad / (grad.norm() + 1e-12)
        best = max(best, float(norm))
    return best


def conv_operator(
    kernel: torch.Tensor, shape: tuple[int, ...], padding: int, stride: int = 1
) -> np.ndarray:
    """The zero-padded conv of a float32 kernel as a dense float64 matrix (autograd probe)."""
    weight = kernel.detach().double()
    x = torch.zeros(1, *shape, dtype=torch.float64)
    return jacobian(lambda v: F.conv2d(v, weight, padding=padding, stride=stride), x)


def sll_factor(layer: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """M = W D^1/2 of an SLL/CPL layer (n_in x n_hidden) from its float32 weights."""
    if isinstance(layer, SLLConv):
        operator = conv_operator(layer.kernel, shape, layer.padding)
        d = 2 * layer.compute_t().detach().double().numpy()
        per_unit = np.repeat(d, operator.shape[0] // d.size)
    elif isinstance(layer, SLLLinear):
        operator = layer.weight.detach().double().numpy()
        per_unit = 2 * layer.compute_t().detach().double().numpy()
    elif isinstance(layer, CPLConv):
        operator = conv_operator(layer.kernel, shape, 1, layer.stride)
        per_unit = np.full(operator.shape[0], float(layer.h))
    else:
        assert isinstance(layer, CPLLinear)
        operator = layer.weights.detach().double().numpy()
        per_unit = np.full(operator.shape[0], float(layer.h))
    return operator.T * np.sqrt(per_unit)[None, :]


def sll_constant_closed_form(factor: np.ndarray) -> float:
    """sup over L in [0, 1]^n of ||I - M L M^T|| = max(1, ||M||^2 - 1)."""
    return max(1.0, float(np.linalg.norm(factor, 2)) ** 2 - 1.0)


def sll_constant_by_vertices(factor: np.ndarray) -> float:
    """The same supremum by enumerating the vertices L in {0, 1}^n (the norm is convex in L,
    so its maximum over the box is at a vertex): an independent check on tiny sizes."""
    n = factor.shape[1]
    eye = np.eye(factor.shape[0])
    best = 0.0
    for mask in range(1 << n):
        picks = np.array([(mask >> i) & 1 for i in range(n)], dtype=np.float64)
        best = max(best, float(np.linalg.norm(eye - (factor * picks) @ factor.T, 2)))
    return best


def sandwich_matrices(layer: SandwichFc) -> tuple[np.ndarray, np.ndarray]:
    """(W1, W2) of a Sandwich layer in float64, from its float32 parameters."""
    assert layer.Q is not None
    with torch.no_grad():
        fout = layer.weight.shape[0]
        q = layer.Q.double()
        psi = layer.psi.double()
        first = (q[:, fout:] * (torch.exp(-psi) * 2**0.5)[:, None]).numpy()
        second = (2**0.5 * q[:, :fout].T * torch.exp(psi)[None, :]).numpy()
    return first, second


def sandwich_constant_by_vertices(first: np.ndarray, second: np.ndarray) -> float:
    """sup over L in [0, 1]^h of ||W2 L W1||: a vertex of the box (convexity in L)."""
    h = first.shape[0]
    best = 0.0
    for mask in range(1 << h):
        picks = np.array([(mask >> i) & 1 for i in range(h)], dtype=np.float64)
        best = max(best, float(np.linalg.norm((second * picks) @ first, 2)))
    return best
