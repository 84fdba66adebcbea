"""float64 features are rounded to float32 for the float32 evaluators: that rounding is
covered, gradual underflow included.

A float32 rounding is off by at most 2^-24 |x| + 2^-150 (half the smallest subnormal): the
absolute part is not relative to ||x||. Features of 6e-46 round to 0 in float32, so the
computed logits are the bias, while the exact function (rational arithmetic on the float64
features and float32 weights) predicts the other class.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

D = 4


def _model(weight: np.ndarray, bias: np.ndarray):
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transB=1, name="dense")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_features_that_underflow_in_float32_are_not_certified_wrongly() -> None:
    features = np.full((2, D), 6e-46)
    assert np.all(features.astype(np.float32) == 0)  # below half the smallest subnormal
    c = np.float32(1e30)
    weight = np.stack([-np.full(D, c), np.full(D, c)])
    bias = np.array([2e-15, 0.0])
    # exact margin f_0 - f_1 = b_0 - 2 c sum(x) < 0: the exact function predicts class 1
    exact_margin = Fraction(float(np.float32(bias[0]))) - 2 * Fraction(float(c)) * sum(
        Fraction(float(v)) for v in features[0]
    )
    assert exact_margin < 0
    loaded = load_from_proto(
        _model(weight, bias), LoadOptions(input_shape=(D,)), source="m", fmt="onnx"
    )
    analysis = analyse(loaded.graph)
    chosen = choose_evaluators(loaded, analysis, "float32", None)
    dataset = Dataset(
        "synthetic",
        "test",
        features,
        np.zeros(2, dtype=np.int64),
        2,
        None,
        "synthetic",
        kind="features",
    )
    result = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        choose_method(analysis.spec, "auto"),
        dataset,
        parse_eps_list("1e-60"),
        batch_size=2,
        exact=chosen.exact,
    )
    for i in range(2):
        assert not (result.certificates.radius[i] > 0 and result.certificates.prediction[i] == 0), (
            f"class 0 certified at radius {result.certificates.radius[i]}; the exact class is 1"
        )


def test_ordinary_features_keep_their_radii() -> None:
    """The look-alike: features of ordinary size; the added absolute term (2^-126 sqrt(d) in
    the input's norm) changes nothing measurable."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, D))
    weight = rng.normal(size=(2, D)).astype(np.float32)
    bias = np.array([0.3, -0.3], dtype=np.float32)
    loaded = load_from_proto(
        _model(weight, bias), LoadOptions(input_shape=(D,)), source="m", fmt="onnx"
    )
    analysis = analyse(loaded.graph)
    chosen = choose_evaluators(loaded, analysis, "float32", None)
    dataset = Dataset(
        "synthetic",
        "test",
        features,
        np.zeros(5, dtype=np.int64),
        2,
        None,
        "synthetic",
        kind="features",
    )
    result = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        choose_method(analysis.spec, "auto"),
        dataset,
        parse_eps_list("1e-60"),
        batch_size=5,
        exact=chosen.exact,
    )
    w = weight.astype(np.float64)
    for i, x in enumerate(features):
        logits = w @ x + bias.astype(np.float64)
        p = int(np.argmax(logits))
        exact = abs(logits[0] - logits[1]) / np.linalg.norm(w[0] - w[1])
        assert result.certificates.prediction[i] == p
        assert exact * (1 - 1e-5) <= result.certificates.radius[i] <= exact * (1 + 1e-9)
