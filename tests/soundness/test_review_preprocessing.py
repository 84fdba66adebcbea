"""--mean/--std: the float64 rounding of the pixels is an absolute error the allowance covers.

The certified function is x -> f((x - mean) / std) at the exact pixels x = p / 255. lipcert
computes fl(fl(fl(p / 255) - mean) / std): the rounding of p / 255 is up to 2^-53 |x|
whatever x - mean is, so at a pixel equal to the mean (as a float64) the computed input is 0
while the exact one is (p / 255 - fl(p / 255)) / std, and a bound relative to the computed
input's norm is 0 too. The ground truth here is exact rational arithmetic (fractions) on the
same float32 weights: a linear model's exact margins and radii, which no reported radius may
exceed.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import Preprocessing, certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.local.refine import RefineOptions, refine_result
from lipcert.model import LoadOptions

SIDE = 4
PIXELS = SIDE * SIDE


def _linear_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """logits = W flatten(x) + b, x of shape (N, 1, SIDE, SIDE)."""
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten"),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1, name="dense"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _exact_radius(
    pixels: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: float, std: float, label: int
) -> Fraction:
    """The largest r with f_label > f_other on the whole ball of radius r around the exact
    pixels (p / 255), squared; negative (minus the squared margin) when the exact function
    does not predict `label` at all."""
    w = [[Fraction(float(v)) for v in row] for row in weight.astype(np.float32)]
    b = [Fraction(float(v)) for v in bias.astype(np.float32)]
    m, s = Fraction(mean), Fraction(std)
    z = [(Fraction(int(p), 255) - m) / s for p in pixels.reshape(-1)]
    logits = [
        sum((wi * zi for wi, zi in zip(row, z, strict=True)), Fraction(0)) + bi
        for row, bi in zip(w, b, strict=True)
    ]
    other = 1 - label
    margin = logits[label] - logits[other]
    if margin <= 0:
        return -margin * margin
    gain = sum(((a - c) / s) ** 2 for a, c in zip(w[label], w[other], strict=True))
    return margin * margin / gain


def _certify(
    weight: np.ndarray, bias: np.ndarray, images: np.ndarray, mean: float, std: float, margins: str
):
    model = _linear_model(weight, bias)
    loaded = load_from_proto(
        model, LoadOptions(input_shape=(1, SIDE, SIDE)), source="m", fmt="onnx"
    )
    analysis = analyse(loaded.graph)
    chosen = choose_evaluators(loaded, analysis, margins, None)
    labels = np.zeros(len(images), dtype=np.int64)
    dataset = Dataset("synthetic", "test", images, labels, 2, None, "synthetic")
    preprocessing = Preprocessing(np.array([mean]), np.array([std]))
    result = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        choose_method(analysis.spec, "auto"),
        dataset,
        parse_eps_list("1e-30"),
        batch_size=4,
        preprocessing=preprocessing,
        exact=chosen.exact,
    )
    return result, analysis, dataset, preprocessing


def _check_sound(result, images, weight, bias, mean, std) -> None:
    for i, image in enumerate(images):
        radius = float(result.certificates.radius[i])
        if radius <= 0:
            continue
        label = int(result.certificates.prediction[i])
        exact = _exact_radius(image, weight, bias, mean, std, label)
        assert exact >= 0, f"sample {i}: certified class {label} at radius {radius}, but the "
        f"exact function predicts the other class (squared margin {float(-exact):.3g})"
        assert Fraction(radius) ** 2 <= exact, f"sample {i}: radius {radius} > {math.sqrt(exact)}"


@pytest.mark.parametrize("margins", ["float32", "float64"])
@pytest.mark.parametrize("std", [1.0, 2.0**-40])
def test_image_equal_to_the_mean_is_not_certified_beyond_the_exact_margin(
    margins: str, std: float
) -> None:
    """Every pixel 128, mean = fl(128 / 255): the computed input is exactly 0, so the computed
    logits are the bias. The weights point along the exact input (p / 255 - mean) / std,
    which takes more than the bias's margin off class 0: the exact function predicts 1."""
    mean = 128 / 255
    offset = (Fraction(128, 255) - Fraction(mean)) / Fraction(std)
    assert offset > 0  # the exact input is positive in every pixel
    row = np.full(PIXELS, 0.25)
    weight = np.stack([-row, row])
    shift = float(2 * Fraction(1, 4) * PIXELS * offset)  # f_0 - f_1 loses this much
    bias = np.array([np.float32(shift / 2), 0.0])
    images = np.full((3, 1, SIDE, SIDE), 128, dtype=np.uint8)
    result, *_ = _certify(weight, bias, images, mean, std, margins)
    assert _exact_radius(images[0], weight, bias, mean, std, 0) < 0  # the exact class is 1
    _check_sound(result, images, weight, bias, mean, std)


def test_ordinary_images_keep_their_radii() -> None:
    """The look-alike: pixels away from the mean, a margin far above any rounding. The
    added term (2^-53 L ||x||) must not cost the radius more than a relative 1e-6."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(6, 1, SIDE, SIDE)).astype(np.uint8)
    weight = rng.normal(size=(2, PIXELS)).astype(np.float32)
    bias = np.array([0.5, -0.5], dtype=np.float32)
    mean, std = 0.2860, 0.3530
    result, *_ = _certify(weight, bias, images, mean, std, "float64")
    _check_sound(result, images, weight, bias, mean, std)
    for i, image in enumerate(images):
        label = int(result.certificates.prediction[i])
        exact = math.sqrt(_exact_radius(image, weight, bias, mean, std, label))
        assert result.certificates.radius[i] >= exact * (1 - 1e-6)


@pytest.mark.parametrize("std", [1.0, 2.0**-40])
def test_local_refinement_at_the_mean_is_sound(std: float) -> None:
    """--local: the CROWN ball around the computed input must contain the exact one (here
    the computed input is 0 and the exact one is not): a radius it proves is checked
    against the exact rational radius."""
    mean = 128 / 255
    offset = (Fraction(128, 255) - Fraction(mean)) / Fraction(std)
    row = np.full(PIXELS, 0.25)
    weight = np.stack([-row, row])
    shift = float(2 * Fraction(1, 4) * PIXELS * offset)
    bias = np.array([np.float32(shift / 2), 0.0])
    images = np.full((1, 1, SIDE, SIDE), 128, dtype=np.uint8)
    result, analysis, dataset, preprocessing = _certify(weight, bias, images, mean, std, "float64")
    eps = parse_eps_list("1e-30")
    refined, _ = refine_result(
        result, analysis, dataset, preprocessing, eps, RefineOptions(eps=[1e-30], budget=60.0)
    )
    _check_sound(refined, images, weight, bias, mean, std)
