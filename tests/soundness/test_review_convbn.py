"""Review: Conv -> Mul(s) -> BatchNormalization with a subnormal gain, the Conv's output
cancelling (t ~ 0 while |W| |x| is large).

onnxruntime folds the Mul (ConvMulFusion), the BatchNorm (ConvBnFusion) and the last Mul
into the Conv's weights in float32, with g' = scale / sqrt(var) itself a subnormal off by
up to h = 2^-150 (var = 4, scale = n 2^-149 with n odd: a tie, off by exactly h). Suspected:
an error h |W s| |x| that the BatchNorm rule's h (|t| + |mean|) misses when t cancels. It
does not arise: g' is one value per output channel, so its error moves the folded weights of
a channel together, w s (g' - g), and y by (g' - g) t, which cancels with t; the products'
own subnormal roundings (h per weight, independent) are the Conv's h |S| |x| term. The BN
rule bounds |t| by the operator norm ||W s|| ||x||, which covers (g' - g) t whatever x is.

Ground truth: onnxruntime's float32 output against the exact rational function; the
allowance certify takes (spec.fp_allowance at input_norms(x)) must cover the difference.
Measured: ratio 4/7 (0.571) when t is aligned with W (the BN rule's gamma(7) 2^-128 against
the error h |t|), 1.7e-8 when t cancels.
"""

from __future__ import annotations

import os
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

_S, _K, _VAR = 2.0**20, 2.0**120, 4.0


def _model(weight: np.ndarray, scale: float, mean: float) -> onnx.ModelProto:
    out_channels, in_channels = weight.shape

    def const(values: object, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(values, np.float32), name)

    inits = [
        const(weight.reshape(out_channels, in_channels, 1, 1), "w"),
        const(_S, "s0"),
        const(np.full(out_channels, scale), "sc"),
        const(np.zeros(out_channels), "b"),
        const(np.full(out_channels, mean), "m"),
        const(np.full(out_channels, _VAR), "v"),
        const(_K, "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s0"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", "sc", "b", "m", "v"], ["bn"], epsilon=0.0),
        helper.make_node("Mul", ["bn", "k"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_channels, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _exact(weight: np.ndarray, scale: float, mean: float, x: np.ndarray) -> list[Fraction]:
    gain = Fraction(float(np.float32(scale))) / 2  # sqrt(var + eps) = 2 exactly
    values = [Fraction(float(v)) for v in x.reshape(-1)]
    out = []
    for row in weight:
        t = sum((Fraction(float(w)) * v for w, v in zip(row, values, strict=True)), Fraction(0))
        out.append(Fraction(_K) * gain * (Fraction(_S) * t - Fraction(float(np.float32(mean)))))
    return out


_HADAMARD = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float32)
_ALMOST = float(np.nextafter(np.float32(1e3), np.float32(0)))


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("mean", [0.0, 1e3])
@pytest.mark.parametrize(
    ("weight", "x"),
    [
        ([[1.0, -1.0]], [1e3, _ALMOST]),  # cancels to one ulp of 1e3
        ([[1.0, -1.0]], [1e3, -1e3]),  # aligned: the largest t for this |x|
        (_HADAMARD, [1e3] * 4),  # row 0 aligned, rows 1-3 cancel exactly
    ],
    ids=["cancel", "aligned", "hadamard"],
)
def test_conv_mul_batchnorm_subnormal_gain_with_cancelling_output(
    weight: object, x: list[float], mean: float, n: int
) -> None:
    weight_array = np.asarray(weight, np.float32)
    inputs = np.asarray(x, np.float32).reshape(1, -1, 1, 1)
    scale = n * 2.0**-149
    model = _model(weight_array, scale, mean)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    dumped = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"convbn_{os.getpid()}.onnx")
    options.optimized_model_filepath = dumped
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    try:
        fused = [node.op_type for node in onnx.load(dumped).graph.node]
    finally:
        os.remove(dumped)
    assert fused == ["Conv"], fused  # the Muls and the BatchNorm are folded into the weights
    (y,) = session.run(None, {"x": inputs})
    exact = _exact(weight_array, scale, mean, inputs)
    squared = sum(
        ((Fraction(float(v)) - t) ** 2 for v, t in zip(y.reshape(-1), exact, strict=True)),
        Fraction(0),
    )
    loaded = load_from_proto(
        model, LoadOptions(input_shape=inputs.shape[1:]), source="m", fmt="onnx"
    )
    allowance = float(analyse(loaded.graph).spec.fp_allowance(input_norms(inputs))[0])
    assert float(squared) ** 0.5 <= allowance
