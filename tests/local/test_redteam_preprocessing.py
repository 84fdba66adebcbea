"""Red team: refine_result with --mean/--std given as float32 arrays (the Python API's
Preprocessing takes any float arrays).

The ball is taken in pixel space through the scale 1/std. Computed as 1.0 / std in float32
it may be 3.6e-8 below the exact 1/std (std = float32 0.3005303), and the local bounds then
proved a ball that far too large: on y = ((x1 - m) / std, 0) the refined radius was
0.500000009 for an exact distance x1 - m = 0.4999999985 (exact rationals). The look-alike
target 1e-7 below the exact distance must still be proven (the check is not vacuous).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, analyse
from lipcert.certify.metrics import summarise
from lipcert.certify.pipeline import CertifyResult, Preprocessing
from lipcert.certify.radii import Status, certify_logits, choose_method
from lipcert.datasets.dataset import Dataset
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.local.refine import RefineOptions, refine_result
from lipcert.model import LoadOptions

W = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
PIXELS = np.array([[0.6, 0.2]])


def _worst_std() -> np.float32:
    """A float32 std near 0.3 whose float32 1 / std is furthest below the exact 1 / std."""
    steps = np.arange(-20000, 20000).astype(np.float32) * np.float32(2.0**-25)
    candidates = (np.float32(0.3) + steps).astype(np.float32)
    inverse = (np.float32(1.0) / candidates).astype(np.float64)
    shortfall = 1.0 - inverse * candidates.astype(np.float64)  # exact in float64
    return candidates[int(np.argmax(shortfall))]


def _analysis() -> Analysis:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph([node], "linear", [x], [y], [numpy_helper.from_array(W, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    loaded = load_from_proto(proto, LoadOptions(input_shape=(2,)), source="memory", fmt="onnx")
    return analyse(loaded.graph)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_refined_radius_with_float32_mean_and_std_stays_within_the_exact_distance(
    dtype: type,
) -> None:
    std, mean = _worst_std(), np.float32(0.1)
    preprocessing = Preprocessing(
        mean=np.array([mean, mean], dtype=dtype), std=np.array([std, std], dtype=dtype)
    )
    # class 0 iff (x1 - m) / std > 0: the exact distance in pixel space is x1 - m
    exact = Fraction(float(PIXELS[0, 0])) - Fraction(float(mean))
    assert (np.float32(1.0) / std).astype(np.float64) * float(std) < 1 - 3e-8  # the hostile std
    analysis = _analysis()
    spec = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    logits = preprocessing.apply(PIXELS) @ W.astype(np.float64)
    certificates = certify_logits(logits, spec, choose_method(spec, "auto"), np.zeros(1))
    # a small global radius, so that the refinement is tried
    certificates = dataclasses.replace(certificates, radius=np.array([0.1]))
    assert certificates.status[0] == Status.CERTIFIED and certificates.prediction[0] == 0
    dataset = Dataset(
        name="points",
        split="test",
        images=PIXELS,
        labels=np.zeros(1, dtype=np.int64),
        num_classes=2,
        class_names=None,
        source="memory",
        kind="features",
    )
    result = CertifyResult(
        certificates=certificates,
        labels=dataset.labels,
        summary=summarise(certificates, dataset.labels, []),
        spec=spec,
        allowance=np.zeros(1),
        seconds=0.0,
    )
    for factor, provable in ((1 - 1e-7, True), (1 + 2e-8, False), (1 + 1e-9, False)):
        target = float(exact) * factor
        refined, _ = refine_result(
            result, analysis, dataset, preprocessing, [], RefineOptions(eps=(target,))
        )
        radius = float(refined.certificates.radius[0])
        assert Fraction(radius) <= exact, (factor, radius, float(exact))
        assert (radius > target) == provable, (factor, radius)
