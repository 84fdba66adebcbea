"""SLL/CPL blocks exported as Gemm: alpha and beta are part of the matrices the rule bounds.

y = x - A2 D relu(A1 x + b) is an SLL block only when A2 = A1^T, where A1 = alpha1 W1 (op) and
A2 = alpha2 W2 (op) are the matrices the Gemms compute: an alpha on one side only makes the
block x - alpha W D relu(W^T x), whose true constant can be far above the block bound of W.
Ground truth: the explicit Jacobian I - A2 D A1 where every ReLU is active (a large bias),
its spectral norm by numpy's SVD; the analysis bound must be at least that.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

N, H = 6, 4


def _weight() -> np.ndarray:
    """W (N x H) with orthonormal columns scaled to singular values (1, 0.9, 0.7, 0.5)."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(N, H)))
    return (q * np.array([1.0, 0.9, 0.7, 0.5])).astype(np.float32)


def _block(alpha1: float, alpha2: float, w2: np.ndarray, beta: float = 1.0) -> onnx.ModelProto:
    """y = x - Gemm2(D relu(Gemm1(x))), Gemm1 = alpha1 x W + beta b, Gemm2 = alpha2 h w2^T."""
    w = _weight()
    d = np.full((1, H), 2.0, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "Gemm", ["x", "w1", "b1"], ["z"], alpha=alpha1, beta=beta, name="first"
            ),
            helper.make_node("Relu", ["z"], ["a"], name="relu"),
            helper.make_node("Mul", ["a", "d"], ["h"], name="scale"),
            helper.make_node("Gemm", ["h", "w2"], ["t"], alpha=alpha2, transB=1, name="second"),
            helper.make_node("Sub", ["x", "t"], ["logits"], name="residual"),
        ],
        "sll",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, N])],
        [
            numpy_helper.from_array(w, "w1"),
            numpy_helper.from_array(np.full(H, 10.0, dtype=np.float32), "b1"),
            numpy_helper.from_array(d, "d"),
            numpy_helper.from_array(w2.astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _true_constant(alpha1: float, alpha2: float, w2: np.ndarray) -> float:
    """||I - A2 D A1|| with every unit active (the bias 10 keeps them so near x = 0)."""
    w = _weight().astype(np.float64)
    a1 = alpha1 * w.T  # z = alpha1 x W: the operator W^T
    a2 = alpha2 * w2.astype(np.float64)  # t = alpha2 h w2^T: the operator w2
    jacobian = np.eye(N) - a2 @ np.diag(np.full(H, 2.0)) @ a1
    return float(np.linalg.norm(jacobian, 2))


CASES = [
    # (alpha1, alpha2, second weight as a multiple of W, fused as an SLL block?)
    pytest.param(1.0, 1.0, 1.0, True, id="plain_sll"),
    pytest.param(2.0, 1.0, 1.0, False, id="alpha_on_the_first_only"),
    pytest.param(1.0, 2.0, 1.0, False, id="alpha_on_the_second_only"),
    pytest.param(2.0, 2.0, 1.0, True, id="equal_alphas"),
    pytest.param(2.0, 0.5, 4.0, True, id="alphas_balanced_by_the_weight"),
]


@pytest.mark.parametrize(("alpha1", "alpha2", "multiple", "fused"), CASES)
def test_sll_block_reads_the_gemm_alphas(
    alpha1: float, alpha2: float, multiple: float, fused: bool
) -> None:
    w2 = multiple * _weight()
    loaded = load_from_proto(
        _block(alpha1, alpha2, w2), LoadOptions(input_shape=(N,)), source="m", fmt="onnx"
    )
    analysis = analyse(loaded.graph)
    blocks = [node for node, _ in analysis.node_bounds if node.op == "SLLBlock"]
    assert bool(blocks) == fused
    true = _true_constant(alpha1, alpha2, w2)
    assert analysis.spec.lipschitz_bound >= true * (1 - 1e-9)
    if fused:  # the block bound is the true constant here (max(1, ||M||^2 - 1), attained)
        assert analysis.spec.lipschitz_bound <= true * (1 + 1e-6)
    if not fused:
        assert true > 1.5  # the look-alike is far from 1-Lipschitz


def test_gemm_beta_enters_the_block_rounding() -> None:
    """beta scales the first Gemm's bias: the rounding offset the block declares must grow
    with |beta| ||b|| (a bias of 10 read with beta = 1e4 adds hidden values of 1e5, whose
    float32 rounding reaches the output)."""
    w2 = _weight()
    small = analyse(
        load_from_proto(
            _block(1.0, 1.0, w2), LoadOptions(input_shape=(N,)), source="m", fmt="onnx"
        ).graph
    )
    large = analyse(
        load_from_proto(
            _block(1.0, 1.0, w2, beta=1e4), LoadOptions(input_shape=(N,)), source="m", fmt="onnx"
        ).graph
    )
    offsets = []
    for analysis in (small, large):
        (layer,) = [bound for node, bound in analysis.node_bounds if node.op == "SLLBlock"]
        offsets.append(layer.rounding.offset)
    assert offsets[1] >= 1e4 * offsets[0] * (1 - 1e-9)


def _null_bias_block(beta: float) -> tuple[onnx.ModelProto, np.ndarray]:
    """An SLL block with H > N whose bias b (all positive) lies in W's null space: the hidden
    values beta b are large, W D relu(...) cancels them exactly, and only their rounding
    reaches the output (small next to nothing else)."""
    n, h = 3, 4
    ones = np.ones(h) / 2.0  # unit norm
    basis = np.linalg.qr(np.column_stack([ones, np.random.default_rng(1).normal(size=(h, n))]))[0]
    w = basis[:, 1:].T.astype(np.float32)  # (n, h): rows orthonormal, orthogonal to ones
    b = ones.astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["z"], beta=beta, transB=0, name="first"),
            helper.make_node("Relu", ["z"], ["a"], name="relu"),
            helper.make_node("Gemm", ["a", "w1"], ["t"], transB=1, name="second"),
            helper.make_node("Sub", ["x", "t"], ["logits"], name="residual"),
        ],
        "sll",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(b, "b1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


def test_float32_error_with_a_large_beta_is_within_the_allowance() -> None:
    from lipcert.certify.pipeline import choose_evaluators

    beta = 3e4
    model, w = _null_bias_block(beta)
    loaded = load_from_proto(model, LoadOptions(input_shape=(3,)), source="m", fmt="onnx")
    analysis = analyse(loaded.graph)
    assert any(node.op == "SLLBlock" for node, _ in analysis.node_bounds)
    evaluator = choose_evaluators(loaded, analysis, "float32", None).evaluator
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(64, 3)) * 1e-3).astype(np.float32)
    evaluation = evaluator.evaluate(x)
    w64, b64 = w.astype(np.float64), np.ones(4) / 2.0
    exact = x - np.maximum(x.astype(np.float64) @ w64 + beta * b64, 0) @ w64.T
    error = np.linalg.norm(evaluation.logits - exact, axis=1)
    assert error.max() > 1e-5  # the rounding of the hidden values does reach the output
    assert np.all(error <= evaluation.allowance), (error.max(), evaluation.allowance.min())
