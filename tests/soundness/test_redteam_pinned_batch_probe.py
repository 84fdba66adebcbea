"""Red team: an affine block in a model whose batch is pinned to 2, with a constant of the
batch's shape that scales position 1 by s1 and position 0 by 1, and a large bias.

The block's probe put unit vectors at different batch positions, so its matrix mixed the
two positions' operators; the cross-check f(v) - f(0) = A v has a tolerance of 1e-9 times
the block's output at 0, which a bias of 1e9 widens enough to accept it. The block was
bounded 3.68 against 3.70 at position 1 (s1 = 1.05, bias 1e9), 10.05 against 10.57 (s1 = 3,
bias 1e12). Ground truth: s1 ||W W2|| by numpy's SVD of the float32 weights in float64 (the
block's linear part at position 1). With s1 = 1 the probe still gives the exact norm.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 4)).astype(np.float32)
W2 = RNG.standard_normal((4, 4)).astype(np.float32)
HEAD = np.eye(4, 3, dtype=np.float32)


def model(s1: float, bias: float) -> onnx.ModelProto:
    """x (2, 4) -> x W * [1, s1] -> W2 -> + bias -> Relu -> - bias -> head."""
    scale = np.array([[1.0], [s1]], np.float32)
    shift = np.full((4,), bias, np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["m"]),
        helper.make_node("MatMul", ["m", "W2"], ["c"]),
        helper.make_node("Add", ["c", "b"], ["d"]),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Add", ["r", "nb"], ["e"]),
        helper.make_node("MatMul", ["e", "H"], ["logits"]),
    ]
    named = [(W, "W"), (scale, "s"), (W2, "W2"), (shift, "b"), (-shift, "nb"), (HEAD, "H")]
    graph = helper.make_graph(
        nodes,
        "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(a, n) for a, n in named],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return proto


def block_bound(s1: float, bias: float) -> tuple[float, str]:
    analysis = analyse(
        load_from_proto(model(s1, bias), LoadOptions(), source="t", fmt="onnx").graph
    )
    (block,) = [layer for layer in analysis.layers if layer.op == "AffineBlock"]
    return block.bound, block.method


def truth(s1: float) -> float:
    product = W.astype(np.float64) @ W2.astype(np.float64)
    return max(1.0, s1) * float(np.linalg.svd(product, compute_uv=False)[0])


@pytest.mark.parametrize("s1,bias", [(1.05, 1e9), (1.5, 1e10), (3.0, 1e12), (3.0, 0.0)])
def test_block_bound_covers_every_batch_position(s1: float, bias: float) -> None:
    bound, _ = block_bound(s1, bias)
    assert bound >= truth(s1) * (1 - 1e-12), (bound, truth(s1))


def test_equal_positions_keep_the_exact_probe() -> None:
    bound, method = block_bound(1.0, 0.0)
    assert "probed" in method
    assert bound <= truth(1.0) * (1 + 1e-9)
