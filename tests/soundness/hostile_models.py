"""Small hostile ONNX models built by hand, and the checks that certificates on them are sound.

Each model comes with a point x and, where one exists, a point x' near it whose decision
differs: computed by onnxruntime on the model file itself (or, where the question is what
the file means in exact arithmetic, on the same file with every tensor in float64). A
certificate at x whose radius reaches x' would be wrong; lipcert must refuse the model or
certify a radius below ||x' - x||.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.certify.radii import certify_logits, choose_method
from lipcert.errors import LipcertError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadedModel, LoadOptions
from lipcert.runtime import OnnxRuntimeEvaluator

OPSET = 17
Dims = Sequence[int | str]


def make(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    input_dims: Dims,
    output_dims: Dims | None,
    *,
    output: str = "logits",
    opset: int = OPSET,
    elem_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A model with one input 'x' and one output, checked by onnx."""
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", elem_type, input_dims)],
        [helper.make_tensor_value_info(output, elem_type, output_dims)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tensor(name: str, value: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of the model file on x, by onnxruntime, one row per sample."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    rows = [session.run([output], {name: x[i : i + 1]})[0] for i in range(len(x))]
    return np.concatenate([np.asarray(r, np.float64).reshape(1, -1) for r in rows])


def decision(outputs: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """lipcert's reading of an output: argmax, or for one value 'class 1 when > threshold'."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > threshold).astype(np.int64)
    return np.argmax(outputs, axis=1)


def load(model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    return load_from_proto(model, LoadOptions(input_shape=input_shape), source="m.onnx", fmt="onnx")


def certify(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, radii) of lipcert's float32 path on x."""
    loaded = load(model)
    analysis = analyse(loaded.graph)
    spec = analysis.spec
    evaluator = OnnxRuntimeEvaluator(loaded, threads=1, spec=spec)
    logits = evaluator.logits(np.asarray(x, dtype=np.float32)).astype(np.float64)
    norms = np.linalg.norm(np.asarray(x, dtype=np.float64).reshape(len(x), -1), axis=1)
    certificates = certify_logits(
        logits, spec, choose_method(spec, "auto"), spec.fp_allowance(norms)
    )
    return certificates.prediction, certificates.radius


def assert_refused_or_sound(
    model: onnx.ModelProto,
    x: np.ndarray,
    x_other: np.ndarray,
    true_decision: np.ndarray,
    refusal: str | None,
) -> None:
    """The counterexample is genuine, and lipcert refuses (with `refusal`) or stays below it.

    `true_decision` holds the model's decisions at x and x_other (by onnxruntime on the file);
    x_other may equal x, when lipcert's own prediction at x is the wrong one.
    """
    distance = float(np.linalg.norm(np.asarray(x_other, np.float64) - np.asarray(x, np.float64)))
    try:
        predictions, radii = certify(model, x[None])
    except LipcertError as exc:
        assert refusal is not None and re.search(refusal, str(exc)), str(exc)
        assert "\n" not in str(exc)
        return
    if predictions[0] != true_decision[0]:
        raise AssertionError(
            f"lipcert predicts {predictions[0]} with radius {radii[0]} where the model decides "
            f"{true_decision[0]}"
        )
    if true_decision[1] != true_decision[0]:
        assert radii[0] <= distance, (
            f"radius {radii[0]} reaches a point at {distance} whose decision differs"
        )
    if refusal is not None:
        raise AssertionError(f"expected a refusal matching {refusal!r}; got radius {radii[0]}")


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float tensor, type and Cast in float64 (its exact meaning,
    up to float64 rounding, for models whose constants are computed from float32 weights)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)

    def convert_graph(graph: onnx.GraphProto) -> None:
        for index, init in enumerate(graph.initializer):
            if init.data_type == TensorProto.FLOAT:
                value = numpy_helper.to_array(init).astype(np.float64)
                graph.initializer[index].CopyFrom(numpy_helper.from_array(value, init.name))
        for info in list(graph.input) + list(graph.output) + list(graph.value_info):
            if info.type.tensor_type.elem_type == TensorProto.FLOAT:
                info.type.tensor_type.elem_type = TensorProto.DOUBLE
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.DOUBLE
                if attribute.HasField("t") and attribute.t.data_type == TensorProto.FLOAT:
                    value = numpy_helper.to_array(attribute.t).astype(np.float64)
                    attribute.t.CopyFrom(numpy_helper.from_array(value))
                if attribute.HasField("g"):
                    convert_graph(attribute.g)

    convert_graph(copy.graph)
    return copy
