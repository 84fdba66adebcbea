"""The default evaluator's float64 tail as a float64 copy of the ONNX nodes in the same
onnxruntime run: it computes in float64 (not float32), its allowance bounds the real error,
a tail with an op outside the float64 list falls back to lipcert's executor, a copy that
does not compute the model is refused, and float64 sums of squares give norm bounds.

Ground truth: the same weights in torch float64 (not lipcert's graph executor), exact
rational sums for the norms.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import lipcert.evaluators.norms as norms
import lipcert.evaluators.posterior as posterior
from lipcert.bounds.compose import analyse
from lipcert.errors import UnsoundCertificateError
from lipcert.evaluators.posterior import PosteriorEvaluator
from lipcert.frontends import load_model


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def scaled(shape: tuple[int, ...]) -> np.ndarray:
        w = rng.normal(size=shape)
        return (w / np.linalg.norm(w.reshape(shape[0], -1), 2)).astype(np.float32)

    return {
        "W1": scaled((4, 1, 3, 3)),
        "B1": rng.normal(size=4).astype(np.float32) * 0.1,
        "W2": scaled((32, 4 * 8 * 8)),
        "B2": rng.normal(size=32).astype(np.float32) * 0.1,
        "W3": scaled((10, 32)),
        "B3": rng.normal(size=10).astype(np.float32) * 0.1,
    }


def _model(
    path: Path,
    weights: dict[str, np.ndarray],
    activation: str = "Relu",
    computed_weight: bool = False,
) -> Path:
    """conv -> relu -> flatten -> dense -> `activation` -> dense, on 1x8x8 inputs: the
    float64 tail is dense -> activation -> dense. `computed_weight`: the first dense
    layer's weight is the output of a node (an Identity of the initializer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = ["W2"]
    if computed_weight:
        weight = [helper.make_node("Identity", ["W2"], ["W2_computed"])]
    nodes = [
        *(weight if computed_weight else []),
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node(
            "Gemm", ["f", "W2_computed" if computed_weight else "W2", "B2"], ["d"], transB=1
        ),
        helper.make_node(activation, ["d"], ["a"]),
        helper.make_node("Gemm", ["a", "W3", "B3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "dense_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _exact(inputs: np.ndarray, w: dict[str, np.ndarray], activation: str = "Relu") -> np.ndarray:
    t = {k: torch.as_tensor(v.astype(np.float64)) for k, v in w.items()}
    x = torch.as_tensor(inputs.astype(np.float64))
    h = torch.relu(torch.nn.functional.conv2d(x, t["W1"], t["B1"], padding=1)).flatten(1)
    h = h @ t["W2"].T + t["B2"]
    h = torch.relu(h) if activation == "Relu" else torch.nn.functional.leaky_relu(h, 0.01)
    return (h @ t["W3"].T + t["B3"]).numpy()


def _inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1e-4, 1e4, 96)[:, None, None, None]
    return np.concatenate(
        [rng.normal(size=(96, 1, 8, 8)) * scale, rng.random((32, 1, 8, 8)) + 100.0]
    ).astype(np.float32)


def _cut_value(path: Path, inputs: np.ndarray) -> np.ndarray:
    """onnxruntime's float32 value of the flattened activation (the cut), as a plain
    session of the model computes it."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    del proto.graph.output[:]
    proto.graph.output.extend(
        [onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, None)]
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": inputs})[0])


def test_the_tail_runs_in_float64_in_onnxruntime_and_bounds_the_real_error(
    tmp_path: Path,
) -> None:
    torch.set_num_threads(1)
    weights = _weights(1)
    path = _model(tmp_path / "m.onnx", weights)
    loaded = load_model(path)
    analysis = analyse(loaded.graph)
    evaluator = PosteriorEvaluator(loaded, analysis, threads=1)
    assert evaluator.tail_in_onnxruntime and evaluator.cut == "f"
    inputs = _inputs(1)
    evaluation = evaluator.evaluate(inputs)
    error = np.linalg.norm(evaluation.logits - _exact(inputs, weights), axis=1)
    assert np.all(error <= evaluation.allowance)
    # float64, not float32: the tail of onnxruntime's cut value in float64 (numpy) agrees to
    # ~1e-15 of its size, where a float32 dense layer of 256 terms is off by ~1e-6
    cut = _cut_value(path, inputs).astype(np.float64)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    hidden = np.maximum(cut @ w["W2"].T + w["B2"], 0.0)
    tail = hidden @ w["W3"].T + w["B3"]
    size = np.abs(hidden) @ np.abs(w["W3"]).T + np.abs(w["B3"]) + 1e-300
    scale = np.linalg.norm(cut, axis=1)[:, None] * np.abs(w["W3"]).sum() + size
    assert np.all(np.abs(evaluation.logits - tail) <= 1e-13 * scale)
    float32_tail = np.asarray(
        np.maximum(cut.astype(np.float32) @ weights["W2"].T + weights["B2"], 0) @ weights["W3"].T
        + weights["B3"],
        dtype=np.float64,
    )
    assert np.max(np.abs(float32_tail - tail) / scale) > 1e-11  # the test can tell them apart
    # the same certificates as the tail in lipcert's executor, to rounding in float64
    torch_tail = _torch_tail_evaluator(loaded, analysis)
    other = torch_tail.evaluate(inputs)
    assert np.all(np.abs(other.logits - evaluation.logits) <= 1e-13 * scale)
    assert np.allclose(other.allowance, evaluation.allowance, rtol=1e-9, atol=0)


def _torch_tail_evaluator(loaded, analysis) -> PosteriorEvaluator:  # type: ignore[no-untyped-def]
    saved = posterior._FLOAT64_OPS
    posterior._FLOAT64_OPS = frozenset()
    try:
        evaluator = PosteriorEvaluator(loaded, analysis, threads=1)
    finally:
        posterior._FLOAT64_OPS = saved
    assert not evaluator.tail_in_onnxruntime and evaluator.tail is not None
    return evaluator


@pytest.mark.parametrize(("activation", "computed_weight"), [("LeakyRelu", False), ("Relu", True)])
def test_a_tail_with_another_op_or_a_computed_weight_runs_in_lipcerts_executor(
    tmp_path: Path, activation: str, computed_weight: bool
) -> None:
    """The look-alikes: LeakyRelu is not in _FLOAT64_OPS, and a weight computed by a node
    (not a constant) is not read by the float64 copy, so the tail stays in torch; its
    allowance still bounds the real error."""
    torch.set_num_threads(1)
    weights = _weights(2)
    path = _model(tmp_path / "m.onnx", weights, activation, computed_weight)
    loaded = load_model(path)
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    assert not evaluator.tail_in_onnxruntime and evaluator.tail is not None
    inputs = _inputs(2)
    evaluation = evaluator.evaluate(inputs)
    error = np.linalg.norm(evaluation.logits - _exact(inputs, weights, activation), axis=1)
    assert np.all(error <= evaluation.allowance)


def test_a_float64_copy_that_differs_from_the_model_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A float64 copy whose logits are off by 0.5 (an Add after the copied head) must not
    pass: the per-batch check against onnxruntime's float32 logits refuses it."""
    from onnx import helper

    original = posterior._float64_copy

    def off_by_half(model, cut, logits):  # type: ignore[no-untyped-def]
        copied = original(model, cut, logits)
        assert copied is not None
        nodes, renamed = copied
        shifted = f"{renamed[logits]}_shifted"
        half = helper.make_node("Constant", [], ["half"], value_float=0.5)
        cast = helper.make_node("Cast", ["half"], ["half64"], to=11)
        add = helper.make_node("Add", [renamed[logits], "half64"], [shifted])
        renamed = {**renamed, logits: shifted}
        return [*nodes, half, cast, add], renamed

    monkeypatch.setattr(posterior, "_float64_copy", off_by_half)
    loaded = load_model(_model(tmp_path / "m.onnx", _weights(3)))
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    assert evaluator.tail_in_onnxruntime
    with pytest.raises(UnsoundCertificateError, match="float64 tail and onnxruntime differ"):
        evaluator.evaluate(_inputs(3)[:8])


@pytest.mark.parametrize("size", [1, 7, 3136])
def test_a_float64_sum_of_squares_gives_a_norm_bound(size: int) -> None:
    """onnxruntime's float64 ReduceSumSquare, made a norm bound, is at least the exact norm
    (rational arithmetic) and within 1e-12 of it; values from 1e-300 to 1e150."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(size)
    values = (
        rng.normal(size=(6, size)) * np.array([1e-300, 1e-160, 1e-3, 1.0, 1e50, 1e150])[:, None]
    )
    graph = helper.make_graph(
        [helper.make_node("ReduceSumSquare", ["x"], ["s"], axes=[1], keepdims=1)],
        "squares",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", size])],
        [helper.make_tensor_value_info("s", TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    squares = session.run(None, {"x": values})[0]
    bound = norms.norm_from_squares(squares, size, 2.0**-53)
    for row, upper in zip(values, bound, strict=True):
        exact = sum((Fraction(float(v)) ** 2 for v in row), Fraction(0))
        assert Fraction(float(upper)) ** 2 >= exact
        assert float(upper) <= float(exact) ** 0.5 * (1 + 1e-12) + 1.01 * size**0.5 * 2.0**-511


def test_float32_sums_of_squares_in_groups_give_a_tighter_norm_bound() -> None:
    """onnxruntime's float32 sums of squares of groups of 64 values (as the evaluator adds
    them, `_group_size`), made a norm bound, are at least the exact norm (rational
    arithmetic), within 1e-5 of it, and below the bound from one float32 sum of all the
    values (the look-alike: 7.5e-4 of slack); squares that underflow included."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    size = 6272  # a GroupSort activation of the sample models: 32 x 14 x 14
    group = norms.group_size(size)
    assert group == 64
    rng = np.random.default_rng(7)
    scales = np.array([1e-30, 1e-20, 1e-3, 1.0, 1e10, 3e17])[:, None]
    values = (rng.normal(size=(6, size)) * scales).astype(np.float32)
    values[5, ::2] = 1e-25  # large and underflowing squares in one tensor

    def sums(shape: list[int], axis: int) -> np.ndarray:
        nodes = [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("ReduceSumSquare", ["r"], ["s"], axes=[axis], keepdims=0),
        ]
        graph = helper.make_graph(
            nodes,
            "squares",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", size])],
            [helper.make_tensor_value_info("s", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(shape, dtype=np.int64), "shape")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return np.asarray(session.run(None, {"x": values})[0])

    grouped = sums([0, -1, group], 2)
    assert grouped.shape == (6, size // group)
    bound = norms.norm_from_group_sums(grouped, size, group, 2.0**-24)
    flat = norms.norm_from_squares(sums([0, -1], 1), size, 2.0**-24)
    underflow = (size * 2.0**-126) ** 0.5
    for row, upper, loose in zip(values, bound, flat, strict=True):
        exact = sum((Fraction(float(v)) ** 2 for v in row), Fraction(0))
        assert Fraction(float(upper)) ** 2 >= exact
        assert float(upper) <= float(exact) ** 0.5 * (1 + 1e-5) + underflow
        assert upper <= loose
    assert np.all(bound[2:5] < flat[2:5] * (1 - 1e-4))  # tighter where no underflow
