"""Float pixels of a .npz are the sample: the certificate is about them, not their float32 copy.

A user's x = images / 255.0 is float64. The radius must be about the function at those
pixels; a reader that rounds them to float32 first certifies another point, up to 2^-24 |x|
away per pixel. No allowance covers that rounding where the inputs reach a float64 evaluator
(--margins float64), nor with --mean/--std, whose allowance counts the float64 rounding of
the pixels only (2^-53 |x|). The ground truth is exact rational arithmetic on the file's
float64 pixels and the model's float32 weights: a linear model's exact margins and radii.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcert.cli import app
from lipcert.datasets import load_dataset
from lipcert.errors import DatasetError

runner = CliRunner()


def _linear(path: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """logits = W flatten(x) + b for x of shape (N, 1, 2, 2), two classes."""
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"], axis=1, name="flatten"),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1, name="dense"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _exact_squared_radius(
    pixels: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    mean: Fraction,
    std: Fraction,
    label: int,
) -> Fraction:
    """The squared distance from the exact pixels to the decision boundary when the exact
    function predicts `label`, else minus the squared margin (exact rationals)."""
    w = [[Fraction(float(v)) for v in row] for row in weight.astype(np.float32)]
    b = [Fraction(float(v)) for v in bias.astype(np.float32)]
    z = [(Fraction(float(p)) - mean) / std for p in pixels.reshape(-1)]
    logits = [
        sum((a * c for a, c in zip(row, z, strict=True)), bi) for row, bi in zip(w, b, strict=True)
    ]
    margin = logits[label] - logits[1 - label]
    if margin <= 0:
        return -margin * margin
    gain = sum(((a - c) / std) ** 2 for a, c in zip(w[label], w[1 - label], strict=True))
    return margin * margin / gain


def _certify(tmp_path: Path, model: Path, x: np.ndarray, *options: str) -> list[dict[str, str]]:
    data = tmp_path / "pixels.npz"
    np.savez(data, x=x, y=np.zeros(len(x), dtype=np.int64))
    out = tmp_path / "radii.csv"
    args = ["certify", str(model), "--dataset", str(data), "--eps", "1e-12", "--csv", str(out)]
    result = runner.invoke(app, [*args, "--json", "--no-config", *options])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_space"].startswith("pixels scaled to [0, 1]")
    return list(csv.DictReader(out.open()))


def _check(rows, x, weight, bias, mean=Fraction(0), std=Fraction(1)) -> list[Fraction]:
    """Every certified radius is at most the exact one; the exact squared radii."""
    exact = []
    for row, pixels in zip(rows, x, strict=True):
        label = int(row["prediction"])
        truth = _exact_squared_radius(pixels, weight, bias, mean, std, label)
        radius = float(row["radius"])
        if radius > 0:
            assert truth > 0, (
                f"class {label} certified at radius {radius} but the exact function at the "
                f"file's pixels predicts the other one (squared margin {float(-truth):.3g})"
            )
            assert Fraction(radius) ** 2 <= truth, (radius, float(truth) ** 0.5)
        exact.append(truth)
    return exact


@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_pixels_at_the_mean_certify_the_file_not_its_float32_copy(
    tmp_path: Path, margins: str
) -> None:
    """Every pixel 0.1 (float64), --mean 0.1: the exact normalised input is 0 and the
    logits are the bias, which picks class 1. float32(0.1) is 1.5e-9 above 0.1: a reader
    that rounds the pixels moves the input along the weights of class 0 and certified it
    at radius 3e-9 (both margins)."""
    weight = np.stack([np.full(4, 0.5), np.full(4, -0.5)])
    bias = np.array([-1e-12, 0.0])
    model = _linear(tmp_path / "m.onnx", weight, bias)
    x = np.full((2, 1, 2, 2), 0.1)
    assert float(np.float32(0.1)) != 0.1
    rows = _certify(tmp_path, model, x, "--margins", margins, "--mean", "0.1", "--std", "1")
    _check(rows, x, weight, bias, Fraction(0.1))
    for pixels in x:  # the exact class is 1
        assert _exact_squared_radius(pixels, weight, bias, Fraction(0.1), Fraction(1), 0) < 0
    assert [row["prediction"] for row in rows] == ["1", "1"]


def test_float64_margins_certify_the_file_not_its_float32_copy(tmp_path: Path) -> None:
    """No --mean/--std, --margins float64: pixels (0.1, 0.4, 0.5 + 1e-9, 0) and
    f_0 - f_1 = x_0 + x_1 - x_2, negative at the file's pixels (-1e-9) and positive
    (+7.4e-9) at their float32 roundings, which were certified at radius 4.3e-9."""
    row = np.array([0.5, 0.5, -0.5, 0.0])
    weight, bias = np.stack([row, -row]), np.zeros(2)
    model = _linear(tmp_path / "m.onnx", weight, bias)
    x = np.array([[[[0.1, 0.4], [0.5 + 1e-9, 0.0]]]])
    rows = _certify(tmp_path, model, x, "--margins", "float64")
    _check(rows, x, weight, bias)
    assert _exact_squared_radius(x[0], weight, bias, Fraction(0), Fraction(1), 0) < 0
    assert rows[0]["prediction"] == "1"


@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_ordinary_float_pixels_keep_their_radii(tmp_path: Path, margins: str) -> None:
    """The look-alike: float64 pixels far from the boundary, with and without --mean/--std:
    the radius is within 1e-6 of the exact one (nothing lost to the fix)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.0, 1.0, size=(6, 1, 2, 2))
    weight = rng.normal(size=(2, 4))
    bias = np.array([0.2, -0.2])
    model = _linear(tmp_path / "m.onnx", weight, bias)
    for options, mean, std in (
        ((), Fraction(0), Fraction(1)),
        (("--mean", "0.4", "--std", "0.3"), Fraction(0.4), Fraction(0.3)),
    ):
        rows = _certify(tmp_path, model, x, "--margins", margins, *options)
        exact = _check(rows, x, weight, bias, mean, std)
        for row, truth in zip(rows, exact, strict=True):
            assert truth > 0
            assert float(row["radius"]) >= float(truth) ** 0.5 * (1 - 1e-6)


def test_float64_pixels_are_read_as_they_are(tmp_path: Path) -> None:
    """The reader keeps float64 pixels (bit for bit) and batches them as float64; float16
    and float32 pixels become float32, exactly."""
    x = np.linspace(0.0, 1.0, 32).reshape(2, 4, 4) / 3
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    data = load_dataset(str(path))
    assert data.images.dtype == np.float64
    _, pixels, _ = next(data.batches(2, dtype=np.float64))
    np.testing.assert_array_equal(pixels[:, 0], x)
    for dtype in (np.float16, np.float32):
        np.savez(path, x=x.astype(dtype), y=np.array([0, 1]))
        data = load_dataset(str(path))
        assert data.images.dtype == np.float32
        np.testing.assert_array_equal(data.images[:, 0], x.astype(dtype).astype(np.float32))


def test_wider_float_pixels_are_refused(tmp_path: Path) -> None:
    """long double pixels cannot be kept as they are (a float64 copy rounds them): refused."""
    assert np.dtype(np.longdouble).itemsize > 8  # x86-64 Linux: 80-bit extended
    x = np.full((2, 1, 2, 2), np.longdouble(1) / 3)
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"expected 'x' of dtype uint8 or float16/32/64"):
        load_dataset(str(path))
