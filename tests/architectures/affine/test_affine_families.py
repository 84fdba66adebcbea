"""The affine 1-Lipschitz families of the zoo, exported by both torch exporters.

For every family and exporter that can write it, lipcert must load the file and bound each
block within 5 % of its true constant, and never below it. The truth is the largest singular
value of the block's explicit matrix (the float64 module on unit vectors, then SVD); power
iteration through autograd is the independent second computation that checks it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from affine_zoo import (
    SOC,
    AOLConv,
    AOLDense,
    CircularConv,
    FourierLayer,
    LiResBlock,
    MaxMin,
    bcop_kernel,
    cayley_symbol,
    dense_matrix,
    exact_norm,
    export,
    lot_symbol,
    power_iteration,
    symbol_to_kernel,
)
from torch import nn

from lipcert.bounds.compose import Analysis, analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

# The exporters compute derived weights (AOL's rescaling) in float32 with their own
# rounding: the exported operator differs from the float64 module by ~1e-7 relative.
SOUND = 1 - 1e-6
TARGET = 1.05


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    fused_op: str  # the one row lipcert's report shows for the block
    method: str  # a word of the method lipcert should use
    legacy: bool = True  # whether the TorchScript exporter can write it


FAMILIES: dict[str, Family] = {
    "aol_dense": Family(lambda: AOLDense(12, 10, 0), (12,), "Gemm", "SVD"),
    "aol_conv_circular": Family(
        lambda: AOLConv(3, 3, 1, precomputed=True), (3, 6, 6), "CircularConv", "FFT"
    ),
    # The rescaling computed in the forward, as AOL does: exported as ops on the kernel.
    "aol_conv_circular_runtime_rescaling": Family(
        lambda: AOLConv(3, 3, 11), (3, 6, 6), "CircularConv", "FFT"
    ),
    "bcop_circular": Family(
        lambda: CircularConv(bcop_kernel(4, 3, 2)), (4, 6, 6), "CircularConv", "FFT"
    ),
    "cayley_full_size_conv": Family(
        lambda: CircularConv(symbol_to_kernel(cayley_symbol(3, 7, 3))),
        (3, 7, 7),
        "CircularConv",
        "FFT",
    ),
    "cayley_full_size_conv_even": Family(
        lambda: CircularConv(symbol_to_kernel(cayley_symbol(2, 6, 4))),
        (2, 6, 6),
        "CircularConv",
        "FFT",
    ),
    "lot_full_size_conv": Family(
        lambda: CircularConv(symbol_to_kernel(lot_symbol(3, 7, 5))),
        (3, 7, 7),
        "CircularConv",
        "FFT",
    ),
    "cayley_fft": Family(
        lambda: FourierLayer(cayley_symbol(3, 6, 6)),
        (3, 6, 6),
        "AffineBlock",
        "per-frequency",
        False,
    ),
    "lot_fft": Family(
        lambda: FourierLayer(lot_symbol(3, 6, 7)), (3, 6, 6), "AffineBlock", "per-frequency", False
    ),
    "soc_zero_padding": Family(lambda: SOC(4, 3, 8), (4, 6, 6), "AffineBlock", "skew"),
    "soc_circular": Family(
        lambda: SOC(4, 3, 9, circular=True), (4, 6, 6), "AffineBlock", "symbols"
    ),
    "liresnet_block": Family(lambda: LiResBlock(4, 3, 10), (4, 6, 6), "AffineBlock", "probed"),
}
EXPORTS = [
    pytest.param(name, dynamo, id=f"{name}-{'dynamo' if dynamo else 'torchscript'}")
    for name, family in FAMILIES.items()
    for dynamo in (False, True)
    if dynamo or family.legacy
]


@functools.cache
def module(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name].build().eval()


@functools.cache
def truth(name: str) -> float:
    return exact_norm(module(name), FAMILIES[name].input_shape)


@functools.cache
def exported(name: str, dynamo: bool) -> onnx.ModelProto:
    return export(module(name), FAMILIES[name].input_shape, dynamo)


@functools.cache
def analysis(name: str, dynamo: bool) -> Analysis:
    model = exported(name, dynamo)
    return analyse(load_from_proto(model, LoadOptions(), source=name, fmt="onnx").graph)


@pytest.mark.parametrize(("name", "dynamo"), EXPORTS)
def test_block_bound_is_within_five_percent_of_the_true_constant(name: str, dynamo: bool) -> None:
    result = analysis(name, dynamo)
    bound = result.spec.lipschitz_bound
    assert bound >= truth(name) * SOUND, (bound, truth(name))
    assert bound <= TARGET * truth(name), (bound, truth(name), result.layers)


@pytest.mark.parametrize(("name", "dynamo"), EXPORTS)
def test_block_is_one_row_with_its_method(name: str, dynamo: bool) -> None:
    family = FAMILIES[name]
    rows = [layer for layer in analysis(name, dynamo).layers if layer.op == family.fused_op]
    assert len(rows) == 1, analysis(name, dynamo).layers
    assert family.method.lower() in rows[0].method.lower(), rows[0].method
    # Nothing of the block is left outside it but reshapes and constant offsets.
    others = {layer.op for layer in analysis(name, dynamo).layers} - {family.fused_op}
    assert others <= {"Add", "Reshape", "Identity", "Squeeze", "Unsqueeze"}, others


@pytest.mark.parametrize("name", list(FAMILIES))
def test_true_constant_agrees_with_power_iteration(name: str) -> None:
    estimate = power_iteration(module(name), FAMILIES[name].input_shape)
    assert estimate <= truth(name) * (1 + 1e-9)
    assert estimate >= truth(name) * (1 - 1e-3)


def test_the_legacy_exporter_cannot_write_complex_tensors() -> None:
    with pytest.raises(Exception, match=r"fft_rfft2|complex"):
        export(module("cayley_fft"), FAMILIES["cayley_fft"].input_shape, dynamo=False)


@pytest.mark.parametrize("name", ["cayley_fft", "lot_fft"])
def test_fourier_layers_are_orthogonal_as_the_papers_say(name: str) -> None:
    singular = np.linalg.svd(
        dense_matrix(module(name), FAMILIES[name].input_shape), compute_uv=False
    )
    assert singular.max() == pytest.approx(1.0, abs=1e-6)
    assert singular.min() == pytest.approx(1.0, abs=1e-6)


# --- whole networks ----------------------------------------------------------------------------


class SOCNet(nn.Module):
    """SOC + MaxMin, twice, then a dense head: SOC's LipConvnet in miniature."""

    def __init__(self, circular: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [SOC(4, 3, 20, circular=circular), SOC(4, 3, 21, circular=circular)]
        )
        self.activation = MaxMin(4)
        self.head = nn.Linear(4 * 6 * 6, 5)
        torch.nn.init.normal_(self.head.weight, std=0.1, generator=torch.Generator().manual_seed(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = self.activation(block(x))
        return self.head(x.flatten(1))


class LiResNet(nn.Module):
    """A conv stem, two x + conv(x) blocks with MaxMin, a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.ModuleList(
            [LiResBlock(4, 3, 30, norm=0.5), LiResBlock(4, 3, 31, norm=0.5)]
        )
        self.activation = MaxMin(4)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = self.activation(block(x))
        return self.head(x.flatten(1))


def _soc_parts(net: SOCNet) -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [(block, (4, 6, 6)) for block in net.blocks]


def _liresnet_parts(net: LiResNet) -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [(net.stem, (2, 6, 6)), *((block, (4, 6, 6)) for block in net.blocks)]


NETWORKS = {
    "soc_net": (lambda: SOCNet(), (4, 6, 6), _soc_parts),
    "soc_net_circular": (lambda: SOCNet(circular=True), (4, 6, 6), _soc_parts),
    "liresnet": (LiResNet, (2, 6, 6), _liresnet_parts),
}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_bound_is_within_five_percent_of_the_product_of_its_blocks(
    name: str, dynamo: bool
) -> None:
    build, shape, parts = NETWORKS[name]
    torch.manual_seed(0)
    net = build().eval()
    model = export(net, shape, dynamo)
    result = analyse(load_from_proto(model, LoadOptions(), source=name, fmt="onnx").graph)
    product = 1.0
    for part, part_shape in parts(net):
        product *= exact_norm(part, part_shape)
    head = np.asarray(net.head.weight.detach(), dtype=np.float64)
    product *= float(np.linalg.svd(head, compute_uv=False)[0])
    bound = result.spec.lipschitz_bound
    assert bound <= TARGET * product, (bound, product, result.layers)
    # Never below what the network shows: its Jacobians at random points.
    net64 = net.double()
    rng = torch.Generator().manual_seed(5)
    for _ in range(5):
        x = torch.rand(1, *shape, dtype=torch.float64, generator=rng)
        jacobian = torch.autograd.functional.jacobian(lambda v: net64(v).reshape(-1), x)
        largest = float(np.linalg.svd(jacobian.reshape(5, -1).numpy(), compute_uv=False)[0])
        assert bound >= largest * SOUND
