"""Constants computed inside the model: exact, or recomputed in float64.

A certificate is about the function the file describes in exact arithmetic. A constant that
the model computes from its weights (c = (a + b) - a, W / ||W|| of a weight
parametrization, Exp(w)...) has the exact value of that computation there; the probe run,
like onnxruntime at inference, gives its float32 value, which can differ in every digit
(cancellation). `inexact_constants` finds the constants read by the data path whose probe
value is not provably exact:
- weights and Constant nodes, and integer arithmetic, are exact;
- ops that move, select or compare values (Reshape, Concat, Gather, Max, Where, Cast...) keep
  exact values exact (a Cast to float32 *is* the rounding the file asks for);
- Add, Sub, Mul, Div, Sqrt and Reciprocal of exact floats are checked element by element
  with error-free transformations in float64: the probe's result must be the exact result;
- anything else computed in floating point (Exp, MatMul, ReduceL2, Pow, a result that was
  rounded...) is not.
The front-end recomputes those in float64 (`to_float64`: the same subgraph with every float
in float64), uses the float64 values in the graph, and hands onnxruntime their float32
roundings as weights: the runtime's constants are then within one float32 rounding of the
graph's, which the rounding allowance covers (lipcert.bounds.folded). Integer constants
computed from inexact floats are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_flow import Flow, all_reads
from lipcert.graph import Graph

# Ops whose outputs are exact whenever their inputs are.
_EXACT_OPS = frozenset(
    {
        "Abs",
        "And",
        "ArgMax",
        "ArgMin",
        "Cast",
        "CastLike",
        "Ceil",
        "Clip",
        "Compress",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "DepthToSpace",
        "Dropout",
        "Equal",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Greater",
        "GreaterOrEqual",
        "Identity",
        "IsInf",
        "IsNaN",
        "Less",
        "LessOrEqual",
        "Max",
        "Min",
        "Neg",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ReduceMax",
        "ReduceMin",
        "Relu",
        "Reshape",
        "Round",
        "Shape",
        "Sign",
        "Size",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unique",
        "Unsqueeze",
        "Where",
        "Xor",
    }
)
# Float ops whose result is checked to be exact, element by element.
_CHECKED_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal"})
# Dekker's splitter for float64: a = hi + lo with hi, lo of 26 bits.
_SPLITTER = 134217729.0
# Beyond this magnitude the split could overflow: such values are not checked.
_SPLIT_LIMIT = 2.0**995
_TINY = 2.0**-960


def inexact_constants(
    graph: Graph,
    nodes: list[onnx.NodeProto],
    flow: Flow,
    values: Mapping[str, np.ndarray],
    initializers: Mapping[str, np.ndarray],
) -> dict[str, onnx.NodeProto]:
    """The constants read by nodes of `graph` whose probe value may not be exact, each with
    the first node on its way that computed something inexactly."""
    origin: dict[str, onnx.NodeProto] = {}  # inexact tensor -> the first inexact node
    for node in nodes:
        if any(flow.is_data.get(name, False) for name in node.output if name):
            continue
        reads = all_reads(node)
        tainted = [origin[name] for name in reads if name in origin]
        if tainted:
            cause: onnx.NodeProto | None = tainted[0]
        elif _exact(node, values, initializers):
            cause = None
        else:
            cause = node
        if cause is not None:
            for name in node.output:
                if name:
                    origin[name] = cause
    read = {name for node in graph.nodes for name in node.inputs if graph.is_constant(name)}
    return {name: origin[name] for name in sorted(read) if name in origin}


def refuse_inexact(name: str, origin: onnx.NodeProto, graph: Graph, why: str) -> None:
    consumer = next(node for node in graph.nodes if name in node.inputs)
    raise UnsupportedOpError(
        f"node {origin.name or origin.op_type!r} ({origin.op_type}) computes a constant in "
        f"floating point ({name!r}, read by node {consumer.name!r}) whose float32 value is "
        f"not exact, and {why}; fold such constants into the weights at export"
    )


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float32 tensor, type, Cast and constant in float64."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    float32, float64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE

    def tensor64(t: onnx.TensorProto) -> onnx.TensorProto:
        value = onnx.numpy_helper.to_array(t).astype(np.float64)
        return onnx.numpy_helper.from_array(value, t.name)

    def convert(graph: onnx.GraphProto) -> None:
        for index, init in enumerate(graph.initializer):
            if init.data_type == float32:
                graph.initializer[index].CopyFrom(tensor64(init))
        del graph.value_info[:]
        for info in list(graph.input) + list(graph.output):
            if info.type.tensor_type.elem_type == float32:
                info.type.tensor_type.elem_type = float64
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == float32:
                    attribute.i = float64
                if attribute.HasField("t") and attribute.t.data_type == float32:
                    attribute.t.CopyFrom(tensor64(attribute.t))
                if attribute.HasField("g"):
                    convert(attribute.g)
                for sub in attribute.graphs:
                    convert(sub)

    convert(copy.graph)
    return copy


def _exact(
    node: onnx.NodeProto,
    values: Mapping[str, np.ndarray],
    initializers: Mapping[str, np.ndarray],
) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    inputs = [_value(name, values, initializers) for name in node.input]
    outputs = [values.get(name) for name in node.output if name]
    arrays = [a for a in inputs + outputs if a is not None]
    if node.op_type in _EXACT_OPS:
        return True
    if arrays and all(np.asarray(a).dtype.kind in "iub" for a in arrays):
        return True  # integer arithmetic is exact (and wraps as the runtime does)
    if node.op_type not in _CHECKED_OPS or any(a is None for a in inputs + outputs):
        return False
    try:
        return _checked(node.op_type, inputs, outputs[0])  # type: ignore[arg-type]
    except (ValueError, FloatingPointError):
        return False


def _value(
    name: str, values: Mapping[str, np.ndarray], initializers: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    if not name:
        return None
    if name in values:
        return np.asarray(values[name])
    if name in initializers:
        return np.asarray(initializers[name])
    return None


def _checked(op: str, inputs: list[np.ndarray], result: np.ndarray) -> bool:
    """Whether `result` (the runtime's) is the exact result of op on the inputs."""
    if any(a.dtype.kind != "f" for a in [*inputs, result]):
        return False
    operands = [a.astype(np.float64) for a in inputs]
    r = np.asarray(result, dtype=np.float64)
    if not all(np.all(np.isfinite(a)) for a in [*operands, r]):
        return False
    with np.errstate(all="raise"):
        if op in ("Add", "Sub"):
            a, b = np.broadcast_arrays(*operands)
            b = -b if op == "Sub" else b
            s, e = _two_sum(a, b)
            return bool(np.all(e == 0) and np.array_equal(np.broadcast_to(r, s.shape), s))
        if op == "Mul":
            a, b = np.broadcast_arrays(*operands)
            return _product_is(a, b, np.broadcast_to(r, a.shape))
        if op == "Div":
            a, b = np.broadcast_arrays(*operands)
            return bool(np.all(b != 0)) and _product_is(np.broadcast_to(r, a.shape), b, a)
        if op == "Sqrt":
            (a,) = operands
            return bool(np.all(r >= 0)) and _product_is(r, r, a)
        if op == "Reciprocal":
            (a,) = operands
            return bool(np.all(a != 0)) and _product_is(r, a, np.ones_like(a))
    return False


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s = fl(a + b) and the exact error e = a + b - s (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _product_is(a: np.ndarray, b: np.ndarray, target: np.ndarray) -> bool:
    """Whether a * b == target exactly (Dekker's two-product, no overflow or underflow)."""
    if np.any(np.abs(a) > _SPLIT_LIMIT) or np.any(np.abs(b) > _SPLIT_LIMIT):
        return False
    p = a * b
    nonzero = (a != 0) & (b != 0)
    if np.any(nonzero & (np.abs(p) < _TINY)):
        return False  # products near underflow are not checked
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return bool(np.all(e == 0) and np.array_equal(p, target))


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi
