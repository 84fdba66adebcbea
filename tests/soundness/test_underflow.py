"""Gradual underflow: a rounding among the subnormals errs by up to 2^-150 absolute.

gamma(n) bounds relative errors only while results stay normal. A product that lands among
the subnormals loses up to half their spacing, absolutely, and a later scaling can make that
error large. Ground truth: onnxruntime's float32 output against the exact rational function
(fractions.Fraction); the allowance lipcert's certify takes (spec.fp_allowance at the
input's norm, input_norms) must cover the difference.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.evaluators import input_norms
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def _model(nodes, inits, width: int) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _errors_within_allowance(model: onnx.ModelProto, exact, inputs: list[np.ndarray]) -> float:  # type: ignore[no-untyped-def]
    """The largest error / allowance over the inputs (must be <= 1)."""
    width = inputs[0].shape[1]
    loaded = load_from_proto(model, LoadOptions(input_shape=(width,)), source="m", fmt="onnx")
    spec = analyse(loaded.graph).spec
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        (y,) = session.run(None, {"x": x})
        truth = exact(x[0])
        error = (
            float(sum((Fraction(float(v)) - t) ** 2 for v, t in zip(y[0], truth, strict=True)))
            ** 0.5
        )
        allowance = float(spec.fp_allowance(input_norms(x))[0])
        worst = max(worst, error / allowance)
    return worst


def test_a_scale_through_the_subnormals_is_covered() -> None:
    """y = ((x * 1e-41) * 1e38) * 1e3: Lipschitz 1, but x * 1e-41 is subnormal and keeps
    about 4 digits; the float32 output errs by ~1e-4 (lipcert allowed 2e-7)."""
    width = 4
    scales = {"a": 1e-41, "b": 1e38, "c": 1e3}
    nodes = [
        helper.make_node("Mul", ["x", "a"], ["h1"]),
        helper.make_node("Mul", ["h1", "b"], ["h2"]),
        helper.make_node("Mul", ["h2", "c"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.full(width, value, np.float32), name)
        for name, value in scales.items()
    ]
    factor = 1
    for value in scales.values():
        factor *= Fraction(float(np.float32(value)))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, width)).astype(np.float32) for _ in range(4)]
    worst = _errors_within_allowance(
        _model(nodes, inits, width), lambda x: [Fraction(float(v)) * factor for v in x], inputs
    )
    assert worst <= 1.0


def test_an_sll_block_with_subnormal_hidden_values_is_covered() -> None:
    """y = x - W D relu(W^T x), W ~ 1e-19, D = 1e38 (so ||W D W^T|| ~ 1), x ~ 1e-21: the
    products of W^T x are subnormal, and W D carries their error by ~1e19 to the output."""
    n, h = 6, 4
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(n, h)))
    w = (q * 1e-19).astype(np.float32)
    d = np.full((1, h), 1e38, dtype=np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], name="first"),
        helper.make_node("Relu", ["z"], ["a"], name="relu"),
        helper.make_node("Mul", ["a", "d"], ["hh"], name="scale"),
        helper.make_node("Gemm", ["hh", "w1"], ["t"], transB=1, name="second"),
        helper.make_node("Sub", ["x", "t"], ["y"], name="residual"),
    ]
    inits = [
        numpy_helper.from_array(w, "w1"),
        numpy_helper.from_array(np.zeros(h, dtype=np.float32), "b1"),
        numpy_helper.from_array(d, "d"),
    ]
    model = _model(nodes, inits, n)
    loaded = load_from_proto(model, LoadOptions(input_shape=(n,)), source="m", fmt="onnx")
    assert any(node.op == "SLLBlock" for node, _ in analyse(loaded.graph).node_bounds)
    wf = [[Fraction(float(w[i, j])) for j in range(h)] for i in range(n)]
    df = [Fraction(float(d[0, j])) for j in range(h)]

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = [Fraction(float(v)) for v in x]
        z = [sum(xs[i] * wf[i][j] for i in range(n)) for j in range(h)]
        hidden = [max(z[j], Fraction(0)) * df[j] for j in range(h)]
        return [xs[i] - sum(wf[i][j] * hidden[j] for j in range(h)) for i in range(n)]

    inputs = [(rng.standard_normal((1, n)) * 1e-21).astype(np.float32) for _ in range(6)]
    assert _errors_within_allowance(model, exact, inputs) <= 1.0
