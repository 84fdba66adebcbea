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
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        shapes = [_shapes(session, names, input_name, (b, *sample_shape), dtype) for b in (1, 2)]
    except Exception as exc:  # onnxruntime's own error types
        return f"it does not run on a batch of 2 ({(str(exc).splitlines() or [''])[0]})"
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


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _shapes(
    session: Any, names: list[str], input_name: str, shape: tuple[int, ...], dtype: type
) -> list[tuple[int, ...]]:
    results = session.run(names, {input_name: np.zeros(shape, dtype=dtype)})
    return [tuple(int(d) for d in np.shape(value)) for value in results]
