"""Small random networks on 2-D inputs, one per layer kind lipcert supports on a vector path.

`build(recipe)` gives the logits module (what certificates are about) and the module to
export (the logits module, or the logits followed by a Softmax). Weights are seeded; the
scale of the linear layers is either "unit" (spectral norm 1) or a multiple of the usual
1/sqrt(fan_in), so that many networks are far from 1-Lipschitz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from deel import torchlip
from soundness_support import freeze
from torch import nn

HIDDEN = 8


@dataclass(frozen=True)
class Recipe:
    kind: str
    scale: str | float
    num_logits: int
    seed: int
    opset: int = 18

    @property
    def softmax(self) -> bool:
        """A Softmax after the logits (dropped by lipcert, which certifies the logits)."""
        return self.num_logits > 1 and self.seed % 2 == 1

    @property
    def id(self) -> str:
        scale = self.scale if isinstance(self.scale, str) else f"x{self.scale:g}"
        softmax = "-softmax" if self.softmax else ""
        return f"{self.kind}-{scale}-k{self.num_logits}{softmax}-s{self.seed}"


class MaxMin(nn.Module):
    """(relu(x), relu(-x)), written as users write it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class Swish(nn.Module):
    """x * sigmoid(x) spelled out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Residual(nn.Module):
    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Branches(nn.Module):
    """Concatenation of two branches along the features."""

    def __init__(self, left: nn.Module, right: nn.Module) -> None:
        super().__init__()
        self.left, self.right = left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class Normalise(nn.Module):
    """(x - mean) / std, then a constant gain and offset: input normalisation inside."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, gain: float) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std * self.gain - 0.25


class Affine(nn.Module):
    """y * factor - offset per logit (a constant Mul and Sub); the last layer's bias is what
    `centre` shifts, so it is kept as a Linear-like `bias` parameter."""

    def __init__(self, factor: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor)
        self.bias = nn.Parameter(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor - self.bias


class UnitRows(nn.Linear):
    """A FrobeniusLinear-like head: each row of unit norm, the matrix not orthogonal."""

    def reset_rows(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            w = torch.randn(self.weight.shape, generator=generator)
            self.weight.copy_(w / w.norm(dim=1, keepdim=True))
            self.bias.copy_(0.2 * torch.randn(self.bias.shape, generator=generator))


def linear(d_in: int, d_out: int, scale: str | float, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        w = torch.randn(d_out, d_in, generator=generator, dtype=torch.float64)
        if scale == "unit":
            w = w / torch.linalg.matrix_norm(w, 2)
        else:
            w = w * float(scale) / d_in**0.5
        layer.weight.copy_(w.float())
        layer.bias.copy_(0.3 * torch.randn(d_out, generator=generator))
    return layer


def orthogonal(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """A layer with orthonormal columns (an isometry when d_out >= d_in)."""
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        q, _ = torch.linalg.qr(
            torch.randn(
                max(d_in, d_out), max(d_in, d_out), generator=generator, dtype=torch.float64
            )
        )
        layer.weight.copy_(q[:d_out, :d_in].float())
        layer.bias.copy_(0.3 * torch.randn(d_out, generator=generator))
    return layer


def batchnorm(features: int, generator: torch.Generator) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(features)
    with torch.no_grad():
        bn.running_mean.copy_(0.5 * torch.randn(features, generator=generator))
        bn.running_var.copy_(torch.rand(features, generator=generator) * 2 + 0.2)
        bn.weight.copy_(torch.randn(features, generator=generator))
        bn.bias.copy_(0.3 * torch.randn(features, generator=generator))
    return bn.eval()


Activation = Callable[[], nn.Module]

ACTIVATIONS: dict[str, Activation] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "leaky_relu_slope2": lambda: nn.LeakyReLU(2.0),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "elu_alpha2": lambda: nn.ELU(2.0),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "swish": Swish,
    "groupsort2": torchlip.GroupSort2,
    "groupsort4": lambda: torchlip.GroupSort(4),
    "fullsort": torchlip.FullSort,
    "abs": Abs,
}
# Ops that double the width.
DOUBLING: dict[str, Activation] = {"maxmin": MaxMin, "deel_maxmin": torchlip.MaxMin}
# Exported with the Gelu op (opset 20); at opset 18 the exporter writes x * (1 + erf) / 2.
OPSET: dict[str, int] = {"gelu": 20, "gelu_tanh": 20}


def build(recipe: Recipe) -> tuple[nn.Module, nn.Module]:
    """(logits module, module to export), in eval mode, float32."""
    g = torch.Generator().manual_seed(recipe.seed)
    h, k, scale = HIDDEN, recipe.num_logits, recipe.scale
    kind = recipe.kind
    layers: list[nn.Module]
    if kind in ACTIVATIONS:
        act = ACTIVATIONS[kind]
        layers = [
            linear(2, h, scale, g),
            act(),
            linear(h, h, scale, g),
            act(),
            linear(h, k, scale, g),
        ]
    elif kind in DOUBLING:
        act = DOUBLING[kind]
        layers = [
            linear(2, h, scale, g),
            act(),
            linear(2 * h, h, scale, g),
            act(),
            linear(2 * h, k, scale, g),
        ]
    elif kind == "affine":
        layers = [linear(2, k, scale, g)]
    elif kind == "orthogonal_groupsort":
        # Isometries and GroupSort: 1-Lipschitz and tight, so radii come close to the truth.
        layers = [
            orthogonal(2, h, g),
            torchlip.GroupSort2(),
            orthogonal(h, h, g),
            torchlip.GroupSort2(),
            orthogonal(h, h, g),
            torchlip.FullSort(),
            linear(h, k, scale, g),
        ]
    elif kind == "residual":
        branch = nn.Sequential(linear(h, h, scale, g), nn.ReLU(), linear(h, h, scale, g))
        layers = [
            linear(2, h, scale, g),
            torchlip.GroupSort2(),
            Residual(branch),
            nn.Tanh(),
            Residual(nn.Sequential(linear(h, h, scale, g), nn.ELU())),
            linear(h, k, scale, g),
        ]
    elif kind == "concat":
        left = nn.Sequential(linear(2, h, scale, g), nn.ReLU())
        right = nn.Sequential(
            linear(2, h // 2, scale, g), torchlip.GroupSort2(), linear(h // 2, h // 2, scale, g)
        )
        layers = [
            Branches(left, right),
            linear(h + h // 2, h, scale, g),
            nn.ReLU(),
            linear(h, k, scale, g),
        ]
    elif kind == "batchnorm":
        # After a Linear (folded into it) and after an activation (a node of its own).
        layers = [
            linear(2, h, scale, g),
            batchnorm(h, g),
            nn.ReLU(),
            batchnorm(h, g),
            linear(h, h, scale, g),
            torchlip.GroupSort2(),
            linear(h, k, scale, g),
        ]
    elif kind == "normalise":
        mean = 0.5 * torch.randn(2, generator=g)
        std = 0.2 + torch.rand(2, generator=g)
        layers = [
            Normalise(mean, std, gain=0.7),
            linear(2, h, scale, g),
            torchlip.GroupSort2(),
            linear(h, k, scale, g),
        ]
    elif kind == "batchnorm_head":
        # BatchNorm on the logits, folded into the head.
        layers = [
            linear(2, h, scale, g),
            torchlip.GroupSort2(),
            linear(h, k, scale, g),
            batchnorm(k, g),
            Affine(torch.ones(k), torch.zeros(k)),
        ]
    elif kind == "scaled_head":
        # Per-logit temperature (some negative) and offset after the head.
        factors = torch.rand(k, generator=g) * 2 + 0.3
        factors[::2] *= -1
        layers = [
            linear(2, h, scale, g),
            nn.ReLU(),
            linear(h, k, scale, g),
            Affine(factors, torch.randn(k, generator=g)),
        ]
    elif kind == "no_head":
        # A Tanh after the last Linear: no head, the global certificate sqrt(2) * L.
        layers = [
            linear(2, h, scale, g),
            torchlip.GroupSort2(),
            linear(h, k, scale, g),
            nn.Tanh(),
            Affine(torch.ones(k), torch.zeros(k)),
        ]
    elif kind == "unit_rows_head":
        head = UnitRows(h, k)
        head.reset_rows(g)
        layers = [
            linear(2, h, "unit", g),
            torchlip.GroupSort2(),
            linear(h, h, scale, g),
            torchlip.GroupSort2(),
            head,
        ]
    elif kind == "frobenius_head":
        head = torchlip.FrobeniusLinear(h, k)
        with torch.no_grad():
            head.parametrizations.weight.original.copy_(torch.randn(k, h, generator=g))
            head.bias.copy_(0.2 * torch.randn(k, generator=g))
        layers = [
            linear(2, h, "unit", g),
            torchlip.GroupSort2(),
            linear(h, h, scale, g),
            torchlip.GroupSort2(),
            head,
        ]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    logits = freeze(nn.Sequential(*layers))
    centre(logits, g)
    if recipe.softmax:
        return logits, nn.Sequential(logits, nn.Softmax(dim=1)).eval()
    return logits, logits


KINDS = [
    "affine",
    "orthogonal_groupsort",
    *ACTIVATIONS,
    *DOUBLING,
    "residual",
    "concat",
    "batchnorm",
    "normalise",
    "batchnorm_head",
    "scaled_head",
    "no_head",
    "unit_rows_head",
    "frobenius_head",
]
SCALES: tuple[str | float, ...] = ("unit", 0.6, 1.5, 3.0)
LOGITS = (1, 2, 3, 5, 10)


def centre(logits: nn.Sequential, generator: torch.Generator) -> None:
    """Shift the last layer's bias so that the decision boundary crosses the central box:
    each logit's mean (the median of a single logit) over random points is made zero."""
    head = logits[-1]
    points = 2.4 * torch.rand(512, 2, generator=generator) - 1.2
    with torch.no_grad():
        values = logits(points)
        shift = values.median(dim=0).values if values.shape[1] == 1 else values.mean(dim=0)
        if isinstance(head, Affine):  # it subtracts its bias
            head.bias.add_(shift)
        else:
            head.bias.sub_(shift)


def recipes(per_kind: int = 2) -> list[Recipe]:
    """Every kind at `per_kind` (scale, logits, seed) combinations, spread over the lists."""
    found = []
    for index, kind in enumerate(KINDS):
        for variant in range(per_kind):
            n = index * per_kind + variant
            found.append(
                Recipe(
                    kind=kind,
                    scale=SCALES[n % len(SCALES)],
                    num_logits=LOGITS[(n * 3 + variant) % len(LOGITS)],
                    seed=n,
                    opset=OPSET.get(kind, 18),
                )
            )
    return found
