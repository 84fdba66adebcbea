"""A Conv, ConvTranspose or MatMul whose weight has no entries (a zero dimension) is
refused in one line naming the node; it stopped with an internal ValueError (a reshape of an
empty array in the rule). Look-alike: the same layers with one channel load."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def _load(node: str, weight_shape: tuple[int, ...], data: list, out: list) -> float:
    """x -> node(W) -> node(V) -> y, V mapping W's outputs to two channels / features."""
    weight = numpy_helper.from_array(np.ones(weight_shape, np.float32), "W")
    width = weight_shape[1] if node == "MatMul" else weight_shape[0 if node == "Conv" else 1]
    second = (width, 2) if node == "MatMul" else (2, width, 1, 1)
    if node == "ConvTranspose":
        second = (width, 2, 1, 1)
    last = numpy_helper.from_array(np.ones(second, np.float32), "V")
    graph = helper.make_graph(
        [helper.make_node(node, ["x", "W"], ["h"]), helper.make_node(node, ["h", "V"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, data)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [weight, last],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    loaded = load_from_proto(model, LoadOptions(), source="memory", fmt="onnx")
    from lipcert.bounds.compose import analyse

    return analyse(loaded.graph).spec.lipschitz_bound


CASES = [
    ("Conv", (0, 1, 3, 3), (1, 1, 3, 3), ["n", 1, 4, 4], ["n", 2, 2, 2]),
    ("ConvTranspose", (1, 0, 3, 3), (1, 1, 3, 3), ["n", 1, 4, 4], ["n", 2, 6, 6]),
    ("MatMul", (4, 0), (4, 1), ["n", 4], ["n", 2]),
]


@pytest.mark.parametrize(("node", "empty", "one", "data", "out"), CASES, ids=[c[0] for c in CASES])
def test_an_empty_weight_is_refused(
    node: str, empty: tuple[int, ...], one: tuple[int, ...], data: list, out: list
) -> None:
    with pytest.raises(UnsupportedOpError, match=rf"\({node}\): its weight .* is empty"):
        _load(node, empty, data, out)
    assert _load(node, one, data, out) > 0  # the look-alike loads
