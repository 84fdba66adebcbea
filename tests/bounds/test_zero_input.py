"""Sizes at the zero input (lipcert.bounds.zero_input) bound the EXACT ||t(0)||.

The rounding allowance sizes a tensor as ||t(0)|| + L_t ||x||. A computed t(0) carries an
absolute rounding error: with constants that cancel, the computed value is 0 while the exact
one is not, and a relative margin on the computed norm (what lipcert used to take) is no
bound. Ground truth here: the exact values in rational arithmetic (fractions.Fraction).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def _model(nodes, initializers, elem_type: int, width: int):  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem_type, ["n", width])],
        [helper.make_tensor_value_info("y", elem_type, ["n", 2])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _cancelling(dtype: type) -> tuple[object, dict[str, np.ndarray]]:
    """t1 = x + b, t2 = (t1 * s1) * s2, t3 = t2 - c with c the product as the model's float
    type computes it: the computed t3(0) is 0, the exact one is not; then a Gemm reads t3."""
    b = np.array([1.1, -3.3, 7.7, 0.3], dtype=dtype)
    s1 = np.array([1.0 / 3, 0.7, 1.0 / 7, 0.9], dtype=dtype)
    s2 = np.array([1.0 / 11, 1.3, 1.0 / 13, 1.7], dtype=dtype)
    c = ((b * s1) * s2).astype(dtype)  # rounded as the model's arithmetic rounds
    w = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]], dtype=dtype)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes = [
        helper.make_node("Add", ["x", "b"], ["t1"]),
        helper.make_node("Mul", ["t1", "s1"], ["t2a"]),
        helper.make_node("Mul", ["t2a", "s2"], ["t2"]),
        helper.make_node("Sub", ["t2", "c"], ["t3"]),
        helper.make_node("Gemm", ["t3", "W"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(value, name)
        for name, value in {"b": b, "s1": s1, "s2": s2, "c": c, "W": w}.items()
    ]
    return _model(nodes, inits, elem, 4), {"b": b, "s1": s1, "s2": s2, "c": c, "W": w}


def _exact_t3(constants: dict[str, np.ndarray]) -> list[Fraction]:
    b, s1, s2, c = (constants[k] for k in ("b", "s1", "s2", "c"))
    return [
        Fraction(float(b[i])) * Fraction(float(s1[i])) * Fraction(float(s2[i]))
        - Fraction(float(c[i]))
        for i in range(4)
    ]


def _norm_at_least(values: list[Fraction]) -> float:
    """A float no larger than the exact L2 norm (to compare a claimed upper bound with)."""
    square = sum(v * v for v in values)
    root = float(square) ** 0.5
    while Fraction(root) ** 2 > square:
        root = np.nextafter(root, 0.0)
    return float(root)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cancelling_constants_are_sized_by_the_exact_value(dtype: type) -> None:
    model, constants = _cancelling(dtype)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    exact = _exact_t3(constants)
    exact_norm = _norm_at_least(exact)
    assert exact_norm > 0
    if dtype == np.float32:
        # the look-alike lipcert used to take: the probe's computed value, 0 here, so no
        # relative margin on it reaches the exact norm
        probed = np.asarray(loaded.graph.zero_input_values["t3"], dtype=np.float64)[:1]
        assert float(np.linalg.norm(probed)) * (1 + 1e-3) < exact_norm
    assert analysis.zero_sizes["t3"] >= exact_norm
    # and the bound stays tight: within a few roundings of the inputs' sizes
    t2 = [Fraction(float(constants["b"][i])) for i in range(4)]
    scale = float(sum(abs(v) for v in t2))
    assert analysis.zero_sizes["t3"] <= exact_norm + 1e-12 * scale


def test_sizes_bound_exact_values_of_a_biased_network() -> None:
    """Gemm + bias, Relu, Gemm + bias: every size >= its exact ||t(0)||, and close to it."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(6, 4)).astype(np.float32)
    b1 = rng.normal(size=6).astype(np.float32)
    w2 = rng.normal(size=(2, 6)).astype(np.float32)
    b2 = rng.normal(size=2).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1),
    ]
    inits = [
        numpy_helper.from_array(value, name)
        for name, value in {"W1": w1, "B1": b1, "W2": w2, "B2": b2}.items()
    ]
    model = _model(nodes, inits, TensorProto.FLOAT, 4)
    analysis = analyse(load_from_proto(model, LoadOptions(), source="t", fmt="onnx").graph)
    h = [Fraction(float(v)) for v in b1]
    r = [max(v, Fraction(0)) for v in h]
    y = [
        sum(Fraction(float(w2[i, j])) * r[j] for j in range(6)) + Fraction(float(b2[i]))
        for i in range(2)
    ]
    for name, exact in {"h": h, "r": r, "y": y}.items():
        exact_norm = _norm_at_least(exact)
        assert analysis.zero_sizes[name] >= exact_norm
        assert analysis.zero_sizes[name] <= exact_norm * (1 + 1e-9) + 1e-12
