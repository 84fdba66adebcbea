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
in float64, run by onnxruntime or, where it has no float64 kernel (Conv), by
`evaluate_float64`), bounds their distance to the exact values (`float64_errors`: relative
bounds, and absolute elementwise ones for sums of products), uses the float64 values in the
graph, and hands onnxruntime their float32 roundings as weights: the runtime's constants are
then within one float32 rounding of the graph's, which the rounding allowance covers
(lipcert.bounds.folded). Integer constants computed from inexact floats are refused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_flow import Flow, all_reads, node_label
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
        f"{node_label(origin)} computes a constant in "
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


# --- how far the float64 recomputation can be from the exact value -----------------------------

_U64 = 2.0**-53
_U32 = 2.0**-24
# Library functions (exp, pow) in float64: as the rounding analysis assumes, 64 ulps.
_LIBRARY = 64 * _U64
# Beyond this relative error the float64 value is not trusted: the constant is refused.
MAX_FOLDED_ERROR = 2.0**-30
# Ops that move or select values, and 1-Lipschitz elementwise maps: an absolute error
# bound E moves with the values.
_ABSOLUTE_MOVES = frozenset(
    {
        "Identity",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Concat",
        "Slice",
        "Gather",
        "Expand",
        "Tile",
        "Neg",
        "Abs",
        "Relu",
    }
)
# Ops whose relative error is their inputs' worst.
_MOVES = _ABSOLUTE_MOVES | frozenset(
    {
        "GatherElements",
        "GatherND",
        "Split",
        "Max",
        "Min",
        "Clip",
        "ReduceMax",
        "ReduceMin",
        "Dropout",
        "DepthToSpace",
        "SpaceToDepth",
        "Trilu",
        "Constant",
        "ConstantOfShape",
        "Shape",
        "Size",
        "Pad",
    }
)


class FoldingError(ValueError):
    """The float64 recomputation of a constant cannot be bounded (cancellation, an op
    without an error bound here)."""


def float64_errors(
    nodes: list[onnx.NodeProto],
    values: Mapping[str, np.ndarray],
    flow: Flow,
    outputs: list[str] | None = None,
    opset: int = 17,
) -> dict[str, float]:
    """A bound rho of |c64 - c| / |c| for every tensor of the constant `nodes` evaluated in
    float64 (`values`), by a forward error analysis from exact weights. Raises FoldingError,
    and where a tensor of `outputs` has rho above MAX_FOLDED_ERROR, unless it is known to a
    finite absolute error through a Sin or Cos (a value near a zero of the function: its
    rho, possibly inf, is returned, for the consumer to refuse where it needs it).

    Sums of products (Conv, Gemm, MatMul, Einsum) are bounded elementwise in absolute terms,
    |c64 - c| <= E, carried through the ops that keep such bounds (moves, Abs, Add, Mul,
    ReduceSum...): an entry that nearly cancels (large relative error, tiny absolute one)
    then weighs by its size in a later sum of absolute values (SLL's T). Every other op
    converts to the relative form: |c64 - c| <= E gives rho = max E / (|c64| - E)."""
    rho: dict[str, float] = {}
    absolute: dict[str, np.ndarray] = {}
    # tensors known absolutely through a sine or cosine: near its zeros, the relative error
    # of a well-known value is large, and is left to the consumer (see below)
    angular: set[str] = set()
    for node in nodes:
        if any(flow.is_data.get(name, False) for name in node.output if name):
            continue
        label = node_label(node)
        out = values.get(node.output[0]) if node.output else None
        try:
            bound = _absolute_error(node, values, rho, absolute, out, opset)
            if bound is not None:
                absolute[node.output[0]] = bound
                rho[node.output[0]] = _relative(bound, np.asarray(out, dtype=np.float64))
                if node.op_type in ("Sin", "Cos") or angular.intersection(node.input):
                    angular.add(node.output[0])
                continue
            errors = [rho.get(name, 0.0) for name in node.input if name]
            if any(n in angular and not rho[n] <= MAX_FOLDED_ERROR for n in node.input):
                raise ValueError(
                    "it reads a sine or cosine near 0, known in float64 to an absolute error "
                    "only, and its own error bound needs a relative one"
                )
            if not all(e <= MAX_FOLDED_ERROR for e in errors):
                raise ValueError("an input's float64 value may be far from its exact value")
            worst = max(errors, default=0.0)
            value = _node_error(node, values, errors, worst, out)
        except (FloatingPointError, ZeroDivisionError, ValueError, IndexError, KeyError) as exc:
            raise FoldingError(f"{label}: {exc}") from None
        if not value <= MAX_FOLDED_ERROR:
            raise FoldingError(
                f"{label}: its float64 value may be off by {value:.3g} of itself (cancellation)"
            )
        for name in node.output:
            if name:
                rho[name] = value
    for name in outputs or []:
        if name in angular and bool(np.all(np.isfinite(absolute[name]))):
            # A sine or cosine near 0: its rho (possibly inf) is recorded, and a rule whose
            # allowance needs rho <= MAX_FOLDED_ERROR refuses the node that reads it
            # (lipcert.bounds.folded); the Householder activation defines its function
            # from the graph's values and needs no relative bound (lipcert.graph.householder).
            continue
        if not rho.get(name, 0.0) <= MAX_FOLDED_ERROR:
            origin = next(n for n in nodes if name in n.output)
            raise FoldingError(
                f"{node_label(origin)}: its float64 value "
                f"may be off by {rho[name]:.3g} of itself (cancellation)"
            )
    return rho


def _relative(bound: np.ndarray, value: np.ndarray) -> float:
    """max E / (|v64| - E): a bound of |v64 - v| / |v| from |v64 - v| <= E (inf if E >= |v64|)."""
    bound = np.broadcast_to(bound, value.shape)
    magnitude = np.abs(value)
    if np.any((bound > 0) & (bound >= magnitude)):
        return float("inf")
    positive = bound > 0
    if not np.any(positive):
        return 0.0
    return float(np.max(bound[positive] / (magnitude[positive] - bound[positive]))) * (1 + 1e-12)


def _absolute_of(
    name: str,
    values: Mapping[str, np.ndarray],
    rho: Mapping[str, float],
    absolute: Mapping[str, np.ndarray],
) -> np.ndarray:
    """E with |v64 - v| <= E elementwise: carried, or rho |v| <= rho / (1 - rho) |v64|."""
    if name in absolute:
        return absolute[name]
    error = rho.get(name, 0.0)
    value = np.abs(np.asarray(values[name], dtype=np.float64))
    if error == 0:
        return np.zeros_like(value)
    if not error < 0.5:
        raise ValueError("an input's float64 value may be far from its exact value")
    return value * (error / (1 - error) * (1 + 1e-12))


def _absolute_error(
    node: onnx.NodeProto,
    values: Mapping[str, np.ndarray],
    rho: Mapping[str, float],
    absolute: Mapping[str, np.ndarray],
    out: np.ndarray | None,
    opset: int,
) -> np.ndarray | None:
    """E for the output of `node` where the absolute form applies, else None."""
    op = node.op_type
    if out is None or len(node.output) != 1 or node.domain not in ("", "ai.onnx"):
        return None
    names = [name for name in node.input if name]
    if np.asarray(out).dtype.kind != "f" or any(n not in values for n in names):
        return None
    out = np.asarray(out, dtype=np.float64)
    floats = [n for n in names if np.asarray(values[n]).dtype.kind == "f"]
    if op in ("Conv", "ConvTranspose", "Gemm", "Einsum", "MatMul"):
        errors = [rho.get(name, 0.0) for name in names]
        if not all(e <= MAX_FOLDED_ERROR for e in errors):
            raise ValueError("an input's float64 value may be far from its exact value")
        inputs = [np.asarray(values[name], dtype=np.float64) for name in names]
        if op == "Einsum":
            return _einsum_error(node, inputs, errors, out)
        if op == "MatMul":
            return _matmul_error(inputs, errors, out)
        return _dot_error(node, inputs, errors, out)
    if op in ("Sin", "Cos") and len(names) == 1 and floats == names:
        # 1-Lipschitz: the angle's error E_x moves the result by at most E_x. The library:
        # 64 ulps of the result and 64 ulps of 1 + |x| absolute (reducing the argument by a
        # float64 pi loses about |x| u: onnxruntime's float64 Cos of float32(pi/2) is 6e-17
        # off, 1.4e-9 of the result). Kept absolute: near a zero of the function the value
        # is known to about 1e-16, which is what a reflection's vector needs, though not to
        # a small fraction of itself.
        angle = np.abs(np.asarray(values[names[0]], dtype=np.float64))
        moved = _absolute_of(names[0], values, rho, absolute) * (1 + 1e-12)
        return moved + _LIBRARY * (1 + angle) + _LIBRARY * np.abs(out)
    if not any(name in absolute for name in floats):
        return None
    if op in _ABSOLUTE_MOVES:
        feeds = {
            name: (
                _absolute_of(name, values, rho, absolute)
                if name in floats
                else np.asarray(values[name])
            )
            for name in names
        }
        moved = np.abs(_run_single(node, feeds, opset))
        if moved.shape != out.shape:
            raise ValueError("the error bound does not move as the value does")
        return moved
    if op in ("Add", "Sub", "Mul") and len(floats) == 2:
        a, b = (np.asarray(values[n], dtype=np.float64) for n in floats)
        ea, eb = (_absolute_of(n, values, rho, absolute) for n in floats)
        # |a64 b64 - a b| <= |a64| E_b + |b| E_a, |b| <= |b64| + E_b; then one rounding
        bound = np.abs(a) * eb + (np.abs(b) + eb) * ea if op == "Mul" else ea + eb
        return np.broadcast_to(bound + _U64 * np.abs(out) * (1 + 1e-12), out.shape)
    if op in ("ReduceSum", "ReduceMean") and floats == names[:1]:
        data = np.asarray(values[names[0]], dtype=np.float64)
        error = np.broadcast_to(_absolute_of(names[0], values, rho, absolute), data.shape)
        axes_attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        axes = [int(a) for a in values[names[1]].reshape(-1)] if len(names) > 1 else axes_attr
        keep = bool(next((a.i for a in node.attribute if a.name == "keepdims"), 1))
        noop = next((a.i for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
        if not axes:
            if noop:
                return error.copy()
            axes = list(range(data.ndim))
        axis = tuple(a % data.ndim for a in axes)
        n = int(np.prod([data.shape[a] for a in axis])) if axis else 1
        bound = np.sum(error, axis=axis, keepdims=keep) + _gamma(n) * np.sum(
            np.abs(data) + error, axis=axis, keepdims=keep
        )
        if op == "ReduceMean":
            bound = bound / n + _U64 * np.abs(out)
        bound = np.asarray(bound * (1 + 1e-12))
        if bound.shape != out.shape:
            raise ValueError("reduced error of an unexpected shape")
        return bound
    return None


def _run_single(node: onnx.NodeProto, feeds: Mapping[str, np.ndarray], opset: int) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), None
        )
        for name, a in feeds.items()
    ]
    graph = onnx.helper.make_graph(
        [node], "single", inputs, [onnx.helper.make_value_info(node.output[0], onnx.TypeProto())]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        (result,) = ReferenceEvaluator(model).run([node.output[0]], dict(feeds))
    except Exception as exc:  # the evaluator's own errors: no bound
        raise ValueError(f"its error bound cannot be moved ({type(exc).__name__})") from None
    return np.asarray(result, dtype=np.float64)


def _gamma(n: int) -> float:
    return n * _U64 / (1 - n * _U64) * (1 + 1e-9)


def _node_error(
    node: onnx.NodeProto,
    values: Mapping[str, np.ndarray],
    errors: list[float],
    worst: float,
    out: np.ndarray | None,
) -> float:
    op = node.op_type
    inputs = [np.asarray(values[name], dtype=np.float64) for name in node.input if name]
    floats = [a for a in inputs if a.dtype.kind == "f"]
    if out is None:
        raise ValueError("no value")
    out = np.asarray(out, dtype=np.float64)
    if np.asarray(values[node.output[0]]).dtype.kind in "iub" or op in (
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "ArgMax",
        "ArgMin",
        "NonZero",
        "Not",
        "And",
        "Or",
        "Xor",
        "IsNaN",
        "IsInf",
    ):
        if worst > 0:
            raise ValueError("a discontinuous function of an inexact value")
        return 0.0
    if op == "Where":
        return max(errors[1:], default=0.0) if errors[0] == 0 else _raise("inexact condition")
    if op in _MOVES:
        return worst
    if op == "Cast" or op == "CastLike":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        rounds = to == onnx.TensorProto.FLOAT or (
            op == "CastLike" and inputs[1].dtype == np.float32
        )
        # composed: worst + u32 alone drops worst * u32 (nothing else here has slack for it)
        return _compose(worst, _U32) if rounds else worst
    # an operation whose float64 result is checked to be exact adds no rounding
    u = _U64
    if op in _CHECKED_OPS and all(np.asarray(values[n]).dtype.kind == "f" for n in node.input):
        u = 0.0 if _checked(op, floats, out) else _U64
    if op == "Mul":
        return _compose(errors[0], errors[1], u)
    if op == "Div":
        return _compose(errors[0], u, _inverse(errors[1]))
    if op == "Reciprocal":
        return _compose(u, _inverse(errors[0]))
    if op == "Sqrt":
        if not errors[0] <= 1:
            raise ValueError(
                "its input's relative error exceeds 1 (the exact input may be negative), so "
                "its square root is not bounded relative to itself"
            )
        # |sqrt(1 + d) - 1| <= 1 - sqrt(1 - e) = e / (1 + sqrt(1 - e)) for |d| <= e
        return _compose(errors[0] / (1 + float(np.sqrt(1 - errors[0]))), u)
    if op in ("Add", "Sub"):
        magnitude = np.abs(floats[0]) + np.abs(floats[1])
        return _amplified(magnitude, out) * worst * (1 + u) + u if worst else u
    if op in ("Sum", "Mean"):
        magnitude = np.sum(np.broadcast_arrays(*[np.abs(a) for a in floats]), axis=0)
        return _amplified(magnitude, out) * (worst + _gamma(max(len(floats) - 1, 1))) + _U64
    if op in ("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceL1"):
        return _reduce_error(node, inputs, worst, out)
    if op == "Exp":
        spread = float(np.max(np.abs(inputs[0]), initial=0.0)) * errors[0]
        return float(np.expm1(spread * 1.01)) + _LIBRARY
    if op == "Pow":
        if errors[1] != 0 or inputs[1].size != 1:
            raise ValueError("an inexact or non-scalar exponent")
        p = abs(float(inputs[1].reshape(())))
        return max((1 + errors[0]) ** p, (1 - errors[0]) ** -p) * (1 + 1e-9) - 1 + _LIBRARY
    raise ValueError("no float64 error bound for this op")


def _compose(*errors: float) -> float:
    """An upper bound of prod(1 + e) - 1 for relative errors e >= 0. Not (1 + a)(1 + b) - 1
    in float64: 1 + 2^-53 rounds to 1, and a float64 division's own rounding was lost (rho 0
    for a / b, so a cancellation after it was charged nothing)."""
    if not all(e >= 0 for e in errors):
        raise ValueError("a negative relative error")
    total = float(np.expm1(sum(float(np.log1p(e)) for e in errors)))
    return total * (1 + 1e-12) if total < np.inf else total


def _inverse(error: float) -> float:
    """d with 1 / (1 - e) = 1 + d, rounded up: e / (1 - e)."""
    if not 0 <= error < 1:
        raise ValueError("a relative error of 1 or more")
    return error / (1 - error) * (1 + 1e-12)


def _dot_error(
    node: onnx.NodeProto, inputs: list[np.ndarray], errors: list[float], out: np.ndarray
) -> np.ndarray:
    """Conv, ConvTranspose, Gemm: every output is a sum of at most n products and a bias.

    In float64 (any order of summation, FMA or not), a sum of n products and m more terms is
    within gamma(n + m) of the sum of the absolute values of its terms (Higham, 3.1 and
    3.5); with inputs within relative errors e_x, e_w, e_b of the exact ones, each term is
    within t = max((1 + e_x)(1 + e_w) - 1, e_b) of its exact value. So
    |out64 - out| <= (t + gamma(n + m) (1 + t)) * M, M = op(|x|, |w|, |b|): the absolute
    bound E returned (M from the float64 inputs, (1 + t) larger at most).
    """
    op = node.op_type
    attributes = _conv_attributes(node)
    product = _compose(errors[0], errors[1])
    t = max([product, *errors[2:3]])
    if op == "Gemm":
        a, b = inputs[0], inputs[1]
        a = a.T if attributes.get("transA", 0) else a
        b = b.T if attributes.get("transB", 0) else b
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError("Gemm of operands that are not matrices")
        alpha = abs(float(attributes.get("alpha", 1.0)))  # type: ignore[arg-type]
        beta = abs(float(attributes.get("beta", 1.0)))  # type: ignore[arg-type]
        magnitude = alpha * (np.abs(a) @ np.abs(b))
        n = a.shape[1] + (alpha != 1.0)
        if len(inputs) > 2:
            magnitude = magnitude + beta * np.abs(inputs[2])
            n += 1 + (beta != 1.0)
    else:
        x, w = inputs[0], inputs[1]
        bias = np.abs(inputs[2]) if len(inputs) > 2 else None
        try:
            magnitude = conv_float64(op, attributes, np.abs(x), np.abs(w), bias)
        except (RuntimeError, TypeError) as exc:  # torch's shape errors
            raise ValueError(f"no convolution of these shapes ({type(exc).__name__})") from None
        group = int(attributes.get("group", 1))  # type: ignore[call-overload]
        taps = int(np.prod(w.shape[2:]))
        # Conv: W is (C_out, C_in / group, k...); ConvTranspose: W is (C_in, C_out / group, k...)
        n = (w.shape[1] if op == "Conv" else w.shape[0] // group) * taps + (bias is not None)
    if np.any((magnitude > 0) & (magnitude < _TINY)):
        raise ValueError("sums of products near underflow")
    if magnitude.shape != out.shape:
        raise ValueError(f"magnitude of shape {magnitude.shape} for an output of {out.shape}")
    if op != "Gemm":
        _agrees_with_float32_runtime(node, inputs, out, magnitude, n)
    # M is computed in float64 (relative error gamma(n)) from the float64 inputs, within t of
    # the exact ones: |terms| <= (1 + t) M64 (1 + gamma(n)); 2^-20 covers the latter
    return magnitude * ((t + _gamma(n) * (1 + t)) * (1 + t) * (1 + 2.0**-20))


def _einsum_error(
    node: onnx.NodeProto, inputs: list[np.ndarray], errors: list[float], out: np.ndarray
) -> np.ndarray:
    """Einsum of k operands: each output is a sum of products of k factors over the n index
    values of the summed letters. However it is evaluated by multiplications and additions
    (pairwise contractions in any order, matrix products, reductions first), each product
    term meets at most k - 1 multiplications and n - 1 additions on its way, whose roundings
    multiply it by factors (1 + d), |d| <= u64 (distributivity: a rounding applied to a
    partial sum applies to each of its terms): the result is within gamma(k - 1 + n) of the
    sum of the absolute terms M = einsum(|a|, |b|...), and with inputs off by e_i, each term
    is off by t = prod(1 + e_i) - 1 of its exact value."""
    equation = next(
        (onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "equation"), b""
    )
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    equation = equation.replace(" ", "")
    if "..." in equation or "->" not in equation:
        raise ValueError("Einsum without an explicit output or with an ellipsis")
    left, right = equation.split("->")
    operands = left.split(",")
    if len(operands) != len(inputs) or any(
        len(term) != a.ndim for term, a in zip(operands, inputs, strict=True)
    ):
        raise ValueError("Einsum operands that do not match the equation")
    sizes: dict[str, int] = {}
    for term, a in zip(operands, inputs, strict=True):
        for letter, size in zip(term, a.shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    n = int(np.prod([sizes[c] for c in sizes if c not in right], dtype=np.float64))
    t = float(np.prod([1 + e for e in errors])) * (1 + 1e-12) - 1
    magnitude = np.asarray(
        np.einsum(equation, *[np.abs(a) for a in inputs], optimize=True), dtype=np.float64
    )
    if np.any((magnitude > 0) & (magnitude < _TINY)):
        raise ValueError("sums of products near underflow")
    if magnitude.shape != out.shape:
        raise ValueError(f"magnitude of shape {magnitude.shape} for an output of {out.shape}")
    m = len(inputs) - 1 + max(n - 1, 0)
    return magnitude * ((t + _gamma(m) * (1 + t)) * (1 + t) * (1 + 2.0**-20))


def _matmul_error(inputs: list[np.ndarray], errors: list[float], out: np.ndarray) -> np.ndarray:
    """MatMul: each output a sum of k products, as in `_dot_error`."""
    a, b = inputs
    magnitude = np.asarray(np.matmul(np.abs(a), np.abs(b)), dtype=np.float64)
    if magnitude.shape != out.shape:
        raise ValueError(f"magnitude of shape {magnitude.shape} for an output of {out.shape}")
    if np.any((magnitude > 0) & (magnitude < _TINY)):
        raise ValueError("sums of products near underflow")
    k = a.shape[-1] if a.ndim else 1
    t = _compose(errors[0], errors[1])
    return magnitude * ((t + _gamma(k) * (1 + t)) * (1 + t) * (1 + 2.0**-20))


def _agrees_with_float32_runtime(
    node: onnx.NodeProto, inputs: list[np.ndarray], out: np.ndarray, magnitude: np.ndarray, n: int
) -> None:
    """An independent check of the float64 convolution (its reading of pads, strides, groups):
    onnxruntime's float32 kernel on the float32 roundings of the inputs. Both are within
    (n + 3) u32 M of the exact value on the float64 inputs (input roundings, then a sum of n
    terms); a larger difference means the two disagree on what the op computes."""
    import onnxruntime as ort

    names = [f"in{i}" for i in range(len(inputs))]
    single = onnx.helper.make_node(node.op_type, names, ["out"], name="check")
    single.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph(
        [single],
        "check",
        [
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(a.shape))
            for name, a in zip(names, inputs, strict=True)
        ],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    feeds = {name: a.astype(np.float32) for name, a in zip(names, inputs, strict=True)}
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        (result,) = session.run(["out"], feeds)
    except Exception as exc:
        raise ValueError(f"onnxruntime cannot check it ({type(exc).__name__})") from None
    result = np.asarray(result, dtype=np.float64)
    if result.shape != out.shape or np.any(
        np.abs(result - out) > 4 * (n + 3) * _U32 * magnitude + 2.0**-140
    ):
        raise ValueError("its float64 evaluation disagrees with onnxruntime's float32 one")


def _raise(why: str) -> float:
    raise ValueError(why)


def _amplified(magnitude: np.ndarray, out: np.ndarray) -> float:
    """max over elements of sum |terms| / |result|: how much a sum amplifies relative errors."""
    magnitude = np.broadcast_to(magnitude, out.shape)
    if np.any((out == 0) & (magnitude > 0)):
        raise ValueError("terms cancel to zero")
    nonzero = out != 0
    if not np.any(nonzero):
        return 1.0
    return max(1.0, float(np.max(magnitude[nonzero] / np.abs(out[nonzero]))) * (1 + 1e-9))


def _reduce_error(
    node: onnx.NodeProto, inputs: list[np.ndarray], worst: float, out: np.ndarray
) -> float:
    op = node.op_type
    data = inputs[0]
    axes_attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    axes = [int(a) for a in inputs[1].reshape(-1)] if len(inputs) > 1 else axes_attr
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    noop = next((a.i for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
    if not axes:
        if noop:
            return worst
        axes = list(range(data.ndim))
    axis = tuple(a % data.ndim for a in axes)
    n = int(np.prod([data.shape[a] for a in axis])) if axis else 1
    if op in ("ReduceSumSquare", "ReduceL2"):
        squares = _compose(worst, worst, _U64, _gamma(n))
        if op == "ReduceSumSquare":
            return squares
        return _compose(squares / (1 + float(np.sqrt(1 - squares))), _U64)
    magnitude = np.sum(np.abs(data), axis=axis, keepdims=bool(keep))
    total = np.sum(data, axis=axis, keepdims=bool(keep))
    if op == "ReduceL1":
        return _compose(worst, _gamma(n))
    rel = _amplified(magnitude, np.asarray(total)) * (worst + _gamma(n))
    return rel + (_U64 if op == "ReduceMean" else 0.0)


# --- the float64 evaluator when onnxruntime has no float64 kernel -------------------------------


def evaluate_float64(
    model64: onnx.ModelProto, feeds: Mapping[str, np.ndarray], outputs: list[str]
) -> list[np.ndarray]:
    """The outputs of a float64 model (`to_float64`) by onnx's numpy reference evaluator, with
    Conv and ConvTranspose by torch's float64 kernels (onnx's own ConvTranspose mishandles
    groups). Every float op runs in plain float64 arithmetic (numpy, BLAS, torch's im2col and
    GEMM; no FFT or Winograd in float64): the error analysis of `float64_errors` holds for it
    as for onnxruntime."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(
        model64, new_ops=[_torch_conv_class("Conv"), _torch_conv_class("ConvTranspose")]
    )
    results = evaluator.run(outputs, dict(feeds))
    return [np.asarray(r) for r in results]


def _conv_attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def conv_float64(
    op: str,
    attributes: Mapping[str, object],
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
) -> np.ndarray:
    """ONNX Conv / ConvTranspose in float64 with torch (explicit pads only for
    ConvTranspose). Raises ValueError for what it does not implement."""
    import torch
    import torch.nn.functional as F

    spatial = x.ndim - 2
    if spatial not in (1, 2, 3) or w.ndim != x.ndim:
        raise ValueError(f"{op} of rank {x.ndim}")
    group = int(attributes.get("group", 1))  # type: ignore[call-overload]
    strides = [int(s) for s in attributes.get("strides", None) or [1] * spatial]  # type: ignore[attr-defined]
    dilations = [int(s) for s in attributes.get("dilations", None) or [1] * spatial]  # type: ignore[attr-defined]
    pads = [int(p) for p in attributes.get("pads", None) or [0] * (2 * spatial)]  # type: ignore[attr-defined]
    auto_pad = attributes.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    kernel = list(w.shape[2:])
    tx = torch.from_numpy(np.array(x, dtype=np.float64))
    tw = torch.from_numpy(np.array(w, dtype=np.float64))
    tb = None if b is None else torch.from_numpy(np.array(b, dtype=np.float64))
    if op == "Conv":
        if auto_pad == "VALID":
            pads = [0] * (2 * spatial)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * spatial)
            for i in range(spatial):
                size = x.shape[2 + i]
                target = (size + strides[i] - 1) // strides[i]
                extent = (kernel[i] - 1) * dilations[i] + 1
                needed = max(0, (target - 1) * strides[i] + extent - size)
                head = (needed + 1) // 2 if auto_pad == "SAME_LOWER" else needed // 2
                pads[i], pads[spatial + i] = head, needed - head
        elif auto_pad != "NOTSET":
            raise ValueError(f"auto_pad {auto_pad}")
        # F.pad takes the last axis first
        padding = [p for i in reversed(range(spatial)) for p in (pads[i], pads[spatial + i])]
        padded = F.pad(tx, padding) if any(padding) else tx
        convolve = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
        out = convolve(padded, tw, tb, stride=strides, dilation=dilations, groups=group)
        return out.numpy()
    if auto_pad not in ("NOTSET", "") or attributes.get("output_shape"):
        raise ValueError("ConvTranspose with auto_pad or output_shape")
    if pads[:spatial] != pads[spatial:]:
        raise ValueError("ConvTranspose with asymmetric pads")
    extra = [int(p) for p in attributes.get("output_padding", None) or [0] * spatial]  # type: ignore[attr-defined]
    transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    out = transpose(
        tx,
        tw,
        tb,
        stride=strides,
        padding=pads[:spatial],
        output_padding=extra,
        groups=group,
        dilation=dilations,
    )
    return out.numpy()


def _torch_conv_class(op: str) -> type:
    from onnx.reference.op_run import OpRun

    def _run(
        self: OpRun, X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, **_: object
    ) -> tuple[np.ndarray]:
        attributes = _conv_attributes(self.onnx_node)
        return (conv_float64(op, attributes, X, W, B).astype(X.dtype),)

    return type(op, (OpRun,), {"_run": _run, "op_domain": ""})
