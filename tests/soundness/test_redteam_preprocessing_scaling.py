"""--mean/--std scales the Lipschitz bounds: radii in the data's space, never too large.

The certified function is x -> f((x - mean) / std). For a linear head f(z) = W z + b the
exact distance in x-space from x to the boundary between classes p and j is
|f_p - f_j| / ||(w_p - w_j) / std|| (std per input element): the ground truth here, in exact
rationals on the float32 weights and the pixels p / 255.
"""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import (
    Preprocessing,
    certified_spec,
    certify_dataset,
    choose_evaluators,
)
from lipcert.certify.radii import choose_method
from lipcert.cli import app
from lipcert.datasets import Dataset
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions
from tests.certify.linear_models import linear_onnx

runner = CliRunner()
MEAN = (0.3, 0.5, 0.1)
STD = (0.2, 0.5, 4.0)  # below and above 1, in R, G, B order


def _exact_radius_squared(
    pixels: np.ndarray, weight: np.ndarray, bias: np.ndarray, prediction: int
) -> Fraction:
    """Min over j != prediction of the squared x-space distance to the boundary of j, for
    NCHW `pixels` (uint8) under MEAN/STD per channel; minus the squared margin when the
    exact function does not predict `prediction`."""
    channels = pixels.shape[0]
    per_channel = pixels.reshape(channels, -1)
    z, scale = [], []
    for c in range(channels):
        m, s = Fraction(MEAN[c]), Fraction(STD[c])
        z += [(Fraction(int(p), 255) - m) / s for p in per_channel[c]]
        scale += [1 / s] * per_channel.shape[1]
    w = [[Fraction(float(v)) for v in row] for row in weight.astype(np.float32)]
    b = [Fraction(float(v)) for v in bias.astype(np.float32)]
    logits = [
        sum((a * c for a, c in zip(row, z, strict=True)), bi) for row, bi in zip(w, b, strict=True)
    ]
    best = None
    for j in range(len(w)):
        if j == prediction:
            continue
        margin = logits[prediction] - logits[j]
        if margin <= 0:
            return -margin * margin
        gain = sum(((a - c) * t) ** 2 for a, c, t in zip(w[prediction], w[j], scale, strict=True))
        value = margin * margin / gain
        best = value if best is None else min(best, value)
    assert best is not None
    return best


def test_per_channel_std_in_channel_order_from_channels_last_pixels(tmp_path: Path) -> None:
    """An (N, H, W, C) uint8 file, --mean/--std listed R, G, B. Two classes whose weights lie
    on the red channel only (std 0.2): the exact radius is |f_0 - f_1| / (5 ||w_0 - w_1||),
    which max(1 / std) = 5 meets: the radius must be within 1e-6 below it. A std applied to
    the wrong channel (4 instead of 0.2) changes the margins twenty-fold; a bound taking a
    smaller 1 / std than the largest is 20 times too large."""
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(8, 2, 2, 3), dtype=np.uint8)  # channels last
    nchw = images.transpose(0, 3, 1, 2)
    weight = np.zeros((2, 3, 4))
    weight[0, 0] = rng.normal(size=4)
    weight[1, 0] = rng.normal(size=4)
    weight = weight.reshape(2, 12)
    bias = np.array([0.05, -0.05])
    model = linear_onnx(tmp_path / "m.onnx", weight, bias, (3, 2, 2))
    data = tmp_path / "d.npz"
    np.savez(data, x=images, y=np.zeros(8, dtype=np.int64))
    out = tmp_path / "r.csv"
    options = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    args = ["certify", str(model), "--dataset", str(data), "--csv", str(out), *options]
    result = runner.invoke(app, [*args, "--eps", "1e-9", "--no-config"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    certified = 0
    for row, pixels in zip(rows, nchw, strict=True):
        exact = _exact_radius_squared(pixels, weight, bias, int(row["prediction"]))
        assert exact > 0, "the predicted class is not the exact function's"
        radius = float(row["radius"])
        assert Fraction(radius) ** 2 <= exact
        assert radius >= float(exact) ** 0.5 * (1 - 1e-6)
        certified += radius > 0
    assert certified == len(rows)


@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_multiclass_radii_under_per_channel_std(tmp_path: Path, margins: str) -> None:
    """Four classes with weights on every channel: each radius is at most the exact one
    (min over the pairs of |f_p - f_j| / ||(w_p - w_j) / std||), and at least that times the
    smallest ratio over the pairs of ||(w_p - w_j) / std|| / (||w_p - w_j|| max(1 / std))
    (the price of bounding the normalisation by max(1 / std)), less the rounding allowance
    (1e-3 of it in float32)."""
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, size=(10, 3, 2, 2), dtype=np.uint8)
    weight = rng.normal(size=(4, 12))
    bias = rng.normal(size=4) * 0.1
    model = linear_onnx(tmp_path / "m.onnx", weight, bias, (3, 2, 2))
    data = tmp_path / "d.npz"
    np.savez(data, x=images, y=np.zeros(10, dtype=np.int64))
    out = tmp_path / "r.csv"
    options = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    args = ["certify", str(model), "--dataset", str(data), "--csv", str(out), *options]
    result = runner.invoke(app, [*args, "--margins", margins, "--eps", "1e-9", "--no-config"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    scale = np.repeat(1 / np.array(STD), 4)
    for row, pixels in zip(rows, images, strict=True):
        p = int(row["prediction"])
        exact = _exact_radius_squared(pixels, weight, bias, p)
        assert exact > 0
        radius = float(row["radius"])
        assert Fraction(radius) ** 2 <= exact
        w = weight.astype(np.float32).astype(np.float64)
        worst = min(
            np.linalg.norm((w[p] - w[j]) * scale) / (np.linalg.norm(w[p] - w[j]) * scale.max())
            for j in range(4)
            if j != p
        )
        assert radius >= float(exact) ** 0.5 * worst * (
            1 - (1e-3 if margins == "float32" else 1e-6)
        )


def _tiny_linear(weight: float):
    """Two features, two classes: f_0 - f_1 = 2 weight x_0 + 1e-20."""
    w0 = np.array([weight, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="dense")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(np.stack([w0, -w0]), "w"),
            numpy_helper.from_array(np.array([1e-20, 0.0], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return load_from_proto(model, LoadOptions(input_shape=(2,)), source="m", fmt="onnx"), w0


@pytest.mark.parametrize("std", [1e292, 3e292, 7e291])
@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_pair_bounds_scaled_into_subnormals_stay_upper_bounds(std: float, margins: str) -> None:
    """A pair bound 6e-30 times 1 / std = 1e-292 is 6e-322: 121 subnormal steps, so its
    rounding to nearest is off by up to 0.4 %, which the relative (1 + 1e-15) of the scaling
    did not cover: radii of 5.06e301 for an exact 5.00e301 (1.2 % too large at std 3e292)."""
    loaded, w0 = _tiny_linear(3e-30)
    analysis = analyse(loaded.graph)
    preprocessing = Preprocessing(np.zeros(2), np.full(2, std))
    spec = certified_spec(analysis.spec, preprocessing)
    exact_pair = 2 * Fraction(float(w0[0])) / Fraction(std)
    assert spec.pairwise_bounds is not None
    assert Fraction(float(spec.pairwise_bounds[0, 1])) >= exact_pair
    x = np.array([[0.5, 0.25], [1.0, 0.0]])
    chosen = choose_evaluators(loaded, analysis, margins, None)
    dataset = Dataset("s", "test", x, np.zeros(2, np.int64), 2, None, "s", kind="features")
    result = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        choose_method(analysis.spec, "auto"),
        dataset,
        parse_eps_list("1"),
        batch_size=2,
        preprocessing=preprocessing,
        exact=chosen.exact,
    )
    for i in range(2):
        margin = Fraction(float(np.float32(1e-20))) + exact_pair * Fraction(float(x[i, 0]))
        radius = result.certificates.radius[i]
        assert radius > 1e300  # not vacuous
        assert Fraction(float(radius)) * exact_pair <= margin


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        pytest.param([0.0], [-1.0], r"std > 0", id="negative"),
        pytest.param([0.0, 0.0], [2.0, -1.0], r"std > 0", id="one_negative"),
        pytest.param([0.0], [0.0], r"std > 0", id="zero"),
        pytest.param([0.0], [np.nan], r"finite", id="nan_std"),
        pytest.param([np.inf], [1.0], r"finite", id="infinite_mean"),
        pytest.param([0.0, 1.0], [1.0], r"as many", id="lengths"),
        pytest.param([[0.0]], [[1.0]], r"one value per channel", id="two_dimensional"),
    ],
)
def test_preprocessing_refuses_what_it_cannot_certify(mean, std, message) -> None:
    """Preprocessing itself (which the pipeline and the Ray workers take as given) refuses a
    std <= 0, non-finite values and shapes that are not one value per channel: with std
    (2, -1), max(1 / std) = 0.5 bounded a map whose Lipschitz constant is 1."""
    from lipcert.errors import UsageError

    with pytest.raises(UsageError, match=message):
        Preprocessing(np.array(mean, dtype=np.float64), np.array(std, dtype=np.float64))


@pytest.mark.parametrize("text", ["0_5", "1_0,2", "0x1p-2"])
def test_mean_std_text_that_is_not_a_plain_number_is_refused(tmp_path: Path, text: str) -> None:
    """--std 0_5 was read as Python reads it, 5.0: radii ten times those of the intended
    std 0.5, silently. Only plain decimal numbers are taken (as --eps takes them)."""
    images = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    model = linear_onnx(tmp_path / "m.onnx", np.ones((2, 12)), np.zeros(2), (3, 2, 2))
    data = tmp_path / "d.npz"
    np.savez(data, x=images, y=np.zeros(2, dtype=np.int64))
    for option in ("--std", "--mean"):
        args = ["certify", str(model), "--dataset", str(data), option, text, "--no-config"]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"expected {option} like 0.5,0.5,0.5 but got {text!r}" in result.output


@pytest.mark.parametrize("value", ["0_5", ["0.5"], True], ids=["text", "texts", "bool"])
def test_api_mean_std_that_are_not_numbers_are_refused(value) -> None:
    """numpy reads the text "0_5" as 5.0 and True as 1.0: the API takes numbers only."""
    from lipcert.api.data import preprocessing_of
    from lipcert.errors import UsageError

    for name in ("mean", "std"):
        given = {name: value}
        with pytest.raises(UsageError, match=rf"expected {name} as numbers"):
            preprocessing_of(given.get("mean"), given.get("std"), 1)
    numbers = preprocessing_of(np.float32(0.5), [2], 1)  # the look-alike: numbers pass
    assert numbers is not None
    assert (numbers.mean.tolist(), numbers.std.tolist()) == ([0.5], [2.0])
