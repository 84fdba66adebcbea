"""Red team: Max / Min of the same two tensors in both orders share one ReLU, and the model
that reads both must be rewritten exactly.

`Max(a, b)` registers the pair (a, b) with r = relu(a - b); a later `Max(b, a)` or `Min(b, a)`
reuses that r. Before the fix the swapped node was read as if r were relu(b - a): Max(b, a)
became a + relu(a - b) (2a - b where a > b), and on y = (-max(x1, x2), 0) the local bounds
proved eps = 1.3 at x0 = (-2, -1), whose true distance to the boundary is 1 (closed form:
max(x1, x2) < 0 is class 0). Ground truth here is numpy's maximum / minimum on a dense grid
and that closed form, never lipcert's own output.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from local_support import run_network
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.local.network import build_network
from lipcert.local.refine import LocalCertifier
from lipcert.model import LoadedModel, LoadOptions

ORDERS = ("ab", "ba")


def _pair_model(first: tuple[str, str], second: tuple[str, str], head: float) -> LoadedModel:
    """a = x1, b = x2; m1 = first op over its order, m2 = second op over its order;
    logits (head * m2, 0 * m1): m1 is read, so its ReLU is built first and shared."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    constants = [
        numpy_helper.from_array(np.array([[1.0], [0.0]], dtype=np.float32), "ea"),
        numpy_helper.from_array(np.array([[0.0], [1.0]], dtype=np.float32), "eb"),
        numpy_helper.from_array(np.array(head, dtype=np.float32), "head"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    (op1, order1), (op2, order2) = first, second
    nodes = [
        helper.make_node("MatMul", ["x", "ea"], ["a"]),
        helper.make_node("MatMul", ["x", "eb"], ["b"]),
        helper.make_node(op1, list(order1), ["m1"]),
        helper.make_node(op2, list(order2), ["m2"]),
        helper.make_node("Mul", ["m2", "head"], ["y0"]),
        helper.make_node("Mul", ["m1", "zero"], ["y1"]),
        helper.make_node("Concat", ["y0", "y1"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "pairs", [x], [y], constants)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return load_from_proto(proto, LoadOptions(input_shape=(2,)), source="memory", fmt="onnx")


def _truth(op: str, x: np.ndarray) -> np.ndarray:
    return np.maximum(x[:, 0], x[:, 1]) if op == "Max" else np.minimum(x[:, 0], x[:, 1])


CASES = [
    pytest.param((op1, o1), (op2, o2), id=f"{op1}{o1}-{op2}{o2}")
    for op1, op2 in itertools.product(("Max", "Min"), repeat=2)
    for o1, o2 in itertools.product(ORDERS, repeat=2)
]


@pytest.mark.parametrize(("first", "second"), CASES)
def test_both_orders_of_a_pair_compute_the_model(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    loaded = _pair_model(first, second, 1.0)
    analysis = analyse(loaded.graph)
    network = build_network(analysis.graph, analysis.tensor_bounds)
    grid = np.stack(np.meshgrid(np.linspace(-3, 3, 41), np.linspace(-3, 3, 41)), -1)
    points = grid.reshape(-1, 2)
    got = run_network(network, points)
    np.testing.assert_allclose(got[:, 0], _truth(second[0], points), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[:, 1], 0.0)


def _bisect(certifier: LocalCertifier, x0: np.ndarray, prediction: int, high: float) -> float:
    low = 0.0
    for _ in range(14):
        middle = 0.5 * (low + high)
        if certifier.certify(x0, prediction, middle)[0]:
            low = middle
        else:
            high = middle
    return low


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_swapped_pair_radius_stays_within_the_true_distance(op: str) -> None:
    """y = (-op(x1, x2), 0): class 0 iff op(x1, x2) < 0, so at a point of class 0 the true
    distance to the boundary is -op(x0) (move the coordinate that sets op up to 0)."""
    loaded = _pair_model((op, "ab"), (op, "ba"), -1.0)
    analysis = analyse(loaded.graph)
    certifier = LocalCertifier(analysis)
    # Points on both sides of the diagonal.
    for x0 in ([-2.0, -1.0], [-1.0, -2.0], [-0.5, -3.0], [-3.0, -0.25]):
        point = np.array(x0)
        value = float(_truth(op, point[None])[0])
        true_distance = -value
        assert true_distance > 0
        radius = _bisect(certifier, point, 0, 4.0)
        assert radius <= true_distance * (1 + 1e-9), (op, x0, radius, true_distance)
