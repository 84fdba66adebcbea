"""Does onnxruntime keep the samples of a batch apart, tensor by tensor?

Bounds are computed on the function of one sample; a model whose batch is left open is run
on batches of many. `OnnxRuntimeEvaluator` compares the logits of the first few samples of
the first batch with their one-sample logits, which catches a mixing only where those
samples happen to show it: a Reshape to (1, 1, -1) (constant target) followed by a
MaxPool whose windows straddle two samples gave the fifth sample of a dataset its
neighbour's value (and a certified class that its own logits do not have) while the first
four agreed with their one-sample runs.

This check reads shapes instead of values: onnxruntime runs the model at batch 1 and at
batch 2, every tensor computed from the input kept. A sample's data stays in its own
row-major block as long as each such tensor has, at batch 2, the shape it has at batch 1
with the leading axis doubled (the batch axis, possibly merged with the axes after it, as
Fourier layers do: (N C, H, W)). A tensor whose leading axis does not scale so, or whose
other axes change, holds the batch elsewhere (a transpose or reshape moved it among the
data axes), or lost it (a reduction over it): the samples may mix and are then run one at
a time. Ops that reorder or copy along a scaled leading axis keep its size (a Tile along
the batch axis, a reversing Slice) and are refused by the rules.

Shapes at batch 1 and 2 say nothing of other batch sizes where the batch size itself
reaches the values: Shape(x)[0] computed into 1 + 10 relu(N - 2) relu(4 - N) and
multiplied into the data is 1 at batches 1, 2 and 4, 11 at batch 3 (a last batch of 3
certified three samples with a class their own logits do not have). So the batch size N, the
leading entry of a Shape of a data tensor (or its Size), may reach a node only through
element moves (Gather, Slice, Concat, Unsqueeze, Squeeze, Reshape, Flatten, Cast, Identity
with constant indices) and products with numbers free of it (N C), and a data tensor only as
a Reshape's target: such a target keeps each sample's rows at every batch size if it does at
batch 2 (its entries are c N or free of N). Anything else runs the samples one at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Ops whose outputs depend on the shape of their input, not on its values.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


def batch_axis_stays_leading(
    onnx_bytes: bytes, input_name: str, sample_shape: tuple[int, ...], dtype: type
) -> str | None:
    """None when every tensor computed from the input keeps the batch on its leading axis
    (its leading size doubles from batch 1 to batch 2, its other sizes stay), else why not
    (the first such tensor, or the error of a run at batch 2)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(onnx_bytes)
    data = {input_name}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in _SHAPE_ONLY or not any(name in data for name in node.input):
            continue
        for name in node.output:
            if name:
                data.add(name)
                names.append(name)
    if not names:
        return None
    # what is computed without the input's values (shapes, and what follows): its values
    derived = [
        name for node in model.graph.node for name in node.output if name and name not in data
    ]
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in [*names, *derived])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(
            [*names, *derived], {input_name: np.zeros((1, *sample_shape), dtype=dtype)}
        )
        shapes = [
            [tuple(int(d) for d in np.shape(v)) for v in values[: len(names)]],
            _shapes(session, names, input_name, (2, *sample_shape), dtype),
        ]
    except Exception as exc:  # onnxruntime's own error types
        return f"it does not run on a batch of 2 ({(str(exc).splitlines() or [''])[0]})"
    reached = _batch_size_reaches(
        model, data, dict(zip(derived, values[len(names) :], strict=True))
    )
    if reached is not None:
        return reached
    sizes = {input_name: ((1, *sample_shape), (2, *sample_shape))}
    for name, one, two in zip(names, shapes[0], shapes[1], strict=True):
        if not one or len(one) != len(two) or two[0] != 2 * one[0] or two[1:] != one[1:]:
            return f"tensor {name!r} has shape {one} at batch 1 and {two} at batch 2"
        sizes[name] = (one, two)
    return _leading_axis_sliced(model, data, sizes)


def _leading_axis_sliced(
    model: Any, data: set[str], sizes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
) -> str | None:
    """Why a Slice of a leading axis that holds the batch may take rows across samples,
    or None: only the whole axis, in order, keeps them apart (rows [2, 6) of 4 rows a sample
    are 2 rows at batch 1, 4 at batch 2: two of each of two samples, at a size that scales).
    Split and Tile along a batch axis are refused by the rules."""
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in model.graph.node:
        if node.op_type != "Slice" or node.input[0] not in data or node.input[0] not in sizes:
            continue
        (one, two), out = sizes[node.input[0]], sizes.get(node.output[0])
        whole = out is not None and out[0][0] == one[0] and out[1][0] == two[0]
        if len(node.input) > 1:  # opset 10 on: inputs (starts, ends, axes, steps)
            given = [i < len(node.input) and bool(node.input[i]) for i in range(5)]
            value = [known.get(node.input[i]) if given[i] else None for i in range(5)]
            if value[3] is not None and all(a % len(one) != 0 for a in _ints(value[3])):
                continue  # the leading axis is not sliced
            if value[1] is None or (given[3] and value[3] is None):
                return f"the Slice {node.name!r} reads bounds computed by the model"
            starts = [int(v) for v in np.asarray(value[1]).reshape(-1)]
            axes = _ints(value[3]) if given[3] else list(range(len(starts)))
            if given[4] and value[4] is None and any(a % len(one) == 0 for a in axes):
                return f"the Slice {node.name!r} reads steps computed by the model"
            steps = _ints(value[4]) if given[4] else [1] * len(starts)
        else:  # attributes up to opset 9
            attrs = {a.name: [int(v) for v in a.ints] for a in node.attribute}
            starts = attrs.get("starts", [])
            axes = attrs.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        for start, axis, step in zip(starts, axes, steps, strict=False):
            if axis % len(one) == 0 and not (whole and start == 0 and step == 1):
                return f"the Slice {node.name!r} keeps part of the leading axis"
    return None


# Ops that only move the elements of their first input (their other inputs: constants).
_MOVES = frozenset(
    {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Cast", "Identity"}
)


def _batch_size_reaches(model: Any, data: set[str], values: dict[str, Any]) -> str | None:
    """Why the batch size may reach the values the model computes, or None (the module).

    `values`: every tensor computed without reading a data tensor, at batch 1. Per such
    tensor derived from a Shape or Size of a data tensor, which of its elements hold N (a
    multiple c N): the leading entry of a Shape, a Size; moves keep them where they go."""
    from onnx import numpy_helper

    known: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    known.update(values)
    held: dict[str, np.ndarray] = {}  # tensor -> where it holds N (elementwise)
    for node in model.graph.node:
        label = f"node {node.name!r} ({node.op_type})"
        if node.op_type in _SHAPE_ONLY and node.input and node.input[0] in data:
            held[node.output[0]] = _shape_holds(node, known)
            continue
        reads = [i for i in node.input if i in held and held[i].any()]
        if not reads:
            continue
        if any(i in data for i in node.input):
            if node.op_type == "Reshape" and reads == [node.input[1]]:
                continue  # a target of c N entries: the shapes at batch 2 tell
            return f"the batch size reaches the values of {label}"
        where = _moved(node, held, known)
        if where is None:
            return f"the batch size reaches {label}"
        held[node.output[0]] = where
    return None


def _shape_holds(node: Any, known: dict[str, Any]) -> np.ndarray:
    """Which elements of Shape(x)[start:end] (or Size(x)) are, or hold, x's leading size."""
    output = known.get(node.output[0])
    if node.op_type == "Size" or output is None:
        return np.ones(np.shape(output) if output is not None else (), dtype=bool)
    start = next((int(a.i) for a in node.attribute if a.name == "start"), 0)
    holds = np.zeros(np.shape(output), dtype=bool)
    if start == 0 and holds.size:
        holds[0] = True
    elif start < 0:
        holds[:] = True  # counted from the end: maybe the leading size, to be safe
    return holds


def _moved(node: Any, held: dict[str, np.ndarray], known: dict[str, Any]) -> np.ndarray | None:
    """Where the output of `node` (reading N) holds N, or None when N reaches it otherwise
    than by moves with constant indices and products with numbers free of N."""
    outputs = [name for name in node.output if name]
    if len(outputs) != 1 or outputs[0] not in known:
        return None
    shape = np.shape(known[outputs[0]])
    if any(i not in known and i not in held for i in node.input if i):
        return None

    def holds(name: str) -> np.ndarray:
        return held[name] if name in held else np.zeros(np.shape(known[name]), dtype=bool)

    op, inputs = node.op_type, [i for i in node.input if i]
    attrs = {a.name: a for a in node.attribute}
    moved: np.ndarray | None
    try:
        if op == "Mul" and len(inputs) == 2:
            a, b = (np.broadcast_to(holds(i), shape) for i in inputs)
            return None if (a & b).any() else a | b  # N times N is not c N
        if op == "Concat":
            moved = np.concatenate([holds(i) for i in inputs], axis=int(attrs["axis"].i))
        elif op not in _MOVES or any(holds(i).any() for i in inputs[1:]):
            return None  # arithmetic on N, or indices computed from it
        elif op == "Gather":
            axis = int(attrs["axis"].i) if "axis" in attrs else 0
            indices = np.asarray(known[inputs[1]]).astype(np.int64)
            moved = np.take(holds(inputs[0]), indices, axis=axis)
        elif op == "Slice":
            moved = _sliced(node, holds(inputs[0]), known)
        else:  # Cast, Identity, Unsqueeze, Squeeze, Reshape, Flatten: the same order
            moved = holds(inputs[0]).reshape(shape)
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return moved if moved is not None and moved.shape == shape else None


def _sliced(node: Any, array: np.ndarray, known: dict[str, Any]) -> np.ndarray | None:
    """`array` sliced as `node` (a Slice with constant inputs, opset 10 on) slices."""
    if len(node.input) < 3:
        return None  # attributes up to opset 9
    parts = [_ints(known[i]) if i else None for i in [*node.input[1:], "", ""][:4]]
    starts, ends, axes, steps = parts
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * array.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[axis] = slice(start, end, step)
    return array[tuple(index)]


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _shapes(
    session: Any, names: list[str], input_name: str, shape: tuple[int, ...], dtype: type
) -> list[tuple[int, ...]]:
    results = session.run(names, {input_name: np.zeros(shape, dtype=dtype)})
    return [tuple(int(d) for d in np.shape(value)) for value in results]
