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
from lipcert.frontends.onnx_exact import (
    FoldingError,
    evaluate_float64,
    float64_errors,
    inexact_constants,
    refuse_inexact,
    to_float64,
)
from lipcert.frontends.onnx_flow import (
    Flow,
    data_flow,
    graph_names,
    needed_nodes,
    node_label,
    refuse_random_and_loops,
    shape_derived,
    subgraphs,
)
from lipcert.frontends.onnx_guard import guard_sizes, refuse_large_sparse_tensors
from lipcert.graph import Graph, Node
from lipcert.model import LoadedModel, LoadOptions, check_sample_shape

# Monotone maps at the output: they change neither the argmax nor, for one output, the side
# of the decision threshold (Sigmoid: p > 1/2 exactly when its input is > 0). Certificates
# use their input, the logits, where a one-logit decision is "positive means class 1".
_OUTPUT_ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
# A batch size fixed by a model beyond this is taken as a malformed file.
_MAX_FIXED_BATCH = 4096
# Error details quoted from onnx or onnxruntime are cut to this many characters.
_MAX_DETAIL = 300
# Spatial sizes tried when the model leaves its input size open and none is given.
_PROBE_SIZES = (32, 28, 64, 16, 224)


def load_model(path: str | Path, options: LoadOptions) -> LoadedModel:
    """Read an ONNX file into a LoadedModel (graph for bounds, bytes for the runtime)."""
    if options.arch is not None:
        raise UsageError("arch= (--arch) applies to PyTorch checkpoints, not to ONNX files")
    path = Path(path)
    model = _read_protobuf(path)
    _load_external_data(model, path)
    return load_from_proto(model, options, source=str(path), fmt="onnx")


def load_from_proto(
    model: onnx.ModelProto, options: LoadOptions, *, source: str, fmt: str
) -> LoadedModel:
    """Turn an in-memory ONNX model into a LoadedModel (the PyTorch front-end ends here too)."""
    _refuse_external_data(model, source)
    refuse_large_sparse_tensors(model, source)
    _check(model, source)
    _refuse_ambiguous_opset(model, source)
    input_info = _single_data_input(model, source)
    input_shape, size_known, batch = _choose_input_shape(input_info, options.input_shape, source)
    output_name = _first_output(model, source)
    graph, runnable = _build_graph(model, input_info.name, output_name, input_shape, batch, source)
    graph.size_known = size_known
    graph.batch_fixed = _declares_static_batch(input_info)
    if not size_known:
        graph.notes.append(
            "the model does not fix its input size and none was given: bounds use methods that "
            "hold for every input size (looser); pass input_shape= (--input-shape) for tight bounds"
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
    if "\x00" in location:  # no path holds one (pathlib raises ValueError)
        raise ModelLoadError(
            f"refusing external data of tensor {tensor!r}: location {location!r} holds a NUL"
        )
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
    _refuse_unnamed_required_outputs(model, source)


def _refuse_unnamed_required_outputs(model: onnx.ModelProto, source: str) -> None:
    """An empty output name omits an output, which only an optional output may be; the
    checker admits it anywhere, and onnxruntime crashes the process (a segmentation fault)
    loading a Split with an unnamed piece, in the main graph or in a subgraph (an If's
    branch). Nodes of the default domain, at any depth."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        return
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx") or all(node.output):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, versions[0], "")
        except onnx.defs.SchemaError:
            continue  # the checker has passed the node: nothing more to say here
        formal = list(schema.outputs)
        for index, name in enumerate(node.output):
            if not name and formal and formal[min(index, len(formal) - 1)].option != optional:
                raise ModelLoadError(
                    f"{source!r}: {node_label(node)} leaves its output {index} unnamed, "
                    "which only an optional output may be"
                )


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of a graph and of its subgraphs, at any depth."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


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
        raise UsageError(
            f"{source!r} declares no input shape: pass input_shape= (--input-shape C,H,W)"
        )
    if all(d is not None for d in sample):
        return tuple(int(d) for d in sample if d is not None), True, batch
    if sample[0] is None:
        raise UsageError(
            f"{source!r} leaves its channel count open ({_format_dims(sample)}): "
            "pass input_shape= (--input-shape C,H,W)"
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
    original = list(model.graph.node)
    position = {id(proto): index for index, proto in enumerate(original)}
    # What does not lead to the output never runs, not even in the probe.
    nodes = needed_nodes(original, output_name)
    refuse_random_and_loops(nodes, model.functions)
    flow = data_flow(nodes, input_name)
    _refuse_value_dependence(nodes, flow)
    values = _probe(model, input_name, input_shape, batch, nodes, flow, source)

    constants: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init) for init in model.graph.initializer
    }
    shapes: dict[str, tuple[int, ...]] = {input_name: values[input_name].shape}
    zero_values: dict[str, np.ndarray] = {input_name: values[input_name].astype(np.float64)}
    graph_nodes: list[Node] = []
    # onnxruntime refuses two nodes of one name, not a name lipcert gives an unnamed node
    named = {proto.name for proto in original if proto.name}
    for proto in nodes:
        if not any(flow.is_data.get(name, False) for name in proto.output if name):
            for name in proto.output:
                if name:
                    constants[name] = values[name]
            continue
        graph_nodes.append(_to_node(proto, position[id(proto)], named))
        _refuse_batch_squeeze(proto, values, constants)
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
        size_dependent=frozenset(shape_derived(nodes, flow)),
    )
    if output_name not in shapes:
        raise ModelLoadError(
            f"the output {output_name!r} of {source!r} does not depend on the input"
        )
    _drop_output_activation(graph, model)
    graph.prune()
    runnable = _runnable_model(model, graph.output_name)
    inexact = inexact_constants(graph, nodes, flow, values, constants)
    if inexact:
        runnable = _fold_in_float64(graph, runnable, nodes, inexact, values[input_name], flow)
    graph.zero_input_values = {
        k: v for k, v in zero_values.items() if k in graph.shapes and _is_used(graph, k)
    }
    return graph, runnable


def _fold_in_float64(
    graph: Graph,
    runnable: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inexact: dict[str, onnx.NodeProto],
    zeros: np.ndarray,
    flow: Flow,
) -> onnx.ModelProto:
    """Constants computed inexactly in float32: the graph takes their float64 values (the
    model's up to float64 rounding), and the runtime their float32 roundings as weights."""
    for name, origin in inexact.items():
        dtype = np.asarray(graph.constant(name)).dtype
        if dtype.kind != "f":
            refuse_inexact(name, origin, graph, "it sets an integer (a shape or an index)")
        if dtype not in (np.float32, np.float64):
            refuse_inexact(name, origin, graph, f"its type {dtype} has no rounding bound here")
    names = list(inexact)
    wanted = [proto for name in names for proto in needed_nodes(nodes, name)]
    part_nodes = list({id(p): p for p in wanted}.values())
    every = [out for proto in part_nodes for out in proto.output if out]
    part = _with_outputs(_with_nodes(runnable, part_nodes), every)
    del part.graph.value_info[:]
    feeds = {graph.input_name: zeros.astype(np.float64)}
    try:
        session = _session(to_float64(part), graph.source)
        results = session.run(every, feeds)
    except Exception:  # ModelLoadError included: an op without a float64 kernel (Conv)
        try:
            results = evaluate_float64(to_float64(part), feeds, every)
        except Exception as exc:
            detail = _first_line(exc)
            refuse_inexact(
                names[0], inexact[names[0]], graph, f"it cannot be recomputed in float64 ({detail})"
            )
            raise  # unreachable: refuse_inexact raises
    values64 = dict(zip(every, results, strict=True))
    values64.update({t.name: numpy_helper.to_array(t) for t in runnable.graph.initializer})
    try:
        errors = float64_errors(part_nodes, values64, flow, names, graph.opset)
    except FoldingError as exc:
        refuse_inexact(
            names[0], inexact[names[0]], graph, f"its float64 recomputation is not bounded: {exc}"
        )
    folded = [values64[name] for name in names]
    graph.folded_error = {name: errors.get(name, 0.0) for name in names}
    # A weight's name must be new: the runtime takes the last of two initializers of one
    # name, so a file's own tensor 'c__folded_in_float64' would silently become c.
    used = graph_names(runnable.graph)
    for name, value in zip(names, folded, strict=True):
        runtime_dtype = np.asarray(graph.constant(name)).dtype
        exact64 = np.asarray(value, dtype=np.float64)
        graph.constants[name] = exact64
        weight = f"{name}__folded_in_float64"
        suffix = 1
        while weight in used:
            weight = f"{name}__folded_in_float64_{suffix}"
            suffix += 1
        used.add(weight)
        runnable.graph.initializer.append(
            numpy_helper.from_array(exact64.astype(runtime_dtype), weight)
        )
        for proto in runnable.graph.node:
            for index, input_name in enumerate(proto.input):
                if input_name == name:
                    proto.input[index] = weight
    graph.inexact_constants = frozenset(names)
    graph.notes.append(
        f"{len(names)} constant(s) computed inside the model (first {names[0]!r}) recomputed "
        "in float64; the runtime uses their float32 roundings, covered by the allowance"
    )
    return runnable


def _refuse_value_dependence(nodes: list[onnx.NodeProto], flow: Flow) -> None:
    """Bounds hold for a fixed function on tensors of fixed shapes: control flow that reads
    the input, and data tensors whose shape follows the input's values, are refused."""
    for proto in nodes:
        outputs = [name for name in proto.output if name]
        if not any(flow.is_data.get(name, False) for name in outputs):
            continue
        label = node_label(proto)
        if any(True for _ in subgraphs(proto)):
            raise UnsupportedOpError(
                f"{label} depends on the input's values (directly or in its subgraphs): "
                "control flow on the input is not supported"
            )
        varying = [name for name in outputs if flow.shape_varies.get(name, False)]
        if varying:
            origin = flow.shape_origin.get(varying[0], proto)
            where = node_label(origin)
            raise UnsupportedOpError(
                f"{where}: the shape of its output depends on the input's values, not only "
                f"on its shape{'' if origin is proto else f' (read by {label})'}; lipcert "
                "bounds functions on tensors of fixed shapes"
            )


def _refuse_batch_squeeze(
    proto: onnx.NodeProto, values: dict[str, np.ndarray], constants: dict[str, np.ndarray]
) -> None:
    """A Squeeze of the batch axis: without axes (what torch exports for x.squeeze()) it
    removes every axis of size 1, the batch axis too at the probe's batch of 1, and no other
    batch axis; the graph's tensors would then lack the batch axis every rule and pattern
    reads first (an IndexError, an internal error, on a Linear after x.squeeze())."""
    if proto.op_type != "Squeeze" or not proto.input or proto.input[0] not in values:
        return
    shape = np.shape(values[proto.input[0]])
    axes: list[int] | None = None
    for attribute in proto.attribute:
        if attribute.name == "axes":
            axes = [int(a) for a in attribute.ints]
    if len(proto.input) > 1 and proto.input[1]:
        given = values.get(proto.input[1], constants.get(proto.input[1]))
        axes = None if given is None else [int(a) for a in np.asarray(given).reshape(-1)]
    if not shape:
        return
    if shape[0] == 1 if not axes else 0 in {a % len(shape) for a in axes}:
        raise UnsupportedOpError(
            f"{node_label(proto)} removes the batch axis (a Squeeze "
            f"{'without axes removes every axis of size 1' if not axes else f'of axes {axes}'}"
            "); squeeze the data axes only (x.squeeze(dim) in torch)"
        )


def _refuse_ambiguous_opset(model: onnx.ModelProto, source: str) -> None:
    """The ONNX checker admits the default domain imported twice ('' and 'ai.onnx', or ''
    twice) at different versions; onnxruntime then runs the last, and an op's meaning
    follows it (a Softmax at opset 11 normalises the flattened tail, at 13 one axis)."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if len(set(versions)) > 1:
        raise ModelLoadError(
            f"{source!r} imports the default ONNX domain at several versions {versions!r}; "
            "an op's meaning depends on which one a runtime takes: import it once"
        )


def _default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) domain the model imports."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else 0


def _is_used(graph: Graph, name: str) -> bool:
    return name == graph.input_name or any(name in node.outputs for node in graph.nodes)


def _probe(
    model: onnx.ModelProto,
    input_name: str,
    input_shape: tuple[int, ...] | None,
    batch: int,
    nodes: list[onnx.NodeProto],
    flow: Flow,
    source: str,
) -> dict[str, np.ndarray]:
    """Run the nodes once on a zero batch and return every tensor's value.

    The size guard runs first, at each input shape tried: no tensor above it is allocated.
    """
    probe = _with_nodes(model, nodes)
    names = [name for proto in nodes for name in proto.output if name]
    session = _session(_with_outputs(probe, names), source)
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
        zeros = np.zeros((batch, *shape), dtype=dtype)

        def run_part(part: onnx.ModelProto, wanted: list[str], zeros: np.ndarray = zeros) -> Any:
            results = _session(_with_outputs(part, wanted), source).run(wanted, {input_name: zeros})
            return dict(zip(wanted, results, strict=True))

        try:
            guard_sizes(probe, nodes, flow, input_name, zeros.shape, source, run_part)
            results = session.run(names, {input_name: zeros})
        except ModelLoadError:
            raise
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
        f"({'; '.join(errors)}): pass input_shape= (--input-shape C,H,W)"
    )


def _with_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    for name in names:
        copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def _session(model: onnx.ModelProto, source: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Failures come back as exceptions and are reported once; the log would repeat them.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot load {source!r}: {_first_line(exc)}") from None


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


def _to_node(proto: onnx.NodeProto, index: int, named: set[str]) -> Node:
    """The graph's node; an unnamed one is named after its op and position, and never as
    another node of the file is (tables keyed by node name would mix the two)."""
    op = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}::{proto.op_type}"
    attrs = {a.name: _attribute_value(a) for a in proto.attribute}
    name = proto.name
    if not name:
        name = f"{proto.op_type}_{index}"
        while name in named:
            name += "_"
    return Node(
        name=name,
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


def _drop_output_activation(graph: Graph, model: onnx.ModelProto) -> None:
    """Certificates use logits: one Softmax, LogSoftmax or Sigmoid at the output is stepped
    over where it provably keeps the decision, and refused where it does not.

    The decision is the argmax of a sample's outputs, or for one output the side of 0 (of
    1/2 for a probability). An element-wise Sigmoid keeps both (p > 1/2 exactly when z > 0).
    A Softmax keeps the argmax only when it normalises all the outputs of a sample together
    (more than one): on (N, 2, 2) along the last axis, each row sums to 1 and the argmax over
    all four is another; over an axis of size 1 every output is 1. Two activations in a row
    are refused: Sigmoid(Sigmoid(z)) > 1/2 for every z.
    """
    producers = graph.producers()
    node = producers.get(graph.output_name)
    if node is None or node.op not in _OUTPUT_ACTIVATIONS:
        return
    label = f"node {node.name!r} ({node.op}) at the output"
    source = graph.data_inputs(node)
    if len(source) != 1 or node.inputs[0] != source[0]:
        raise UnsupportedOpError(f"{label}: expected one data input")
    inner = producers.get(source[0])
    if inner is not None and inner.op in _OUTPUT_ACTIVATIONS:
        raise UnsupportedOpError(
            f"{label} follows node {inner.name!r} ({inner.op}): two activations after the "
            "logits change the decision, which lipcert reads from the logits"
        )
    outputs = int(np.prod(graph.shape(source[0])[1:]))
    if node.op == "Sigmoid" and outputs > 1:
        # Exactly, the Sigmoid keeps the argmax; but float32 rounds sigmoid(z) to 1 from z of
        # about 17 on: logits (20, 30) give (1, 1), whose argmax is the first class, at a
        # margin of 10. Refused so that a certified decision is also the runtime's.
        raise UnsupportedOpError(
            f"{label}: over {outputs} outputs its float32 values saturate into ties "
            "(sigmoid(20) and sigmoid(30) are both 1), so a runtime's argmax can differ from "
            "the logits' decision lipcert certifies, far from any boundary; certify the logits"
        )
    if node.op != "Sigmoid":
        _check_softmax_keeps_argmax(node, graph.shape(source[0]), _default_opset(model), label)
    graph.notes.append(
        f"{node.op} at the output ({node.name}) dropped: it keeps the decision, and "
        "certificates use its input, the logits"
    )
    graph.output_name = source[0]


def _check_softmax_keeps_argmax(node: Node, shape: tuple[int, ...], opset: int, label: str) -> None:
    """A (Log)Softmax keeps the argmax of a sample's outputs when it normalises them all at
    once: every per-sample axis outside the normalised ones has size 1, and there are >= 2."""
    rank = len(shape)
    axis = int(node.attr("axis", -1 if opset >= 13 else 1))
    if not -rank <= axis < rank:
        raise UnsupportedOpError(f"{label}: axis {axis} is outside a tensor of rank {rank}")
    axis %= rank
    # before opset 13 the input is flattened to 2-D at `axis`: all axes from it on together
    group = {axis} if opset >= 13 else set(range(axis, rank))
    if 0 in group:
        raise UnsupportedOpError(
            f"{label}: it normalises along the batch axis, across samples; lipcert certifies "
            "the logits of one sample"
        )
    outside = [shape[i] for i in range(1, rank) if i not in group]
    size = int(np.prod([shape[i] for i in group]))
    if any(d != 1 for d in outside) or size < 2:
        raise UnsupportedOpError(
            f"{label}: it normalises {size} of the {int(np.prod(shape[1:]))} outputs of a "
            f"sample at once (axis {axis} of {shape}), so it does not keep the decision the "
            "logits give; lipcert certifies decisions read from the logits"
        )


def _runnable_model(model: onnx.ModelProto, logits_name: str) -> onnx.ModelProto:
    """The model with the logits as its only output (a dropped Softmax is not computed), and
    only the nodes that lead to them: onnxruntime runs every node of a graph, and the others
    were neither checked by the size guard nor bounded (a ConstantOfShape of 2^32 values
    feeding only a second output was allocated by the load-time cross-check)."""
    runnable = onnx.ModelProto()
    runnable.CopyFrom(model)
    del runnable.graph.node[:]
    runnable.graph.node.extend(needed_nodes(list(model.graph.node), logits_name))
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
