"""Affine blocks through the Fourier domain (rfft, a matrix per frequency, irfft), as dynamo
exports them: bounded through their per-frequency pieces (lipcert.bounds.fourier_operator).

Ground truth, independent of lipcert: the explicit matrix of the torch module in float64
(with the exported float32 weights) and its SVD where it fits; at CIFAR size the largest
singular value of the per-frequency matrices computed in numpy from the exported weights
(exact for Cayley and LOT, whose symbols are Hermitian-consistent), and a power iteration
through torch's own FFTs as a lower bound.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import onnx
import pytest
from affine_zoo import (
    FourierLayer,
    cayley_symbol,
    dense_matrix,
    export,
    lot_symbol,
    power_iteration,
)
from fourier_zoo import (
    HalfSpectrumLayer,
    LOTReference,
    exported_symbol,
    per_frequency_norm,
    random_symbol,
)
from torch import nn

from lipcert.bounds import affine_operator as ops
from lipcert.bounds.compose import Analysis, analyse
from lipcert.bounds.fourier_operator import fourier_block, fourier_bound
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

SOUND = 1 - 1e-6  # the float32 weights of a unitary symbol are unitary to ~1e-7
RELATIVE = 1e-9  # exact methods against an explicit float64 SVD


def _cayley_cifar() -> nn.Module:
    return FourierLayer(cayley_symbol(16, 32, 21))


def _cayley_cifar_scaled() -> nn.Module:
    symbol = cayley_symbol(16, 32, 21)
    symbol[3, 5] *= 1.5  # a bin off the self-conjugate columns (k2 = 5): its mirror follows
    return FourierLayer(symbol)


def _lot() -> nn.Module:
    return FourierLayer(lot_symbol(8, 16, 22))


def _small_self_conjugate_scaled() -> nn.Module:
    symbol = cayley_symbol(4, 6, 23)
    symbol[1, 0] *= 1.5  # on the self-conjugate column k2 = 0; its mirror (5, 0) is not scaled
    return FourierLayer(symbol)


def _random_rectangular() -> nn.Module:
    symbol = random_symbol((6, 3), (3, 2), 24)  # grid 6 x 5: n2 odd, no Nyquist column
    return HalfSpectrumLayer(symbol, (6, 5), scale=2.0, bias=np.array([0.1, -0.2, 0.3]))


def _random_1d() -> nn.Module:
    return HalfSpectrumLayer(random_symbol((5,), (3, 3), 25), (8,))


def _lot_reference_cifar() -> nn.Module:
    return LOTReference(lot_symbol(16, 34, 27), pad=1)  # 32 x 32 padded to 34 x 34


def _lot_reference_small() -> nn.Module:
    return LOTReference(lot_symbol(4, 8, 28), pad=1)


def _full_spectrum_random() -> nn.Module:
    return LOTReference(random_symbol((5, 6), (3, 3), 29).reshape(5, 6, 3, 3)[:, :5], pad=0)


def _rolled() -> nn.Module:
    return HalfSpectrumLayer(random_symbol((4, 3), (2, 2), 26), (4, 4), roll=True)


MODELS = {
    "cayley_cifar": (_cayley_cifar, (16, 32, 32)),
    "cayley_cifar_scaled": (_cayley_cifar_scaled, (16, 32, 32)),
    "lot": (_lot, (8, 16, 16)),
    "self_conjugate_scaled": (_small_self_conjugate_scaled, (4, 6, 6)),
    "random_rectangular": (_random_rectangular, (2, 6, 5)),
    "random_1d": (_random_1d, (3, 8)),
    "rolled": (_rolled, (2, 4, 4)),
    "lot_reference_cifar": (_lot_reference_cifar, (16, 32, 32)),
    "lot_reference_small": (_lot_reference_small, (4, 6, 6)),
    "full_spectrum_random": (_full_spectrum_random, (3, 5, 5)),
}


@functools.cache
def module(name: str) -> nn.Module:
    return MODELS[name][0]().eval()


@functools.cache
def exported(name: str) -> onnx.ModelProto:
    return export(module(name), MODELS[name][1], dynamo=True)


@functools.cache
def analysis(name: str) -> Analysis:
    graph = load_from_proto(exported(name), LoadOptions(), source=name, fmt="onnx").graph
    return analyse(graph)


@functools.cache
def explicit_norm(name: str) -> float:
    matrix = dense_matrix(module(name), MODELS[name][1])
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def fourier(name: str) -> tuple[float, str, bool] | None:
    """The per-frequency method alone (the rule takes the smallest of several)."""
    result = analysis(name)
    (block,) = [node for node in result.graph.nodes if node.op == "AffineBlock"]
    return fourier_bound(block, result.graph, ops.body_bounds(block, result.graph))


def block_row(name: str) -> tuple[float, str]:
    rows = [layer for layer in analysis(name).layers if layer.op == "AffineBlock"]
    assert len(rows) == 1, analysis(name).layers
    return rows[0].bound, rows[0].method


@pytest.mark.parametrize("name", ["cayley_cifar", "cayley_cifar_scaled"])
def test_cifar_sized_cayley_gets_its_per_frequency_norm(name: str) -> None:
    truth = per_frequency_norm(exported_symbol(module(name)))
    bound, method = block_row(name)
    assert "per-frequency" in method, method
    assert bound >= truth * SOUND, (bound, truth)
    assert bound <= truth * (1 + 1e-6), (bound, truth)
    lower = power_iteration(module(name), MODELS[name][1], steps=60)
    assert bound >= lower * (1 - 1e-12), (bound, lower)
    assert analysis(name).spec.lipschitz_bound <= truth * (1 + 1e-6)


def test_a_frequency_scaled_by_one_and_a_half_gets_at_least_that() -> None:
    bound, _ = block_row("cayley_cifar_scaled")
    assert bound >= 1.5 * SOUND
    assert block_row("cayley_cifar")[0] <= 1 + 1e-6


@pytest.mark.parametrize(
    "name", ["lot", "self_conjugate_scaled", "random_rectangular", "random_1d"]
)
def test_per_frequency_bound_equals_the_explicit_matrix_norm(name: str) -> None:
    found = fourier(name)
    assert found is not None
    value, method, exact = found
    truth = explicit_norm(name)
    assert value >= truth * (1 - 1e-12), (value, truth)
    assert value <= truth * (1 + RELATIVE), (value, truth)
    assert exact == (name != "random_rectangular"), method  # a scale of 2 before the DFT


def test_self_conjugate_bins_are_read_through_their_real_part() -> None:
    """Scaling Q at bin (1, 0) but not at its mirror (5, 0): irfft2 keeps the Hermitian part,
    (1.5 Q + Q) / 2 there, so the true constant is 1.25, not 1.5 (the explicit matrix says
    so too); the bound follows the explicit matrix, not the naive max over bins."""
    truth = explicit_norm("self_conjugate_scaled")
    assert truth == pytest.approx(1.25, rel=1e-6)
    naive = per_frequency_norm(exported_symbol(module("self_conjugate_scaled")))
    assert naive == pytest.approx(1.5, rel=1e-6)
    assert block_row("self_conjugate_scaled")[0] == pytest.approx(truth, rel=1e-9)


def test_a_block_mixing_frequencies_gets_no_per_frequency_bound() -> None:
    result = analysis("rolled")
    (block,) = [node for node in result.graph.nodes if node.op == "AffineBlock"]
    assert fourier_block(block, result.graph) is not None  # the shape matches...
    assert fourier("rolled") is None  # ... but M is not diagonal over frequencies
    bound, method = block_row("rolled")
    assert "per-frequency" not in method
    assert bound >= explicit_norm("rolled") * (1 - 1e-12)


def test_cifar_sized_block_is_bounded_quickly() -> None:
    graph = load_from_proto(exported("cayley_cifar"), LoadOptions(), source="c", fmt="onnx").graph
    start = time.perf_counter()
    analyse(graph)
    elapsed = time.perf_counter() - start
    # 0.4 s on the 2 cores when idle (benchmarks/verify_fourier.py); generous for a busy
    # machine, far below the minutes an explicit 16384 x 16384 matrix would take.
    assert elapsed < 20, elapsed


@pytest.mark.parametrize(
    "name", ["self_conjugate_scaled", "random_rectangular", "random_1d", "full_spectrum_random"]
)
def test_onnxruntime_computes_the_module_on_non_hermitian_symbols(name: str) -> None:
    """The explicit matrices above are the torch module's; the certified function is the
    file's. On symbols that are not Hermitian-consistent on the self-conjugate bins (where
    irfft drops imaginary parts), onnxruntime's matrix of the exported file is the same."""
    import onnxruntime as ort

    shape = MODELS[name][1]
    session = ort.InferenceSession(exported(name).SerializeToString())
    feed = session.get_inputs()[0].name
    n = int(np.prod(shape))
    zero = session.run(None, {feed: np.zeros((1, *shape), np.float32)})[0].reshape(-1)
    columns = []
    for j in range(n):
        unit = np.zeros((1, n), np.float32)
        unit[0, j] = 1.0
        columns.append(session.run(None, {feed: unit.reshape(1, *shape)})[0].reshape(-1) - zero)
    from_file = np.array(columns).T
    expected = dense_matrix(module(name), shape)
    assert np.abs(from_file - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_lot_reference_forward_is_bounded_through_its_full_spectrum() -> None:
    """LOT's own forward (zero padding, fft2, per-frequency product, ifft2, real part, crop):
    at CIFAR size the bound is the padded grid's largest per-frequency singular value (the
    crop and padding make the layer's own constant at most that), above power iteration."""
    name = "lot_reference_cifar"
    truth = per_frequency_norm(exported_symbol(module(name)))
    bound, method = block_row(name)
    assert "per-frequency" in method and "half" not in method, method
    assert bound >= truth * SOUND, (bound, truth)
    assert bound <= truth * (1 + 1e-6), (bound, truth)
    lower = power_iteration(module(name), MODELS[name][1], steps=60)
    assert bound >= lower * (1 - 1e-12), (bound, lower)
    assert bound <= 1.05 * lower, (bound, lower)


def test_lot_reference_small_against_its_explicit_matrix() -> None:
    found = fourier("lot_reference_small")
    assert found is not None
    value, _, exact = found
    truth = explicit_norm("lot_reference_small")
    assert not exact  # the crop and the padding: <= only
    assert truth * (1 - 1e-12) <= value <= 1.05 * truth, (value, truth)


def test_full_spectrum_of_a_non_hermitian_symbol_is_exact() -> None:
    """fft2 / ifft2(...).real of a symbol with no mirror symmetry at all: the real part keeps
    the Hermitian part, (Q(k) + conj Q(-k)) / 2 on each pair; the explicit matrix agrees."""
    found = fourier("full_spectrum_random")
    assert found is not None
    value, _, exact = found
    truth = explicit_norm("full_spectrum_random")
    assert exact
    assert truth * (1 - 1e-12) <= value <= truth * (1 + RELATIVE), (value, truth)
