"""Review of the gradual-underflow rules: models built to break them.

Ground truth: onnxruntime's float32 output against the exact rational function
(fractions.Fraction); the allowance certify takes (spec.fp_allowance at input_norms(x)) must
cover the difference.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.evaluators import input_norms
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def _ratio(model: onnx.ModelProto, x: np.ndarray, exact: list[Fraction]) -> float:
    loaded = load_from_proto(model, LoadOptions(input_shape=x.shape[1:]), source="m", fmt="onnx")
    spec = analyse(loaded.graph).spec
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    values = [Fraction(float(v)) for v in y.reshape(-1)]
    squared = sum(((v - t) ** 2 for v, t in zip(values, exact, strict=True)), Fraction(0))
    return float(squared) ** 0.5 / float(spec.fp_allowance(input_norms(x))[0])


@pytest.mark.parametrize("weight_exponent", [-60, -20])
def test_conv_batchnorm_folded_weight_among_the_subnormals(weight_exponent: int) -> None:
    """Conv(w) -> BatchNormalization(g) -> Mul(2^120) with w g = 1.5 2^-149 (w = 2^-60,
    g = 1.5 2^-89, both normal): onnxruntime's ConvBNFusion folds w g in float32, a
    subnormal off by 2^-150 (a third of itself), which the Mul then scales up. lipcert
    counted that only for a subnormal gain g: 28 times the allowance, now within. The
    look-alike w = 2^-20 (w g normal) is exact to a rounding."""
    w = np.float32(2.0**weight_exponent)
    g = np.float32(1.5 * 2.0 ** (-149 - weight_exponent))
    k = np.float32(2.0 ** (120 if weight_exponent == -60 else 80))
    inits = [
        numpy_helper.from_array(np.full((1, 1, 1, 1), w, np.float32), "w"),
        numpy_helper.from_array(np.array([g], np.float32), "s"),
        numpy_helper.from_array(np.zeros(1, np.float32), "b"),
        numpy_helper.from_array(np.zeros(1, np.float32), "m"),
        numpy_helper.from_array(np.ones(1, np.float32), "v"),
        numpy_helper.from_array(np.array(k, np.float32), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=0.0),
        helper.make_node("Mul", ["bn", "k"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    x = np.array([[[[0.5, 0.25], [1.0, 0.75]]]], np.float32) * np.float32(1e3)
    gain = Fraction(float(w)) * Fraction(float(g)) * Fraction(float(k))
    exact = [Fraction(float(v)) * gain for v in x.reshape(-1)]
    assert _ratio(model, x, exact) <= 1.0
