"""The size guard: every tensor the probe run would allocate is bounded before it runs.

ONNX shape inference, with the input's shape fixed and constant values propagated, gives the
shape of most tensors. Where a size is computed by ops that inference does not follow (a
ConstantOfShape of a shape computed through a Cast, a Range with a computed limit...), the
constant tensors that set it are computed first, by onnxruntime on the part of the graph that
leads to them (every tensor of which is already bounded), and inference runs again with them
known. A tensor whose size cannot be bounded this way is refused, and so is one larger than
the guard: nothing is allocated first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from lipcert.errors import ModelLoadError
from lipcert.frontends.onnx_flow import Flow, nested_nodes, node_label, subgraphs

# The probe keeps every intermediate tensor: one larger than this (1 GiB of float32) is
# refused before anything is allocated, as a file built to exhaust memory would be.
MAX_TENSOR_ELEMENTS = 1 << 28
# Constants up to this size are handed to shape inference by value (shape arithmetic, scales).
_SMALL_CONSTANT = 1 << 12
# Ops whose output has at most a few times the elements of their largest input, whatever
# their input values: an unknown output shape is then still bounded.
_SIZE_SAFE = frozenset(
    {
        "Abs",
        "ArgMax",
        "ArgMin",
        "Cast",
        "CastLike",
        "Ceil",
        "Compress",
        "Concat",  # only with inputs of known sizes that fit the guard; checked below
        "Constant",
        "Dropout",
        "Exp",
        "Flatten",
        "Floor",
        "Identity",
        "IsInf",
        "IsNaN",
        "Log",
        "Neg",
        "NonZero",  # only with an input of known size; checked below
        "Not",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Round",
        "Shape",
        "Sigmoid",
        "Sign",
        "Size",
        "Slice",
        "Softmax",
        "Split",
        "Sqrt",
        "Squeeze",
        "Tanh",
        "TopK",
        "Transpose",
        "Unique",
        "Unsqueeze",
        "Gather",  # only with a scalar or one-element index; checked below
    }
)
_MAX_ROUNDS = 64


def guard_sizes(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    flow: Flow,
    input_name: str,
    full_shape: tuple[int, ...],
    source: str,
    run: Callable[[onnx.ModelProto, list[str]], dict[str, np.ndarray]],
) -> None:
    """Refuse, before the probe, any tensor of `nodes` above the guard or of unbounded size.

    `run(model, names)` runs a model (same input) and returns the named tensors.
    """
    _refuse_allocations_in_subgraphs(nodes, model.functions)
    known: dict[str, np.ndarray] = {}
    # Shapes of data tensors that inference did not follow, read off a partial run: their
    # sizes do not depend on the input's values (such shapes are refused before).
    data_shapes: dict[str, tuple[list[int], int]] = {}
    settled: set[str] = set()
    for _ in range(_MAX_ROUNDS):
        shapes = _inferred_shapes(model, nodes, input_name, full_shape, known, data_shapes)
        for name, dims in shapes.items():
            if dims is not None and _count(dims) > MAX_TENSOR_ELEMENTS:
                raise ModelLoadError(
                    f"tensor {name!r} of {source!r} would hold {_count(dims)} values (shape "
                    f"{tuple(dims)}) at input shape {full_shape}; refusing more than "
                    f"{MAX_TENSOR_ELEMENTS}"
                )
        pending = _first_unbounded(nodes, shapes, settled)
        if pending is None:
            return
        key = pending.name + "/" + "/".join(pending.output)
        initializers = {t.name: t for t in model.graph.initializer}
        for name in pending.input:
            if name in initializers and name not in known:
                known[name] = numpy_helper.to_array(initializers[name])
        # Data inputs set no sizes here (value-dependent shapes are refused before): the
        # constant ones are computed, and inference runs again.
        inputs = [
            name
            for name in pending.input
            if name and name not in known and not flow.is_data.get(name, False)
        ]
        # Data inputs whose shapes inference left open: every node before this one is
        # bounded (known sizes within the guard, or ops no larger than their inputs), so
        # the part of the graph that computes them may run, and their shapes be read.
        open_data = [
            name
            for name in pending.input
            if name
            and flow.is_data.get(name, False)
            and shapes.get(name) is None
            and name not in data_shapes
        ]
        settled.add(key)
        if open_data:
            part = _submodel(model, _ancestors(nodes, pending, open_data), open_data)
            computed = run(part, open_data)
            for name in open_data:
                value = np.asarray(computed[name])
                elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
                data_shapes[name] = (list(value.shape), elem)
            settled.discard(key)
        if not inputs:
            continue
        ancestors = _ancestors(nodes, pending, inputs)
        # every output of the nodes that produce them, so that no node is half known
        wanted = [
            name
            for node in ancestors
            if set(node.output) & set(inputs)
            for name in node.output
            if name and name not in known
        ]
        wanted += [name for name in inputs if name not in wanted]
        computed = run(_submodel(model, ancestors, wanted), wanted)
        known.update({name: computed[name] for name in wanted if name in computed})
    raise ModelLoadError(f"the sizes of the tensors of {source!r} cannot be bounded in time")


def _count(dims: list[int]) -> int:
    count = 1
    for d in dims:
        count *= max(int(d), 0)
    return count


def _first_unbounded(
    nodes: list[onnx.NodeProto], shapes: dict[str, list[int] | None], settled: set[str]
) -> onnx.NodeProto | None:
    for node in nodes:
        outputs = [name for name in node.output if name]
        if all(shapes.get(name) is not None for name in outputs):
            continue
        safe = node.op_type in _SIZE_SAFE and node.domain in ("", "ai.onnx")
        if safe and node.op_type == "Gather":
            safe = _small_index(node, shapes)
        elif safe and node.op_type == "Concat":
            # as large as all its inputs together: chained Concats of open shapes would
            # multiply sizes, so every input must have a known size and all fit the guard
            safe = _inputs_fit(node, shapes)
        elif safe and node.op_type == "NonZero":
            # rank times as large as its input: chained, sizes would multiply
            dims = shapes.get(node.input[0])
            safe = dims is not None and len(dims) * _count(dims) <= MAX_TENSOR_ELEMENTS
        if safe:
            continue
        key = node.name + "/" + "/".join(node.output)
        if key in settled:
            raise ModelLoadError(
                f"{node_label(node)}: the size of its output cannot be bounded before running it"
            )
        return node
    return None


def _inputs_fit(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> bool:
    dims = [shapes.get(name) for name in node.input if name]
    return all(d is not None for d in dims) and (
        sum(_count(d) for d in dims if d is not None) <= MAX_TENSOR_ELEMENTS
    )


def _small_index(node: onnx.NodeProto, shapes: dict[str, list[int] | None]) -> bool:
    dims = shapes.get(node.input[1]) if len(node.input) > 1 else None
    return dims is not None and _count(dims) <= 1


def _ancestors(
    nodes: list[onnx.NodeProto], pending: onnx.NodeProto, names: list[str]
) -> list[onnx.NodeProto]:
    before = nodes[: nodes.index(pending)]
    wanted = set(names)
    kept: list[onnx.NodeProto] = []
    for node in reversed(before):
        if any(name in wanted for name in node.output if name):
            kept.append(node)
            wanted |= {name for name in node.input if name}
            for graph in subgraphs(node):
                wanted |= {name for inner in graph.node for name in inner.input if name}
    return kept[::-1]


def _submodel(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str]
) -> onnx.ModelProto:
    sub = onnx.ModelProto()
    sub.CopyFrom(model)
    del sub.graph.node[:]
    sub.graph.node.extend(nodes)
    del sub.graph.output[:]
    for name in outputs:
        sub.graph.output.append(onnx.ValueInfoProto(name=name))
    return sub


def _inferred_shapes(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    input_name: str,
    full_shape: tuple[int, ...],
    known: dict[str, np.ndarray],
    data_shapes: dict[str, tuple[list[int], int]],
) -> dict[str, list[int] | None]:
    """Static shape of every output of `nodes` (None where inference leaves a dim open)."""
    skeleton = _skeleton(model, nodes, input_name, full_shape, known)
    for name, (dims, elem) in data_shapes.items():
        skeleton.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    infos: list[onnx.ValueInfoProto] = []
    for data_prop in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=data_prop)
        except Exception:  # then sizes are bounded by running the constants, or refused
            continue
        infos = list(inferred.graph.value_info) + list(inferred.graph.output)
        break
    by_name = {info.name: info for info in infos if info.type.HasField("tensor_type")}
    shapes: dict[str, list[int] | None] = {name: dims for name, (dims, _) in data_shapes.items()}
    shapes[input_name] = list(full_shape)
    for name, value in known.items():
        shapes[name] = list(np.shape(value))
    for node in nodes:
        for name in node.output:
            if not name or name in shapes:
                continue
            info = by_name.get(name)
            shapes[name] = _static_dims(info) if info is not None else None
    for info in model.graph.initializer:
        shapes.setdefault(info.name, list(info.dims))
    return shapes


def _static_dims(info: onnx.ValueInfoProto) -> list[int] | None:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        dims.append(int(dim.dim_value))
    return dims


_INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


def _skeleton(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    input_name: str,
    full_shape: tuple[int, ...],
    known: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """The model with its input shape fixed, its large float weights declared as inputs of the
    same shape (inference needs only their shapes), and the values in `known` as constants."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(
        node for node in nodes if not all(name in known for name in node.output if name)
    )
    for name in known:
        graph.initializer.append(numpy_helper.from_array(np.asarray(known[name]), name))
    graph.output.extend(model.graph.output)
    declared = set(known)
    for info in model.graph.input:
        if info.name in declared:
            continue
        added = graph.input.add()
        added.CopyFrom(info)
        declared.add(info.name)
        if info.name == input_name:
            del added.type.tensor_type.shape.dim[:]
            for size in full_shape:
                added.type.tensor_type.shape.dim.add().dim_value = size
    for tensor in model.graph.initializer:
        if tensor.name in known:
            continue
        small = int(np.prod(tensor.dims)) <= _SMALL_CONSTANT
        if tensor.data_type in _INTEGER_TYPES or small:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


# Admitted in the main graph only with checks on their inputs' inferred sizes, which
# inference does not give inside subgraphs: there a chain of them multiplies sizes
# (Concat(t, t) doubles t, NonZero(t) holds rank(t) times its elements), so they are refused.
_SIZED_IN_MAIN_GRAPH_ONLY = frozenset({"Concat", "Gather", "NonZero"})


def _refuse_allocations_in_subgraphs(nodes: list[onnx.NodeProto], functions: object) -> None:
    """Inside If branches and local functions, inference does not bound every size: there
    only ops whose output is no larger than their inputs are admitted (a Constant holds what
    the file stores; sparse ones are checked by `refuse_large_sparse_tensors`)."""
    for top, node in nested_nodes(nodes, functions):  # type: ignore[arg-type]
        if node is top:
            continue
        where = f"{node_label(node)} inside {top.name or top.op_type!r} ({top.op_type})"
        if node.op_type not in _SIZE_SAFE or node.op_type in _SIZED_IN_MAIN_GRAPH_ONLY:
            raise ModelLoadError(
                f"{where}: lipcert cannot bound the size of its output before running it"
            )


def refuse_large_sparse_tensors(model: onnx.ModelProto, source: str) -> None:
    """Refuse a sparse tensor (initializer or Constant, at any depth) whose dense form is
    above the guard: onnxruntime makes it dense when it builds a session, before any size
    is checked, so a few bytes of file could claim terabytes."""

    def check(sparse: onnx.SparseTensorProto, where: str) -> None:
        dims = [int(d) for d in sparse.dims]
        if any(d < 0 for d in dims) or _count(dims) > MAX_TENSOR_ELEMENTS:
            raise ModelLoadError(
                f"{where} of {source!r} is a sparse tensor of shape {tuple(dims)}, "
                f"{_count(dims)} values once dense; refusing more than {MAX_TENSOR_ELEMENTS}"
            )

    def walk(graph: onnx.GraphProto) -> None:
        for sparse in graph.sparse_initializer:
            check(sparse, f"initializer {sparse.values.name!r}")
        walk_nodes(graph.node)

    def walk_nodes(nodes: object) -> None:
        for node in nodes:  # type: ignore[attr-defined]
            for attribute in node.attribute:
                found = list(attribute.sparse_tensors)
                if attribute.HasField("sparse_tensor"):
                    found.append(attribute.sparse_tensor)
                for sparse in found:
                    check(sparse, f"{node_label(node)}")
                if attribute.HasField("g"):
                    walk(attribute.g)
                for graph in attribute.graphs:
                    walk(graph)

    walk(model.graph)
    for function in model.functions:
        walk_nodes(function.node)
