"""Review: fused affine blocks reading constants the model computes (lipcert.bounds.folded).

folded raises an AffineBlock's bound by ((1 + rho) / (1 - rho))^k - 1 times max(input gain,
bound), k the number of inexact constants it reads, on the argument that the block's input
gain counts every layer's |W| along its paths (so a constant used j times along one path, as
K in a Taylor series, is counted j times). Ground truth: the block is linear; its exact
matrix at every corner of the exact constants (each entry within rho = 2^-31 of its float64
value, as the analysis allows up to 2^-30) is built in exact rationals, and its spectral norm
compared with lipcert's bound in exact arithmetic (2 x 2: the largest eigenvalue of A^T A in
closed form). Each test also checks that the worst corner's norm exceeds the float64
constants' by more than rho / 10 of itself, so a bound of the float64 operator alone fails.
With folded's spread removed (exact_spread -> 0) the circular-conv tests fail (the
per-frequency bound is exact for the float64 kernel, with no rho margin of its own); the
dense blocks' probed-matrix bound adds rho times the block's input gain itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds import affine_operator as ops
from lipcert.bounds import folded
from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.model import LoadOptions

_RHO = Fraction(2) ** -31
Matrix = list[list[Fraction]]


def _const(values: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _loaded(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    shape: tuple[int, ...] = (2,),
    opset: int = 17,
) -> Graph:
    """x (1 x shape) -> nodes -> z, then Relu (so the block is a hidden layer, not the head);
    every constant the model computes is taken as known to rho of itself only."""
    nodes = [*nodes, helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, *shape])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 19 else 9
    onnx.checker.check_model(model)
    loaded = load_from_proto(model, LoadOptions(input_shape=shape), source="m", fmt="onnx").graph
    loaded.folded_error = {name: float(_RHO) for name in loaded.folded_error}
    return loaded


def _values(graph: Graph, name: str) -> list[Fraction]:
    return [Fraction(float(v)) for v in np.asarray(graph.constant(name)).reshape(-1)]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    n = len(a)
    return [
        [sum((a[i][k] * b[k][j] for k in range(n)), Fraction(0)) for j in range(n)]
        for i in range(n)
    ]


def _add(a: Matrix, b: Matrix, scale: Fraction = Fraction(1)) -> Matrix:
    return [
        [x + scale * y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)
    ]


def _eye(n: int) -> Matrix:
    return [[Fraction(int(i == j)) for j in range(n)] for i in range(n)]


_EYE = _eye(2)


def _covers(bound: float, a: Matrix) -> bool:
    """bound >= ||a||_2: for 2 x 2, exactly (bound^2 >= (t + sqrt(t^2 - 4 d)) / 2 for
    A^T A = [[p, q], [q, r]], t = p + r, d = p r - q^2); larger, by float64 SVD of the
    rational matrix with a 1e-12 relative margin (far above its error, far below rho)."""
    if len(a) != 2:
        return bound >= _norm(a) * (1 + 1e-12)
    p = a[0][0] ** 2 + a[1][0] ** 2
    r = a[0][1] ** 2 + a[1][1] ** 2
    q = a[0][0] * a[0][1] + a[1][0] * a[1][1]
    t, d = p + r, p * r - q * q
    lhs = 2 * Fraction(bound) ** 2 - t
    return lhs >= 0 and lhs * lhs >= t * t - 4 * d


def _worst_corner_check(
    graph: Graph, names: list[str], matrix: Callable[[dict[str, list[Fraction]]], Matrix]
) -> None:
    """The block's bound covers the exact matrix at every corner of the inexact constants
    `names` (each entry times 1 +- rho), and the bound without the spread does not."""
    bounds = analyse(graph).node_bounds
    assert [node.op for node, _ in bounds] == ["AffineBlock", "Relu"]
    block = bounds[0][0]
    assert set(names) <= graph.inexact_constants
    assert folded.inexact_count(block, graph) == len(names)
    assert all(graph.folded_error[name] > 0 for name in names)
    factor = bounds[0][1].factor
    base = {name: _values(graph, name) for name in names}
    entries = [(name, i) for name in names for i in range(len(base[name]))]
    moved = 0.0
    float64_norm = _norm(matrix(base))
    for signs in itertools.product((1, -1), repeat=len(entries)):
        exact = {name: list(values) for name, values in base.items()}
        for (name, i), sign in zip(entries, signs, strict=True):
            exact[name][i] *= 1 + sign * _RHO
        a = matrix(exact)
        assert _covers(factor, a), signs
        moved = max(moved, _norm(a) - float64_norm)
    # the exact constants do move the norm (far beyond float64 SVD's 1e-15): a bound of the
    # float64 constants' operator alone would fail this test
    assert moved > 0.1 * float(_RHO) * float64_norm


def _norm(a: Matrix) -> float:
    """||a||_2 by float64 SVD (within 1e-15 of itself: used only to show the corners move)."""
    return float(np.linalg.norm(np.array(a, dtype=np.float64), 2))


def test_residual_with_weight_normalised_by_a_computed_norm() -> None:
    """z = x + (x W0) / n, n = sqrt(sum W0^2) computed by the model (W / ||W||_F): the block
    reads n once; exact matrix I + W0 / n_e."""
    w0 = [[1.0, 2.0], [-2.0, 1.0]]
    inits = [_const(w0, "w0")]
    nodes = [
        helper.make_node("ReduceSumSquare", ["w0"], ["s"], keepdims=0),
        helper.make_node("Sqrt", ["s"], ["n"]),
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Div", ["h", "n"], ["v"]),
        helper.make_node("Add", ["x", "v"], ["z"]),
    ]
    graph = _loaded(nodes, inits)
    w = [[Fraction(v) for v in row] for row in w0]

    def matrix(c: dict[str, list[Fraction]]) -> Matrix:
        # row vector x times (I + W0 / n): the operator's matrix is its transpose, same norm
        return _add(_EYE, w, 1 / c["n"][0])

    _worst_corner_check(graph, ["n"], matrix)


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_taylor_block_with_a_computed_skew_kernel_used_along_each_path(scale: float) -> None:
    """z = x (I + K + K^2 / 2 + K^3 / 6), K = (K0 - K0^T) / 3 computed by the model and read
    by three MatMuls (one name, k = 1, but K^3 moves by (1 + rho)^3): the margin rests on
    the block's input gain counting |K| once per MatMul on a path."""
    k0 = [[0.0, 1.0 * scale], [0.0, 0.0]]
    inits = [_const(k0, "k0"), _const(3.0, "three"), _const(0.5, "half"), _const(1 / 3, "third")]
    nodes = [
        helper.make_node("Transpose", ["k0"], ["k0t"]),
        helper.make_node("Sub", ["k0", "k0t"], ["d"]),
        helper.make_node("Div", ["d", "three"], ["K"]),
        helper.make_node("MatMul", ["x", "K"], ["t1"]),
        helper.make_node("MatMul", ["t1", "K"], ["p2"]),
        helper.make_node("Mul", ["p2", "half"], ["t2"]),
        helper.make_node("MatMul", ["t2", "K"], ["p3"]),
        helper.make_node("Mul", ["p3", "third"], ["t3"]),
        helper.make_node("Add", ["x", "t1"], ["s1"]),
        helper.make_node("Add", ["s1", "t2"], ["s2"]),
        helper.make_node("Add", ["s2", "t3"], ["z"]),
    ]
    graph = _loaded(nodes, inits)
    half, third = Fraction(0.5), Fraction(float(np.float32(1 / 3)))

    def matrix(c: dict[str, list[Fraction]]) -> Matrix:
        k = [c["K"][0:2], c["K"][2:4]]
        k2 = _mul(k, k)
        k3 = _mul(k2, k)
        return _add(_add(_add(_EYE, k), k2, half), k3, half * third)

    _worst_corner_check(graph, ["K"], matrix)


@pytest.mark.parametrize("probe", [True, False])
def test_soc_block_with_a_computed_skew_circular_kernel(probe: bool) -> None:
    """z = x + C x + C^2 x / 2, C a circular convolution (Pad wrap) on 4 pixels with the
    skew kernel W = (2, 0, -2) / 3 computed by the model and read by both convolutions.
    lipcert's bound is the per-frequency symbols' (exact for the float64 kernel, with no
    margin of rho of its own); without the probe too (a block too large to probe)."""
    n = 4
    pads = numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 0, 1], np.int64), "pads")
    inits = [_const(np.array([2.0, 0.0, -2.0]).reshape(1, 1, 1, 3), "w0")]
    inits += [_const(3.0, "three"), _const(0.5, "half"), pads]
    nodes = [
        helper.make_node("Div", ["w0", "three"], ["W"]),
        helper.make_node("Pad", ["x", "pads"], ["xp"], mode="wrap"),
        helper.make_node("Conv", ["xp", "W"], ["t1"]),
        helper.make_node("Pad", ["t1", "pads"], ["tp"], mode="wrap"),
        helper.make_node("Conv", ["tp", "W"], ["p2"]),
        helper.make_node("Mul", ["p2", "half"], ["t2"]),
        helper.make_node("Add", ["x", "t1"], ["s1"]),
        helper.make_node("Add", ["s1", "t2"], ["z"]),
    ]
    graph = _loaded(nodes, inits, (1, 1, n), opset=19)

    def matrix(c: dict[str, list[Fraction]]) -> Matrix:
        conv = [[Fraction(0)] * n for _ in range(n)]
        for q in range(n):
            for t, w in enumerate(c["W"]):
                conv[q][(q + t - 1) % n] += w
        return _add(_add(_eye(n), conv), _mul(conv, conv), Fraction(1, 2))

    with pytest.MonkeyPatch.context() as patch:
        if not probe:
            patch.setattr(ops, "probe_bound", lambda *args: None)
        _worst_corner_check(graph, ["W"], matrix)
