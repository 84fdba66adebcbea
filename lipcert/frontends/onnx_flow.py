"""What an ONNX graph's tensors depend on, decided before anything runs.

- `needed_nodes`: the nodes that lead to the output, following the names that subgraphs read
  from enclosing scopes at any depth. The rest is never executed, not even by the probe.
- `data_flow`: which tensors depend on the input's values ("data"), and which have a shape
  that depends on them. A value reached from the input through any path (an input, or a name
  a subgraph reads at any depth) is data. The shape of a tensor is fixed by the input's shape
  alone only when every op on the way computes its output's shape from its inputs' shapes and
  from constants; otherwise (NonZero, Unique, Compress, TopK with k from data, a Reshape to a
  shape computed from data, control flow on data, ops lipcert does not know...) the shape is
  data too, and so is a Shape or Size of it.
- `refuse_unbounded_work`: Loop and Scan, anywhere in the nodes that run, are refused: their
  work and their data dependence cannot be bounded before running them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import onnx

from lipcert.errors import UnsupportedOpError

# Ops whose output depends only on the input's shape (not on its values).
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Ops whose output is random: a model that uses them has no fixed function to certify.
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
# Control flow whose amount of work depends on values: never executed.
LOOP_OPS = frozenset({"Loop", "Scan"})

# Ops whose output shape is a function of their inputs' shapes and attributes, whatever the
# values, except for the inputs listed: their values set the output's shape.
_SHAPE_SETTING_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 3}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "OneHot": frozenset({1}),
    "CenterCropPad": frozenset({1, 2}),
    "MaxUnpool": frozenset({2}),
    "DFT": frozenset({1, 2}),
    "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "ReduceSum": frozenset({1}),
    "ReduceProd": frozenset({1}),
    "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}),
    "ReduceLogSum": frozenset({1}),
    "ReduceLogSumExp": frozenset({1}),
    "ReduceSumSquare": frozenset({1}),
    "Col2Im": frozenset({1, 2, 3}),
    "AffineGrid": frozenset({1}),
}
# Ops whose output shape follows their inputs' shapes and attributes only.
_SHAPE_FROM_SHAPES = frozenset(
    {
        # element-wise, one input or broadcasting
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Cos",
        "Cosh",
        "Div",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "IsInf",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pow",
        "PRelu",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Softplus",
        "Softsign",
        "Sqrt",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Where",
        "Xor",
        "Dropout",
        "Softmax",
        "LogSoftmax",
        "Hardmax",
        "CumSum",
        "Trilu",
        "LRN",
        "Einsum",
        "QuantizeLinear",
        "DequantizeLinear",
        # layers
        "AveragePool",
        "BatchNormalization",
        "Conv",
        "ConvTranspose",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "GroupNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "MaxPool",
        "MaxRoiPool",
        "RoiAlign",
        "GridSample",
        "DeformConv",
        # moves
        "Concat",
        "DepthToSpace",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "ScatterElements",
        "ScatterND",
        "SpaceToDepth",
        "Transpose",
        "ReverseSequence",
        "ArgMax",
        "ArgMin",
        "EyeLike",
        "Shape",
        "Size",
        "Constant",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    }
    | set(_SHAPE_SETTING_INPUTS)
)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name of a graph and of its subgraphs, at any depth: a tensor
    lipcert adds must take a name none of them uses (onnxruntime takes the last of two
    initializers of one name, and refuses two nodes of one name)."""
    names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    names |= {i.name for i in [*graph.input, *graph.output, *graph.value_info]}
    for node in graph.node:
        names |= {node.name, *node.input, *node.output}
        for sub in subgraphs(node):
            names |= graph_names(sub)
    return names


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The names a node's subgraphs read from enclosing scopes, at any depth."""
    names: set[str] = set()
    for graph in subgraphs(node):
        names |= _graph_outer_reads(graph)
    return names


def _graph_outer_reads(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input}
    defined |= {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads |= {name for name in node.input if name and name not in defined}
        reads |= {name for name in outer_reads(node) if name not in defined}
        defined |= {name for name in node.output if name}
    return reads


def all_reads(node: onnx.NodeProto) -> set[str]:
    """A node's explicit inputs and the names its subgraphs read from outside."""
    return {name for name in node.input if name} | outer_reads(node)


def needed_nodes(nodes: list[onnx.NodeProto], output_name: str) -> list[onnx.NodeProto]:
    """The nodes that lead to `output_name`, in their order."""
    needed = {output_name}
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output if name):
            kept.append(node)
            needed |= all_reads(node)
    return kept[::-1]


def nested_nodes(
    nodes: Iterable[onnx.NodeProto], functions: Iterable[onnx.FunctionProto] = ()
) -> Iterator[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(top-level node, node) for every node and every node of its subgraphs and of the
    local functions it calls, at any depth. A function is (domain, name, overload) and a node
    calls the overload it names: every overload of the name is walked (onnxruntime runs the
    named one, not the last one defined)."""
    by_name: dict[tuple[str, str], list[onnx.FunctionProto]] = {}
    for function in functions:
        by_name.setdefault((function.domain, function.name), []).append(function)

    def walk(top: onnx.NodeProto, node: onnx.NodeProto, seen: frozenset) -> Iterator:
        yield top, node
        for graph in subgraphs(node):
            for inner in graph.node:
                yield from walk(top, inner, seen)
        key = (node.domain, node.op_type)
        if key in by_name and key not in seen:
            for function in by_name[key]:
                for inner in function.node:
                    yield from walk(top, inner, seen | {key})

    for node in nodes:
        yield from walk(node, node, frozenset())


def refuse_random_and_loops(
    nodes: list[onnx.NodeProto], functions: Iterable[onnx.FunctionProto]
) -> None:
    """Random ops have no fixed function; loops have no work bound lipcert can check."""
    for top, node in nested_nodes(nodes, functions):
        where = "" if node is top else f" (inside {_label(top)})"
        if node.op_type in RANDOM_OPS:
            raise UnsupportedOpError(
                f"{node_label(node)}{where} draws random numbers: a model "
                "must compute a fixed function to be certified"
            )
        if node.op_type in LOOP_OPS:
            raise UnsupportedOpError(
                f"{node_label(node)}{where}: loops are not supported; "
                "lipcert cannot bound their work or what they read before running them"
            )


def node_label(node: onnx.NodeProto) -> str:
    """How refusals name a node: node 'name' (OpType), the op type where it has no name."""
    return f"node {_label(node)} ({node.op_type})"


def _label(node: onnx.NodeProto) -> str:
    return repr(node.name or node.op_type)


@dataclass
class Flow:
    """Per tensor: does its value depend on the input's values; does its shape."""

    is_data: dict[str, bool]
    shape_varies: dict[str, bool]
    # For a tensor whose shape depends on values: the node where that starts.
    shape_origin: dict[str, onnx.NodeProto]


def data_flow(nodes: list[onnx.NodeProto], input_name: str) -> Flow:
    """Which tensors depend on the input's values, and which have value-dependent shapes."""
    flow = Flow(is_data={input_name: True}, shape_varies={input_name: False}, shape_origin={})
    for node in nodes:
        reads = all_reads(node)
        data_reads = {name for name in reads if flow.is_data.get(name, False)}
        varying = [name for name in reads if flow.shape_varies.get(name, False)]
        if node.op_type in SHAPE_ONLY_OPS:
            # the value is the input's shape: data exactly when that shape is
            depends = bool(varying)
            shape_varies = False
        else:
            depends = bool(data_reads)
            shape_varies = bool(varying) or _sets_shape_from(node, data_reads)
        origin = flow.shape_origin.get(varying[0]) if varying else node
        for name in node.output:
            if name:
                flow.is_data[name] = depends
                flow.shape_varies[name] = shape_varies
                if shape_varies and origin is not None:
                    flow.shape_origin[name] = origin
    return flow


def _sets_shape_from(node: onnx.NodeProto, data_reads: set[str]) -> bool:
    """Whether data read by this node can change its output's shape."""
    if not data_reads:
        return False
    if node.domain not in ("", "ai.onnx") or node.op_type not in _SHAPE_FROM_SHAPES:
        return True  # control flow, NonZero, Unique, Compress, unknown ops: fail closed
    positions = _SHAPE_SETTING_INPUTS.get(node.op_type, frozenset())
    return any(node.input[i] in data_reads for i in positions if i < len(node.input))


def shape_derived(nodes: list[onnx.NodeProto], flow: Flow) -> set[str]:
    """Constant tensors computed from the shape of a data tensor (Shape, Size, and what is
    computed from them): their value holds for the input shape of the probe only."""
    derived: set[str] = set()
    for node in nodes:
        reads = all_reads(node)
        from_shape = node.op_type in SHAPE_ONLY_OPS and any(
            flow.is_data.get(name, False) for name in reads
        )
        if from_shape or reads & derived:
            derived |= {name for name in node.output if name and not flow.is_data.get(name, False)}
    return derived
