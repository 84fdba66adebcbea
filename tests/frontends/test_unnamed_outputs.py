"""An output left unnamed (an empty name) omits it, which only an optional output may be.

The ONNX checker admits an unnamed Split piece, and onnxruntime then crashes the process (a
segmentation fault) loading the file: lipcert refuses it first, in one line. The loads run
in a child process, so that a crash would fail the test rather than end the test run.
Look-alike: Dropout with its optional mask unnamed loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

LOAD = (
    "import sys, lipcert\n"
    "from lipcert.errors import LipcertError\n"
    "try:\n"
    "    print('bound', lipcert.load(sys.argv[1]).lipschitz_bound)\n"
    "except LipcertError as exc:\n"
    "    print('refused', exc)\n"
)


def _save(path: Path, nodes: list, first: str) -> Path:
    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), "W")
    sizes = numpy_helper.from_array(np.array([2, 2], np.int64), "sizes")
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", [first, "W"], ["y"])],
        "unnamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [weight, sizes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # the checker admits it
    onnx.save(model, path)
    return path


def _load_in_child(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return done.stdout.strip()


@pytest.mark.parametrize("outputs", [["a", ""], ["", "a"]])
def test_an_unnamed_split_piece_is_refused(tmp_path: Path, outputs: list[str]) -> None:
    split = helper.make_node("Split", ["x", "sizes"], outputs, axis=1, name="cut")
    text = _load_in_child(_save(tmp_path / "split.onnx", [split], "a"))
    index = outputs.index("")
    assert text.startswith("refused"), text
    assert f"node 'cut' (Split) leaves its output {index} unnamed" in text, text


def test_an_unnamed_optional_output_loads(tmp_path: Path) -> None:
    split = helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1)
    dropout = helper.make_node("Dropout", ["a"], ["d", ""])  # the mask is optional
    text = _load_in_child(_save(tmp_path / "dropout.onnx", [split, dropout], "d"))
    assert text.startswith("bound"), text
    assert abs(float(text.split()[1]) - 1.0) < 1e-9


def _if_model(path: Path, then_outputs: list[str]) -> Path:
    """y = x W + k, k from an If on a constant condition whose branch splits a constant."""

    def branch(name: str, outputs: list[str]) -> onnx.GraphProto:
        ones = numpy_helper.from_array(np.ones((1, 4), np.float32))
        halves = numpy_helper.from_array(np.array([2, 2], np.int64))
        nodes = [
            helper.make_node("Constant", [], ["c"], value=ones),
            helper.make_node("Constant", [], ["s"], value=halves),
            helper.make_node("Split", ["c", "s"], outputs, axis=1, name=f"{name}_cut"),
        ]
        out = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2])
        return helper.make_graph(nodes, name, [], [out])

    branches = {
        "then_branch": branch("then", then_outputs),
        "else_branch": branch("else", ["a", "b"]),
    }
    nodes = [
        helper.make_node("If", ["cond"], ["k"], name="if", **branches),
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "k"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unnamed_in_subgraph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [
            numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # the checker admits it
    onnx.save(model, path)
    return path


def test_an_unnamed_split_piece_in_a_subgraph_is_refused(tmp_path: Path) -> None:
    """The same Split in an If's branch: onnxruntime crashed the process (segmentation
    fault) loading it; the check reads subgraphs too."""
    text = _load_in_child(_if_model(tmp_path / "if.onnx", ["a", ""]))
    assert text.startswith("refused"), text
    assert "node 'then_cut' (Split) leaves its output 1 unnamed" in text, text


def test_a_subgraph_with_named_pieces_passes_the_check(tmp_path: Path) -> None:
    """Look-alike: both pieces named passes this check (no crash either); lipcert then
    refuses the If's constant on its own ground (no float64 error bound for an If)."""
    text = _load_in_child(_if_model(tmp_path / "if_named.onnx", ["a", "b"]))
    assert "unnamed" not in text, text
    assert text.startswith("refused node 'if' (If) computes a constant"), text
