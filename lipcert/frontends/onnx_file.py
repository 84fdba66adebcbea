"""ONNX front-end: an .onnx file (or ONNX bytes) into the internal graph.

Steps: read the protobuf without external data; admit external data only when every location
is relative and resolves, links followed, to a regular file inside the model's folder; run the
ONNX checker and shape inference; then one onnxruntime run at batch 1 on a zero input, with
every intermediate tensor as an output. That run gives the static shape of every data tensor
and the value of every tensor that does not depend on the input (the shape arithmetic of
exporters: Shape, Gather, Concat of int64, ...), which is folded into constants with the
runtime's own semantics.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from lipcert.errors import ModelLoadError, ShapeError, UnsupportedOpError, UsageError
from lipcert.graph import Graph, Node
from lipcert.model import LoadedModel, LoadOptions, check_sample_shape

# Ops whose output depends only on the input's shape, which is static here.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Ops whose output is random: a model that uses them has no fixed function to certify.
_RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
# Monotone maps at the output: they change neither the argmax nor, for one output, the side
# of the decision threshold (Sigmoid: p > 1/2 exactly when its input is > 0). Certificates
# use their input, the logits, where a one-logit decision is "positive means class 1".
_OUTPUT_ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
# A batch size fixed by a model beyond this is taken as a malformed file.
_MAX_FIXED_BATCH = 4096
# The probe run keeps every intermediate tensor: one larger than this (1 GiB of float32) is
# refused before anything is allocated, as a file built to exhaust memory would be.
_MAX_TENSOR_ELEMENTS = 1 << 28
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
# Error details quoted from onnx or onnxruntime are cut to this many characters.
_MAX_DETAIL = 300
# Spatial sizes tried when the model leaves its input size open and none is given.
_PROBE_SIZES = (32, 28, 64, 16, 224)


def load_model(path: str | Path, options: LoadOptions) -> LoadedModel:
    """Read an ONNX file into a LoadedModel (graph for bounds, bytes for the runtime)."""
    if options.arch is not None:
        raise UsageError("--arch applies to PyTorch checkpoints, not to ONNX files")
    path = Path(path)
    model = _read_protobuf(path)
    _load_external_data(model, path)
    return load_from_proto(model, options, source=str(path), fmt="onnx")


def load_from_proto(
    model: onnx.ModelProto, options: LoadOptions, *, source: str, fmt: str
) -> LoadedModel:
    """Turn an in-memory ONNX model into a LoadedModel (the PyTorch front-end ends here too)."""
    _refuse_external_data(model, source)
    _check(model, source)
    input_info = _single_data_input(model, source)
    input_shape, size_known, batch = _choose_input_shape(input_info, options.input_shape, source)
    output_name = _first_output(model, source)
    graph, runnable = _build_graph(model, input_info.name, output_name, input_shape, batch, source)
    graph.size_known = size_known
    if not size_known:
        graph.notes.append(
            "the model does not fix its input size and none was given: bounds use methods that "
            "hold for every input size (looser); pass --input-shape for tight bounds"
        )
    return LoadedModel(
        graph=graph,
        onnx_bytes=runnable.SerializeToString(),
        input_name=input_info.name,
        output_name=graph.output_name,
        format=fmt,
        path=source,
        # A static batch axis, even of 1, is one onnxruntime insists on.
        fixed_batch=batch if _declares_static_batch(input_info) else None,
    )


# --- reading -------------------------------------------------------------------------------


def _read_protobuf(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelLoadError(f"no model file at {str(path)!r}")
    # protobuf reads zero bytes as a valid, empty model
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{str(path)!r} is empty")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(
            f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, sparse ones, subgraphs
    and local functions included."""

    def from_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse_tensors = list(attribute.sparse_tensors)
                if attribute.HasField("sparse_tensor"):
                    sparse_tensors.append(attribute.sparse_tensor)
                for sparse in sparse_tensors:
                    yield sparse.values
                    yield sparse.indices
                if attribute.HasField("g"):
                    yield from from_graph(attribute.g)
                for subgraph in attribute.graphs:
                    yield from from_graph(subgraph)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from from_nodes(graph.node)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_nodes(function.node)


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load external tensor data, admitting only files inside the model's own folder."""
    folder = path.resolve().parent
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        _check_external_location(location, folder, tensor.name, path)
        target = (folder / location).resolve()
        size = target.stat().st_size
        offset = _int_entry(entries, "offset", tensor.name)
        length = _int_entry(entries, "length", tensor.name)
        if offset > size or (length is not None and offset + length > size):
            raise ModelLoadError(
                f"external data of tensor {tensor.name!r} reads past the end of {location!r} "
                f"({size} bytes)"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the external data of {str(path)!r}: {_first_line(exc)}"
        ) from None
    _refuse_external_data(model, str(path))


def _refuse_external_data(model: onnx.ModelProto, source: str) -> None:
    """No tensor may still point to a file: onnxruntime, given bytes, would read it relative
    to the working folder instead of the model's (onnx loads no sparse tensor's data)."""
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            raise ModelLoadError(
                f"refusing external data of tensor {tensor.name!r} in {source!r} (location "
                f"{location!r}): lipcert reads external data of dense initializers and "
                "attributes only"
            )


def _check_external_location(location: str, folder: Path, tensor: str, path: Path) -> None:
    if not location:
        raise ModelLoadError(f"tensor {tensor!r} has external data without a location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise ModelLoadError(
            f"refusing external data of tensor {tensor!r}: location {location!r} is absolute; "
            "only files inside the model's folder are read"
        )
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        raise ModelLoadError(
            f"refusing external data of tensor {tensor!r}: {location!r} resolves to "
            f"{str(target)!r}, outside the model's folder {str(folder)!r}"
        )
    if not target.is_file():
        raise ModelLoadError(
            f"external data of tensor {tensor!r}: {location!r} is not a regular file next to "
            f"{str(path)!r}"
        )


def _int_entry(entries: dict[str, str], key: str, tensor: str) -> Any:
    if key not in entries:
        return 0 if key == "offset" else None
    try:
        value = int(entries[key])
    except ValueError:
        raise ModelLoadError(
            f"external data of tensor {tensor!r} has {key} {entries[key]!r}, not an integer"
        ) from None
    if value < 0:
        raise ModelLoadError(f"external data of tensor {tensor!r} has negative {key} {value}")
    return value


def _check(model: onnx.ModelProto, source: str) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{source!r} fails the ONNX checker: {_first_line(exc)}") from None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True)
    except Exception as exc:
        raise ModelLoadError(f"{source!r} fails ONNX shape inference: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    """The error's message on one line (the checker's span several), kept short."""
    text = " ".join(str(exc).split())
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return text or type(exc).__name__


# --- inputs and outputs --------------------------------------------------------------------


def _single_data_input(model: onnx.ModelProto, source: str) -> onnx.ValueInfoProto:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        names = [vi.name for vi in inputs]
        raise ModelLoadError(f"expected a model with one input but {source!r} has {names!r}")
    elem_type = inputs[0].type.tensor_type.elem_type
    if elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        raise ModelLoadError(
            f"expected a float input but {source!r} has input {inputs[0].name!r} of type "
            f"{onnx.TensorProto.DataType.Name(elem_type)}"
        )
    return inputs[0]


def _declared_dims(info: onnx.ValueInfoProto) -> list[int | None]:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _choose_input_shape(
    info: onnx.ValueInfoProto, given: tuple[int, ...] | None, source: str
) -> tuple[tuple[int, ...] | None, bool, int]:
    """The per-sample input shape, whether it is known (else sizes are probed), the batch size."""
    dims = _declared_dims(info)
    batch = dims[0] if dims and dims[0] is not None else 1
    if not 1 <= batch <= _MAX_FIXED_BATCH:
        raise ModelLoadError(
            f"expected a batch size from 1 to {_MAX_FIXED_BATCH} but {source!r} fixes {batch} "
            f"for input {info.name!r}"
        )
    sample = dims[1:]
    _check_declared_dims(sample, info.name, source)
    if given is not None:
        fits = not sample or (
            len(sample) == len(given)
            and all(d is None or d == g for d, g in zip(sample, given, strict=True))
        )
        if not fits:
            raise ShapeError(
                f"input shape {given!r} does not fit the shape {_format_dims(sample)} declared "
                f"by {source!r}"
            )
        return given, True, batch
    if not sample:
        raise UsageError(f"{source!r} declares no input shape: pass --input-shape C,H,W")
    if all(d is not None for d in sample):
        return tuple(int(d) for d in sample if d is not None), True, batch
    if sample[0] is None:
        raise UsageError(
            f"{source!r} leaves its channel count open ({_format_dims(sample)}): "
            "pass --input-shape C,H,W"
        )
    return None, False, batch


def _declares_static_batch(info: onnx.ValueInfoProto) -> bool:
    dims = _declared_dims(info)
    return bool(dims) and dims[0] is not None


def _check_declared_dims(sample: list[int | None], input_name: str, source: str) -> None:
    """Refuse a declared per-sample shape that no model could run on (the file is at fault)."""
    what = f"the shape of input {input_name!r} declared by {source!r}"
    known = tuple(d for d in sample if d is not None)
    try:
        if known:
            check_sample_shape(known, what=what)
    except UsageError as exc:
        raise ModelLoadError(str(exc)) from None


def _format_dims(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _first_output(model: onnx.ModelProto, source: str) -> str:
    if not model.graph.output:
        raise ModelLoadError(f"{source!r} has no output")
    return model.graph.output[0].name


# --- the probe run and the graph -----------------------------------------------------------


def _build_graph(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    input_shape: tuple[int, ...] | None,
    batch: int,
    source: str,
) -> tuple[Graph, onnx.ModelProto]:
    nodes = list(model.graph.node)
    _refuse_random_ops(nodes)
    is_data = _data_dependence(nodes, input_name)
    values = _probe(model, input_name, input_shape, batch, nodes, source)

    constants: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in model.graph.initializer
    }
    shapes: dict[str, tuple[int, ...]] = {input_name: values[input_name].shape}
    zero_values: dict[str, np.ndarray] = {input_name: values[input_name].astype(np.float64)}
    graph_nodes: list[Node] = []
    for index, proto in enumerate(nodes):
        if not any(is_data.get(name, False) for name in proto.output if name):
            for name in proto.output:
                if name:
                    constants[name] = values[name]
            continue
        graph_nodes.append(_to_node(proto, index))
        for name in proto.output:
            if name:
                shapes[name] = tuple(values[name].shape)
                zero_values[name] = _as_float64(values[name])

    graph = Graph(
        input_name=input_name,
        output_name=output_name,
        nodes=graph_nodes,
        constants=constants,
        shapes=shapes,
        batch_size=batch,
        source=source,
        zero_input_values=zero_values,
        opset=_default_opset(model),
    )
    if output_name not in shapes:
        raise ModelLoadError(
            f"the output {output_name!r} of {source!r} does not depend on the input"
        )
    _drop_output_activation(graph)
    graph.prune()
    graph.zero_input_values = {
        k: v for k, v in zero_values.items() if k in graph.shapes and _is_used(graph, k)
    }
    return graph, _runnable_model(model, graph.output_name)


def _default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) domain the model imports."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else 0


def _is_used(graph: Graph, name: str) -> bool:
    return name == graph.input_name or any(name in node.outputs for node in graph.nodes)


def _refuse_random_ops(nodes: list[onnx.NodeProto]) -> None:
    for proto in nodes:
        if proto.op_type in _RANDOM_OPS:
            raise UnsupportedOpError(
                f"node {proto.name or proto.op_type!r} ({proto.op_type}) draws random numbers: "
                "a model must compute a fixed function to be certified"
            )


def _data_dependence(nodes: list[onnx.NodeProto], input_name: str) -> dict[str, bool]:
    """Which tensors depend on the input's values (shape-only ops do not)."""
    is_data = {input_name: True}
    for proto in nodes:
        depends = proto.op_type not in _SHAPE_ONLY_OPS and any(
            is_data.get(name, False) for name in proto.input if name
        )
        if proto.op_type in ("If", "Loop", "Scan") and not depends:
            depends = _subgraph_reads_data(proto, is_data)
        for name in proto.output:
            if name:
                is_data[name] = depends
    return is_data


def _subgraph_reads_data(proto: onnx.NodeProto, is_data: dict[str, bool]) -> bool:
    """Control flow can read outer tensors implicitly: treat any such read as data."""
    for attribute in proto.attribute:
        graphs = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        for subgraph in graphs:
            for node in subgraph.node:
                if any(is_data.get(name, False) for name in node.input):
                    return True
    return False


def _probe(
    model: onnx.ModelProto,
    input_name: str,
    input_shape: tuple[int, ...] | None,
    batch: int,
    nodes: list[onnx.NodeProto],
    source: str,
) -> dict[str, np.ndarray]:
    """Run the model once on a zero batch and return every tensor's value."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [name for proto in nodes for name in proto.output if name]
    for name in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Failures come back as exceptions and are reported once; the log would repeat them.
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {source!r}: {_first_line(exc)}") from None
    elem_type = model.graph.input[
        [vi.name for vi in model.graph.input].index(input_name)
    ].type.tensor_type.elem_type
    dtype = np.float64 if elem_type == onnx.TensorProto.DOUBLE else np.float32
    candidates = [input_shape] if input_shape is not None else _probe_shapes(model, input_name)
    errors = []
    for shape in candidates:
        if shape is None:
            continue
        if input_shape is None:
            try:
                check_sample_shape(shape, what="a probed input size")
            except UsageError as exc:
                errors.append(f"{shape}: {exc}")
                continue
        _refuse_huge_tensors(model, input_name, (batch, *shape), source)
        zeros = np.zeros((batch, *shape), dtype=dtype)
        try:
            results = session.run(names, {input_name: zeros})
        except Exception as exc:
            errors.append(f"{shape}: {_first_line(exc)}")
            continue
        values = dict(zip(names, results, strict=True))
        values[input_name] = zeros
        return values
    if input_shape is not None:
        raise ModelLoadError(
            f"onnxruntime cannot run {source!r} on an input of shape {input_shape}: "
            f"{errors[0].partition(': ')[2]}"
        )
    raise UsageError(
        f"{source!r} does not fix its input size and runs at none of the sizes tried "
        f"({'; '.join(errors)}): pass --input-shape C,H,W"
    )


def _refuse_huge_tensors(
    model: onnx.ModelProto, input_name: str, full_shape: tuple[int, ...], source: str
) -> None:
    """Refuse, before the probe allocates them, tensors whose static shape is absurd.

    Shape inference with the input shape fixed (and constant shapes propagated) sees what a
    ConstantOfShape, Expand, Tile or Resize would allocate; a tensor whose shape it cannot
    infer is left to onnxruntime.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(
            _shape_skeleton(model, input_name, full_shape), data_prop=True
        )
    except Exception:
        return  # the checker's shape inference passed; onnxruntime reports what is left
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        if not info.type.HasField("tensor_type"):
            continue
        dims = _declared_dims(info)
        if not dims or any(d is None for d in dims):
            continue
        count = 1
        for d in dims:
            count *= max(int(d or 0), 0)
        if count > _MAX_TENSOR_ELEMENTS:
            raise ModelLoadError(
                f"tensor {info.name!r} of {source!r} would hold {count} values (shape "
                f"{tuple(dims)}) at input shape {full_shape}; refusing more than "
                f"{_MAX_TENSOR_ELEMENTS}"
            )


def _shape_skeleton(
    model: onnx.ModelProto, input_name: str, full_shape: tuple[int, ...]
) -> onnx.ModelProto:
    """The model with its input shape fixed and its float weights left out (declared as inputs
    of the same shape): shape inference needs only integer constants, and copies stay small."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    for info in model.graph.input:
        added = graph.input.add()
        added.CopyFrom(info)
        if info.name == input_name:
            del added.type.tensor_type.shape.dim[:]
            for size in full_shape:
                added.type.tensor_type.shape.dim.add().dim_value = size
    declared = {info.name for info in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.data_type in _INTEGER_TYPES:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


def _probe_shapes(model: onnx.ModelProto, input_name: str) -> list[tuple[int, ...] | None]:
    info = next(vi for vi in model.graph.input if vi.name == input_name)
    sample = _declared_dims(info)[1:]
    shapes: list[tuple[int, ...] | None] = []
    for size in _PROBE_SIZES:
        shapes.append(tuple(size if d is None else d for d in sample))
    return shapes


def _as_float64(value: np.ndarray) -> np.ndarray:
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float64)
    return value


def _to_node(proto: onnx.NodeProto, index: int) -> Node:
    op = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}::{proto.op_type}"
    attrs = {a.name: _attribute_value(a) for a in proto.attribute}
    return Node(
        name=proto.name or f"{proto.op_type}_{index}",
        op=op,
        inputs=tuple(proto.input),
        outputs=tuple(proto.output),
        attrs=attrs,
    )


def _attribute_value(attribute: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _drop_output_activation(graph: Graph) -> None:
    """Certificates use logits: a Softmax, LogSoftmax or Sigmoid at the output is stepped
    over (a Softmax only along the last axis, where it keeps the argmax)."""
    producers = graph.producers()
    node = producers.get(graph.output_name)
    while node is not None and node.op in _OUTPUT_ACTIVATIONS:
        source = graph.data_inputs(node)
        if len(source) != 1:
            break
        rank = len(graph.shape(source[0]))
        if node.op != "Sigmoid" and int(node.attr("axis", -1)) % rank != rank - 1:
            break
        graph.notes.append(
            f"{node.op} at the output ({node.name}) dropped: certificates use its input, the logits"
        )
        graph.output_name = source[0]
        node = producers.get(graph.output_name)


def _runnable_model(model: onnx.ModelProto, logits_name: str) -> onnx.ModelProto:
    """The model with the logits as its only output (a dropped Softmax is not computed)."""
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    if runnable.graph.output[0].name == logits_name and len(runnable.graph.output) == 1:
        return runnable
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    del runnable.graph.output[:]
    output = onnx.ValueInfoProto()
    if logits_name in known:
        output.CopyFrom(known[logits_name])
    else:
        output.name = logits_name
    runnable.graph.output.append(output)
    return runnable
