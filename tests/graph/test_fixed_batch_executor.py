"""A model that fixes its batch may hold it in its shape constants (a Reshape that merges the
batch axis, as torch's dynamo exporter writes for Fourier layers): lipcert's executor runs such
a model in zero-padded chunks of its batch, for every caller (the exact path, the device path,
the attack's gradients). Ground truth: onnxruntime, one sample at a time."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lipcert
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadOptions


def _merging_model(batch: int) -> bytes:
    """x (B, 4) -> Reshape [2B, 2] (the batch merged with the features) -> MatMul W ->
    Reshape [B, 4] -> logits: each sample's logits depend on that sample only."""
    rng = np.random.default_rng(0)
    w = (np.linalg.qr(rng.normal(size=(2, 2)))[0] * 0.9).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "merged"], ["pairs"], name="merge"),
            helper.make_node("MatMul", ["pairs", "w"], ["mixed"], name="rotate"),
            helper.make_node("Reshape", ["mixed", "split"], ["logits"], name="split"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [
            numpy_helper.from_array(np.array([2 * batch, 2], dtype=np.int64), "merged"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([batch, 4], dtype=np.int64), "split"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _onnxruntime(data: bytes, x: np.ndarray, batch: int) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rows = []
    for start in range(0, len(x), batch):
        chunk = np.zeros((batch, 4), dtype=np.float32)
        part = x[start : start + batch]
        chunk[: len(part)] = part
        rows.append(session.run(None, {"x": chunk})[0][: len(part)])
    return np.concatenate(rows).astype(np.float64)


@pytest.mark.parametrize("batch", [1, 2])
def test_executor_runs_a_fixed_batch_model_in_chunks(tmp_path, batch: int) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.onnx"
    data = _merging_model(batch)
    path.write_bytes(data)
    model = lipcert.load(path)
    assert model.analysis.graph.batch_fixed
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    truth = _onnxruntime(data, x, batch)
    executor = GraphExecutor(model.analysis.graph, torch.float64)
    with torch.no_grad():
        ours = executor(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(5, -1)
    np.testing.assert_allclose(ours, truth, rtol=1e-6, atol=1e-6)
    # the exact path, and the attack (float32 gradients, float64 confirmation), on 5 samples
    labels = np.argmax(truth, axis=1)
    exact = lipcert.certify_dataset(model, (x, labels), [0.1], precision="float64")
    default = lipcert.certify_dataset(model, (x, labels), [0.1])
    np.testing.assert_array_equal(
        exact.result.certificates.prediction, default.result.certificates.prediction
    )
    report = lipcert.attack_certificates(model, (x, labels), steps=3, restarts=1)
    assert not report.result.violation.any()


def test_a_free_batch_model_is_not_chunked() -> None:
    """The look-alike: a model whose batch is free runs whole batches (batch_fixed False)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    graph_ir = load_from_proto(model, LoadOptions(), source="m", fmt="onnx").graph
    assert not graph_ir.batch_fixed
    executor = GraphExecutor(graph_ir, torch.float64)
    calls = []
    original = executor._forward
    executor._forward = lambda x: calls.append(len(x)) or original(x)  # type: ignore[method-assign]
    with torch.no_grad():
        executor(torch.ones(7, 4, dtype=torch.float64))
    assert calls == [7]
