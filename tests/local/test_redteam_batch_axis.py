"""Red team: a fixed-batch-1 file whose ops act on the batch axis must be refused by the local
rewrite in one line, and `certify --refine` must then keep the global radii; so must a Split
read at its second output alone.

The rewrite evaluates its steps on a batch of rows (the first-layer Jacobian runs a chunk of
basis vectors as one batch), so every step must treat axis 0 as independent samples. Pad or
Tile along axis 0 followed by a Slice of row 1 (the identity at batch 1, accepted by the global
checks) gave first-layer Jacobian row norms of the first basis vector alone (0.04 for a true
0.90 on random weights), then `certify --refine` stopped with "internal error" (a float64
constant of batch 2 broke a later product); Flatten(axis=0) stopped it the same way. The
look-alike, Reshape(x, [1, -1]) of a fixed-batch-1 export, keeps its refinement, and its
row norms are the column norms of the weight (numpy).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from lipcert.bounds.compose import Analysis, analyse
from lipcert.cli import app
from lipcert.errors import LipcertError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.local.network import LocalUnsupported, build_network
from lipcert.local.refine import LocalCertifier
from lipcert.model import LoadOptions

W1 = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32) / 3
W2 = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32) / 3


def _model(front: str) -> onnx.ModelProto:
    """x (1, 4), fixed batch 1 -> `front` -> MatMul W1 -> Relu -> MatMul W2 -> y (1, 3)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    constants = [
        numpy_helper.from_array(W1, "W1"),
        numpy_helper.from_array(W2, "W2"),
        ints("pads", [1, 0, 0, 0]),
        ints("reps", [2, 1]),
        ints("shape", [1, -1]),
        ints("one", [1]),
        ints("two", [2]),
        ints("axis0", [0]),
    ]
    slice_row_1 = helper.make_node("Slice", ["p", "one", "two", "axis0"], ["s"])
    fronts = {
        "pad_slice": [helper.make_node("Pad", ["x", "pads"], ["p"]), slice_row_1],
        "tile_slice": [helper.make_node("Tile", ["x", "reps"], ["p"]), slice_row_1],
        "flatten_axis0": [helper.make_node("Flatten", ["x"], ["s"], axis=0)],
        "reshape_1_-1": [helper.make_node("Reshape", ["x", "shape"], ["s"])],
    }
    nodes = [
        *fronts[front],
        helper.make_node("MatMul", ["s", "W1"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, front, [x], [y], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _analysis(front: str) -> Analysis | None:
    """The analysis, or None where lipcert's global checks refuse the file already."""
    try:
        loaded = load_from_proto(
            _model(front), LoadOptions(input_shape=(4,)), source="memory", fmt="onnx"
        )
        return analyse(loaded.graph)
    except LipcertError as exc:
        assert "batch axis" in str(exc), exc
        return None


MIXING = ["pad_slice", "tile_slice", "flatten_axis0"]


@pytest.mark.parametrize("front", MIXING)
def test_ops_on_the_batch_axis_are_refused_in_one_line(front: str) -> None:
    analysis = _analysis(front)
    if analysis is None:  # the global checks refuse it (Tile along the batch axis, since 2026-11)
        return
    with pytest.raises(LocalUnsupported, match=r"node '[^']+': .*batch axis") as info:
        build_network(analysis.graph, analysis.tensor_bounds)
    assert "\n" not in str(info.value)


def test_the_local_guard_is_reached() -> None:
    """Pad along the batch axis passes the global checks: the local refusal is what stops it."""
    assert _analysis("pad_slice") is not None
    assert _analysis("flatten_axis0") is not None


def test_the_fixed_batch_flatten_look_alike_keeps_exact_row_norms() -> None:
    analysis = _analysis("reshape_1_-1")
    assert analysis is not None
    certifier = LocalCertifier(analysis)
    rows = certifier.cache.exact_rows["z"].numpy().reshape(-1)
    truth = np.linalg.norm(W1.astype(np.float64), axis=0)
    assert np.all(rows >= truth)
    np.testing.assert_allclose(rows, truth, rtol=1e-9)


@pytest.mark.parametrize("front", [*MIXING, "reshape_1_-1"])
def test_cli_refine_falls_back_to_global_radii(front: str, tmp_path: Path) -> None:
    model = tmp_path / "net.onnx"
    onnx.save(_model(front), str(model))
    x = np.random.default_rng(2).uniform(-0.3, 0.3, size=(6, 4)).astype(np.float32)
    data = tmp_path / "points.npz"
    np.savez(data, x=x, y=np.zeros(6, dtype=np.int64))
    base = ["certify", str(model), "--dataset", str(data), "--eps", "0.5,1.0", "--no-config"]
    result = CliRunner().invoke(app, [*base, "--refine", "--json", "--quiet"])
    if front in MIXING and _analysis(front) is None:
        assert result.exit_code == 2 and "batch axis" in result.output, result.output
        return
    assert result.exit_code == 0, result.output
    refinement = json.loads(result.stdout)["refinement"]
    if front in MIXING:
        assert "batch axis" in refinement["unsupported"], refinement
        assert refinement["refined"] == 0
    else:
        assert refinement["unsupported"] is None, refinement


def test_a_split_read_at_its_second_output_alone_is_refused() -> None:
    """Split(x) -> ('', b): b is the second piece (lipcert's executor: x[2:4]); the rewrite
    ran the node's first output and called it b (x[0:2]). onnxruntime 1.x crashes loading
    such a file, so the graph is edited after loading one that names both pieces."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    constants = [
        numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "split"),
        numpy_helper.from_array(np.eye(2, dtype=np.float32), "eye"),
    ]
    nodes = [
        helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
        helper.make_node("MatMul", ["b", "eye"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "split", [x], [y], constants)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    loaded = load_from_proto(proto, LoadOptions(input_shape=(4,)), source="memory", fmt="onnx")
    analysis = analyse(loaded.graph)
    split = analysis.graph.nodes[0]
    assert split.op == "Split"
    analysis.graph.nodes[0] = dataclasses.replace(split, outputs=("", "b"))
    points = np.array([[1.0, 2.0, 3.0, 4.0]])
    with torch.no_grad():
        executed = GraphExecutor(analysis.graph)(torch.as_tensor(points)).numpy()
    np.testing.assert_array_equal(executed, [[3.0, 4.0]])
    with pytest.raises(LocalUnsupported, match="first output of a Split"):
        build_network(analysis.graph, analysis.tensor_bounds)
