"""Red team: a file whose tensor names look like the names the local rewrite makes up.

The rewrite names its own tensors `<output>#<tag><counter>` (the difference and the ReLU of a
Max pair: m1#diff1, m1#relu2). A file holding a tensor named m1#relu2 (here t = -x2, read by
the logits) had it overwritten by the pair's ReLU relu(a - b): with a - b = 0.5 - 0.5 x2,
equal to t at x0 = (0, -1), the bounds stayed consistent and y = (t, 0) got a local radius
1.9 at x0, whose true distance to the boundary is 1 (closed form: class 0 iff x2 < 0).
Ground truth: numpy on a grid and that closed form.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from local_support import run_network
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import Analysis, analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.local.network import LocalUnsupported, build_network
from lipcert.local.refine import LocalCertifier
from lipcert.model import LoadOptions


def _analysis(name: str) -> Analysis:
    """y = (t, 0 * max(a, b)) with t = -x2 named `name`, a = x1 - x2 / 2 + 1 / 2, b = x1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])

    def const(value: object, key: str) -> object:
        return numpy_helper.from_array(np.array(value, dtype=np.float32), key)

    constants = [
        const([[1.0, 0.0], [-0.5, 0.0]], "w_ab"),
        const([0.5, 0.0], "b_ab"),
        const([[1.0], [0.0]], "e0"),
        const([[0.0], [1.0]], "e1"),
        const(-1.0, "minus"),
        const(0.0, "zero"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_ab"], ["ab0"]),
        helper.make_node("Add", ["ab0", "b_ab"], ["ab"]),
        helper.make_node("MatMul", ["ab", "e0"], ["a"]),
        helper.make_node("MatMul", ["x", "e0"], ["b"]),
        helper.make_node("MatMul", ["x", "e1"], ["x2"]),
        helper.make_node("Mul", ["x2", "minus"], [name]),
        helper.make_node("Max", ["a", "b"], ["m1"]),
        helper.make_node("Mul", ["m1", "zero"], ["y1"]),
        helper.make_node("Concat", [name, "y1"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "names", [x], [y], constants)  # type: ignore[arg-type]
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    loaded = load_from_proto(proto, LoadOptions(input_shape=(2,)), source="memory", fmt="onnx")
    return analyse(loaded.graph)


NAMES = ["m1#relu2", "m1#diff1", "t"]  # the last one: the look-alike, no collision


def test_the_rewrite_computes_the_model_whatever_its_tensor_names() -> None:
    grid = np.stack(np.meshgrid(np.linspace(-3, 3, 31), np.linspace(-3, 3, 31)), -1)
    points = grid.reshape(-1, 2)
    for name in NAMES:
        analysis = _analysis(name)
        got = run_network(build_network(analysis.graph, analysis.tensor_bounds), points)
        np.testing.assert_allclose(got[:, 0], -points[:, 1], rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_array_equal(got[:, 1], 0.0)


def test_local_radius_stays_within_the_true_distance_whatever_the_names() -> None:
    x0 = np.array([0.0, -1.0])  # class 0 (x2 < 0); the true distance is 1
    for name in NAMES:
        certifier = LocalCertifier(_analysis(name))
        low, high = 0.0, 4.0
        for _ in range(14):
            middle = 0.5 * (low + high)
            if certifier.certify(x0, 0, middle)[0]:
                low = middle
            else:
                high = middle
        assert low <= 1.0, (name, low)
        assert low > 0.9, (name, low)  # the centre's margin over its gradient: 1 / 1
        assert certifier.certify(x0, 0, 0.99)[0]


def test_a_tensor_computed_twice_is_refused() -> None:
    """A graph edited so that two nodes write x2 (not a valid ONNX file: the loader would
    refuse it) is refused by the rewrite too, not read as whichever came last."""
    analysis = _analysis("t")
    nodes = analysis.graph.nodes
    index = next(i for i, n in enumerate(nodes) if n.outputs == ("t",))
    nodes[index] = dataclasses.replace(nodes[index], outputs=("x2",))
    with pytest.raises(LocalUnsupported, match="'x2' is computed twice"):
        build_network(analysis.graph, analysis.tensor_bounds)
