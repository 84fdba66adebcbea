"""The default evaluator adds tensors to the file's model (sums of squares, their shapes and
axes as initializers): under a name the file gives one of its own tensors, onnxruntime took
lipcert's value (the last of two initializers of one name) for the file's, and certify ran
another function than the file's. Ground truth: onnxruntime on the file itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcert


def _gather_model(index_name: str) -> onnx.ModelProto:
    """y = x[:, [0, 1]] (x @ I, then a Gather whose indices are named `index_name`)."""
    initializers = [
        numpy_helper.from_array(np.eye(3, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([0, 1], dtype=np.int64), index_name),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul"),
        helper.make_node("Gather", ["h", index_name], ["y"], axis=1, name="gather"),
    ]
    graph = helper.make_graph(
        nodes,
        "reserved",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize(
    "index_name",
    ["lipcert_sum_of_squares_flat_shape", "lipcert_sum_of_squares_axes1", "indices"],
)
def test_certify_runs_the_file_whatever_its_tensor_names(tmp_path: Path, index_name: str) -> None:
    model = _gather_model(index_name)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    # The first sample (the only one checked against lipcert's executor) reads x[:, 1] and
    # x[:, 2] alike; the second does not: lipcert's [0, -1] made its logits (0, -5), class 0.
    x = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, -5.0]], dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    truth = np.argmax(session.run(None, {"x": x})[0], axis=1)
    batch = lipcert.load(path).certify(x, truth)
    assert batch.prediction.tolist() == truth.tolist() == [1, 1]
