"""Small ONNX models built by hand, for the front-end tests.

`conv_net` is Conv 3x3 (zero padding 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm, so
it runs at any spatial size: the input's batch and spatial axes can be left symbolic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NUM_CLASSES = 3
WIDTH = 4

Dims = Sequence[int | str]


def conv_net(
    input_dims: Dims = (1, 1, 8, 8),
    *,
    output_activation: str | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """The conv net on an input declared with `input_dims` (ints, or names for symbolic axes)."""
    rng = np.random.default_rng(seed)
    channels = int(input_dims[1])
    initializers = [
        numpy_helper.from_array(
            rng.standard_normal((WIDTH, channels, 3, 3)).astype(np.float32), "w"
        ),
        numpy_helper.from_array(rng.standard_normal((NUM_CLASSES, WIDTH)).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.standard_normal(NUM_CLASSES).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "b"], ["logits"], transB=1, name="head"),
    ]
    output = "logits"
    if output_activation is not None:
        nodes.append(helper.make_node(output_activation, ["logits"], ["probs"], axis=1, name="act"))
        output = "probs"
    return make_model(nodes, initializers, input_dims, [input_dims[0], NUM_CLASSES], output)


def make_model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    input_dims: Dims | None,
    output_dims: Dims,
    output: str = "logits",
) -> onnx.ModelProto:
    """A model with one float input 'x' and one float output."""
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_dims)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what the installed onnxruntime reads
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """The first output of an ONNX model on x, by onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
