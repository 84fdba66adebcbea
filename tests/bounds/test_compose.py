"""Composition over graphs, checked against the dense matrix of whole linear networks."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def build(
    nodes: list, inits: dict[str, np.ndarray], in_shape: tuple[int, ...], out: int
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def analysis_of(model: onnx.ModelProto):
    loaded = load_from_proto(model, LoadOptions(), source="test", fmt="onnx")
    return loaded, analyse(loaded.graph)


def dense_jacobian(model: onnx.ModelProto, size: int) -> np.ndarray:
    """The matrix of an affine model, probed with onnxruntime on unit vectors: f(e_i) - f(0)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape[1:]
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    zero = np.zeros((1, *shape), dtype=np.float32)
    (at_basis,) = session.run(None, {"x": basis})
    (at_zero,) = session.run(None, {"x": zero})
    return (at_basis - at_zero).reshape(size, -1).T.astype(np.float64)


def sigma(matrix: np.ndarray) -> float:
    """Largest singular value of the matrix as the model stores it (float32)."""
    stored = np.asarray(matrix, dtype=np.float32).astype(np.float64)
    return float(np.linalg.svd(stored, compute_uv=False)[0])


def test_residual_add_sums_the_branches() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 6)) * 0.3
    model = build(
        [
            helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
            helper.make_node("Relu", ["g"], ["h"]),
            helper.make_node("Add", ["x", "h"], ["y"]),
        ],
        {"W": w},
        (6,),
        6,
    )
    _, analysis = analysis_of(model)
    expected = 1 + sigma(w)
    assert analysis.spec.lipschitz_bound == pytest.approx(expected, rel=1e-9)


def test_residual_add_of_an_affine_branch_is_bounded_as_one_operator() -> None:
    """x + W x is the matrix I + W (lipcert.graph.affine_blocks): its norm, not 1 + ||W||."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 6)) * 0.3
    model = build(
        [
            helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
            helper.make_node("Add", ["x", "h"], ["y"]),
        ],
        {"W": w},
        (6,),
        6,
    )
    _, analysis = analysis_of(model)
    stored = np.asarray(w, dtype=np.float32).astype(np.float64)
    expected = float(np.linalg.svd(np.eye(6) + stored.T, compute_uv=False)[0])
    assert analysis.spec.lipschitz_bound == pytest.approx(expected, rel=1e-9)
    assert analysis.spec.lipschitz_bound < 1 + sigma(w)
    assert analysis.spec.lipschitz_bound >= sigma(dense_jacobian(model, 6)) * (1 - 1e-6)


def test_concat_takes_the_root_of_the_sum_of_squares() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    model = build(
        [
            helper.make_node("Gemm", ["x", "A"], ["p0"], transB=1),
            helper.make_node("Gemm", ["x", "B"], ["q0"], transB=1),
            # Relu keeps the branches apart (an affine Concat would be one operator:
            # lipcert.graph.affine_blocks).
            helper.make_node("Relu", ["p0"], ["p"]),
            helper.make_node("Relu", ["q0"], ["q"]),
            helper.make_node("Concat", ["p", "q"], ["c"], axis=1),
            helper.make_node("Gemm", ["c", "H"], ["y"], transB=1),
        ],
        {"A": a, "B": b, "H": np.eye(7)},
        (5,),
        7,
    )
    _, analysis = analysis_of(model)
    # the head is found: body bound sqrt(|A|^2 + |B|^2), head rows of the identity
    assert analysis.spec.body_bound == pytest.approx(math.hypot(sigma(a), sigma(b)), rel=1e-9)


def test_pairwise_bounds_of_a_head_with_bias_and_per_logit_scale() -> None:
    rng = np.random.default_rng(2)
    body = np.linalg.qr(rng.normal(size=(8, 8)))[0][:6]  # 6x8 with orthonormal rows: norm 1
    head = rng.normal(size=(4, 6))
    scale = np.array([[2.0, -1.0, 0.5, 1.5]])
    model = build(
        [
            helper.make_node("Gemm", ["x", "B"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W", "c"], ["z"], transB=1),
            helper.make_node("Mul", ["z", "s"], ["y"]),
        ],
        {"B": body, "W": head, "c": rng.normal(size=4), "s": scale},
        (8,),
        4,
    )
    _, analysis = analysis_of(model)
    spec = analysis.spec
    rows = head.astype(np.float32).astype(np.float64) * scale.reshape(-1, 1)
    assert spec.head is not None and spec.body_bound == pytest.approx(1.0, rel=1e-6)
    for i in range(4):
        assert spec.logit_bounds[i] == pytest.approx(np.linalg.norm(rows[i]), rel=1e-6)
        for j in range(4):
            if i != j:
                exact = np.linalg.norm(rows[i] - rows[j])
                assert spec.pairwise_bounds[i, j] >= exact
                assert spec.pairwise_bounds[i, j] == pytest.approx(exact, rel=1e-6)
    assert spec.lipschitz_bound == pytest.approx(sigma(rows), rel=1e-6)


def test_without_a_head_pairs_use_sqrt2_times_the_vector_bound() -> None:
    model = build([helper.make_node("Relu", ["x"], ["y"])], {}, (3,), 3)
    _, analysis = analysis_of(model)
    assert analysis.spec.pairwise_bounds is None
    assert analysis.spec.pair_bound(0, 1) >= math.sqrt(2)
    assert analysis.spec.pair_bound(0, 1) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_input_normalisation_multiplies_the_bound_by_one_over_min_std() -> None:
    std = np.array([0.5, 0.25, 2.0]).reshape(1, 3, 1, 1)
    mean = np.array([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1)
    model = build(
        [
            helper.make_node("Sub", ["x", "m"], ["c"]),
            helper.make_node("Div", ["c", "s"], ["d"]),
            helper.make_node("Flatten", ["d"], ["y"], axis=1),
        ],
        {"m": mean, "s": std},
        (3, 2, 2),
        12,
    )
    _, analysis = analysis_of(model)
    assert analysis.spec.lipschitz_bound == pytest.approx(4.0, rel=1e-12)
    assert analysis.spec.lipschitz_bound >= 4.0


def test_softmax_at_the_output_is_dropped_and_noted() -> None:
    w = np.eye(3) * 2.0
    model = build(
        [
            helper.make_node("Gemm", ["x", "W"], ["z"], transB=1),
            helper.make_node("Softmax", ["z"], ["y"], axis=1),
        ],
        {"W": w},
        (3,),
        3,
    )
    loaded, analysis = analysis_of(model)
    assert loaded.graph.output_name == "z"
    assert any("Softmax at the output" in note for note in analysis.notes)
    assert analysis.spec.lipschitz_bound == pytest.approx(2.0, rel=1e-9)


def test_spec_scaled_multiplies_every_bound() -> None:
    model = build(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        {"W": np.array([[1.0, 0.0], [0.0, 2.0]])},
        (2,),
        2,
    )
    _, analysis = analysis_of(model)
    scaled = analysis.spec.scaled(4.0)
    assert scaled.lipschitz_bound >= 8.0 and scaled.lipschitz_bound == pytest.approx(8.0)
    assert scaled.pairwise_bounds[0, 1] >= analysis.spec.pairwise_bounds[0, 1] * 4.0


def test_sigmoid_at_the_output_of_one_logit_is_dropped() -> None:
    """p > 1/2 exactly when the logit is > 0: certificates use the logit and its sign."""
    model = build(
        [
            helper.make_node("Gemm", ["x", "W"], ["z"], transB=1),
            helper.make_node("Sigmoid", ["z"], ["y"]),
        ],
        {"W": np.array([[3.0, 4.0]])},
        (2,),
        1,
    )
    loaded, analysis = analysis_of(model)
    assert loaded.graph.output_name == "z"
    assert any("Sigmoid at the output" in note for note in analysis.notes)
    assert analysis.spec.logit_bounds[0] == pytest.approx(5.0, rel=1e-9)


def test_softmax_over_another_axis_is_not_dropped() -> None:
    model = build(
        [
            helper.make_node("Gemm", ["x", "W"], ["z"], transB=1),
            helper.make_node("Softmax", ["z"], ["y"], axis=0),
        ],
        {"W": np.eye(3)},
        (3,),
        3,
    )
    from lipcert.errors import UnsupportedOpError

    # refused at load: a Softmax across the batch does not keep a sample's decision
    with pytest.raises(UnsupportedOpError, match=r"\(Softmax\) at the output: .*batch axis"):
        load_from_proto(model, LoadOptions(), source="test", fmt="onnx")
