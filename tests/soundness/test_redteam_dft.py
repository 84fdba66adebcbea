"""Red team: a onesided inverse DFT (irfft) that onnxruntime reads differently from irfft.

onnxruntime's DFT(inverse=1, onesided=1) equals numpy's irfft only when the input holds
dft_length // 2 + 1 bins (and takes dft_length = 2 (bins - 1) when the input is absent, as
the ONNX reference does); with more or fewer bins it computes something else (measured
here by probing onnxruntime with unit vectors). lipcert's executor computes irfft, so a
block probed with it was bounded as a different function: a forward DFT, a mask on a bin
irfft drops, and the inverse was certified with a Lipschitz bound of 1e-13 while
onnxruntime's function has norm 1.68. Ground truth: the dense matrix of the model as
onnxruntime runs it (its outputs at 0 and at every unit vector), its largest singular
value by numpy; lipcert must refuse, or bound it from above and compute the same logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcert
from lipcert.errors import LipcertError


def _ints(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _save(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], n_in: int, n_out: int, path: Path
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def masked_spectrum_model(path: Path) -> Path:
    """x (4) -> DFT (5 bins) -> x 3 on bin 3 only -> onesided inverse, dft_length 4 -> + bias."""
    mask = np.zeros((1, 5, 1), np.float32)
    mask[0, 3, 0] = 3.0
    bias = np.array([0.5, -0.5, 0.25, 0.1], np.float32).reshape(1, 4, 1)
    inits = [
        _ints("ax", 1),
        _ints("n5", 5),
        _ints("n4", 4),
        _ints("s3", [0, 4, 1]),
        _ints("s2", [0, 4]),
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(bias, "bias"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "s3"], ["xb"]),
        helper.make_node("DFT", ["xb", "n5", "ax"], ["f"], inverse=0, onesided=0),
        helper.make_node("Mul", ["f", "mask"], ["m"]),
        helper.make_node("DFT", ["m", "n4", "ax"], ["r"], inverse=1, onesided=1),
        helper.make_node("Add", ["r", "bias"], ["rb"]),
        helper.make_node("Reshape", ["rb", "s2"], ["y"]),
    ]
    return _save(nodes, inits, 4, 4, path)


def half_spectrum_model(path: Path, bins: int, length: int | None) -> Path:
    """x (2 bins) read as a half spectrum -> onesided inverse DFT -> + bias (a real signal)."""
    n_out = 2 * (bins - 1) if length is None else length
    bias = np.linspace(-0.3, 0.4, n_out, dtype=np.float32).reshape(1, n_out, 1)
    inits = [
        _ints("ax", 1),
        _ints("s3", [0, bins, 2]),
        _ints("s2", [0, n_out]),
        numpy_helper.from_array(bias, "bias"),
    ]
    inputs = ["xb", "", "ax"]
    if length is not None:
        inits.append(_ints("n", length))
        inputs[1] = "n"
    nodes = [
        helper.make_node("Reshape", ["x", "s3"], ["xb"]),
        helper.make_node("DFT", inputs, ["r"], inverse=1, onesided=1),
        helper.make_node("Add", ["r", "bias"], ["rb"]),
        helper.make_node("Reshape", ["rb", "s2"], ["y"]),
    ]
    return _save(nodes, inits, 2 * bins, n_out, path)


def runtime_norm(path: Path) -> tuple[float, ort.InferenceSession]:
    """Largest singular value of the affine map onnxruntime computes (float64 SVD)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    eye = np.eye(size, dtype=np.float32)
    at_zero = session.run(None, {"x": np.zeros((1, size), np.float32)})[0][0]
    columns = np.stack([session.run(None, {"x": eye[i : i + 1]})[0][0] for i in range(size)])
    matrix = (columns - at_zero).astype(np.float64).T
    return float(np.linalg.svd(matrix, compute_uv=False)[0]), session


def _check(path: Path) -> bool:
    """Refused (False), or loaded with a bound >= onnxruntime's norm and its logits (True)."""
    truth, session = runtime_norm(path)
    try:
        model = lipcert.load(path)
    except LipcertError:
        return False
    assert model.lipschitz_bound >= truth * (1 - 1e-6), (model.lipschitz_bound, truth)
    size = session.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).standard_normal((3, size)).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(model.logits(x, precision="float64"), expected, atol=1e-5)
    return True


def test_masked_bin_beyond_the_half_is_not_bounded_as_irfft(tmp_path: Path) -> None:
    """The break: certified with bound 1.6e-13 (radius 1e12) before the fix."""
    truth, _ = runtime_norm(masked_spectrum_model(tmp_path / "m.onnx"))
    assert truth > 1.0  # onnxruntime reads bin 3, which irfft of length 4 drops
    _check(tmp_path / "m.onnx")


@pytest.mark.parametrize("bins,length", [(5, 4), (2, 4), (3, 8), (4, 4), (9, 4)])
def test_half_spectrum_of_another_size(tmp_path: Path, bins: int, length: int) -> None:
    _check(half_spectrum_model(tmp_path / "h.onnx", bins, length))


@pytest.mark.parametrize("bins,length", [(4, 6), (4, 7), (3, None), (5, None)])
def test_matching_half_spectrum_is_certified_as_the_runtime_computes(
    tmp_path: Path, bins: int, length: int | None
) -> None:
    """dft_length // 2 + 1 bins, or no dft_length (2 (bins - 1)): loaded, bound exact-ish."""
    path = half_spectrum_model(tmp_path / "h.onnx", bins, length)
    assert _check(path)
    truth, _ = runtime_norm(path)
    assert lipcert.load(path).lipschitz_bound <= truth * (1 + 1e-5)
