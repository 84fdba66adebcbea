"""Which versions of each ONNX op lipcert understands, and which of their attributes.

An op's meaning depends on the model's opset (the version of its schema in force there) and
on its attributes: an opset-10 Pad takes its amounts and fill value from attributes, an
opset-9 Slice its starts and ends, TopK with `sorted=0` returns its values in any order. Every
op that lipcert bounds or executes has an entry here: the schema versions (ONNX's
`since_version`) whose meaning the rules and the executor implement, and the attributes they
read, each with every listed version's default. A node whose version is not listed, or that
carries an attribute not listed, is refused with one line naming the node: a new version or
attribute is refused until someone has read its specification and added it here (a test
compares this table with ONNX's schemas, version by version).

Attributes listed but not read are those that cannot change an inference result, each with
its reason beside it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from lipcert.graph.ir import Graph, Node, refuse

# onnxruntime runs models of opset 7 and later only; older ops (Add with `broadcast`, Dropout
# with `is_test`, Reshape with a `shape` attribute, Pad with `paddings`) are not implemented.
MIN_OPSET = 7


@dataclass(frozen=True)
class OpSupport:
    """The versions of one op lipcert implements, and the attributes it reads."""

    versions: frozenset[int]
    attrs: frozenset[str] = frozenset()
    # Versions in force at opset >= MIN_OPSET that lipcert does not implement, and why.
    refused: dict[int, str] = field(default_factory=dict)


def _support(
    versions: Iterable[int],
    attrs: Iterable[str] = (),
    refused: dict[int, str] | None = None,
) -> OpSupport:
    return OpSupport(frozenset(versions), frozenset(attrs), dict(refused or {}))


# Versions of opset 28, newer than the onnxruntime lipcert is tested with.
_NEWEST = "a version newer than the onnxruntime lipcert is tested with"

_UNARY = {
    "Relu": (6, 13, 14),
    "Abs": (6, 13),
    "Neg": (6, 13),
    "Tanh": (6, 13),
    "Sigmoid": (6, 13),
    "Exp": (6, 13),
    "Sqrt": (6, 13),
    "Softplus": (1, 22),
    "Softsign": (1, 22),
    "Sin": (7, 22),
    "Cos": (7, 22),
    "Atan": (7, 22),
    "Asinh": (9, 22),
    "Erf": (9, 13),
    "Sign": (9, 13),
    "HardSwish": (14, 22),
    "Mish": (18, 22),
    "Identity": (1, 13, 14, 16, 19, 21, 23, 24, 25),
}
_BINARY = {op: (7, 13, 14) for op in ("Add", "Sub", "Mul", "Div")}
_VARIADIC = {"Sum": (6, 8, 13), "Mean": (6, 8, 13), "Max": (6, 8, 12, 13), "Min": (6, 8, 12, 13)}
_REDUCE = {
    "ReduceMax": (1, 11, 12, 13, 18, 20),
    "ReduceMin": (1, 11, 12, 13, 18, 20),
    "ReduceMean": (1, 11, 13, 18),
    "ReduceL1": (1, 11, 13, 18),
    "ReduceL2": (1, 11, 13, 18),
    "ReduceLogSumExp": (1, 11, 13, 18),
    "ReduceSum": (1, 11, 13),
}
_POOL = ("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads")
_CONV = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")

SUPPORT: dict[str, OpSupport] = {
    **{op: _support(v) for op, v in _UNARY.items()},
    **{op: _support(v) for op, v in _BINARY.items()},
    **{op: _support(v) for op, v in _VARIADIC.items()},
    # keepdims, and the axes (an attribute, from opset 18 an input, 13 for ReduceSum)
    **{
        op: _support(v, ("axes", "keepdims", "noop_with_empty_axes"), {28: _NEWEST})
        for op, v in _REDUCE.items()
    },
    "Pow": _support((7, 12, 13, 15)),
    "Gelu": _support((20,), ("approximate",)),
    "LeakyRelu": _support((6, 16), ("alpha",)),
    "PRelu": _support((7, 9, 16)),
    "Elu": _support((6, 22), ("alpha",)),
    "Celu": _support((12,), ("alpha",), {28: _NEWEST}),
    "Selu": _support((6, 22), ("alpha", "gamma")),
    "HardSigmoid": _support((6, 22), ("alpha", "beta")),
    "Shrink": _support((9,), ("bias", "lambd")),
    "Clip": _support((6, 11, 12, 13), ("min", "max")),  # attributes up to opset 10
    # saturate and round_mode only apply to float8 and float4 targets, which the rule refuses
    "Cast": _support(
        (6, 9, 13, 19, 21, 23, 24, 25), ("to", "saturate", "round_mode"), {28: _NEWEST}
    ),
    "Softmax": _support((1, 11, 13), ("axis",)),  # before 13: flattened to 2-D at axis
    "LogSoftmax": _support((1, 11, 13), ("axis",)),
    "Gemm": _support((7, 9, 11, 13), ("alpha", "beta", "transA", "transB")),
    "MatMul": _support((1, 9, 13)),
    "Conv": _support((1, 11, 22), _CONV),
    "ConvTranspose": _support((1, 11, 22), (*_CONV, "output_padding", "output_shape")),
    # momentum only updates running statistics in training mode, which is refused
    "BatchNormalization": _support(
        (7, 9, 14, 15), ("epsilon", "momentum", "spatial", "training_mode")
    ),
    "AveragePool": _support((7, 10, 11, 19, 22), (*_POOL, "strides")),
    # storage_order only changes the indices output, which nothing may use
    "MaxPool": _support((1, 8, 10, 11, 12, 22), (*_POOL, "strides", "storage_order")),
    "LpPool": _support((2, 11, 18, 22), (*_POOL, "strides", "p")),
    "GlobalAveragePool": _support((1, 22)),
    "GlobalMaxPool": _support((1, 22)),
    "GlobalLpPool": _support((2,), ("p",), {22: "onnxruntime has no implementation of it"}),
    "Reshape": _support((5, 13, 14, 19, 21, 23, 24, 25), ("allowzero",)),
    "Flatten": _support((1, 9, 11, 13, 21, 23, 24, 25), ("axis",)),
    "Squeeze": _support((1, 11, 13, 21, 23, 24, 25), ("axes",)),
    "Unsqueeze": _support((1, 11, 13, 21, 23, 24, 25), ("axes",)),
    "Transpose": _support((1, 13, 21, 23, 24, 25), ("perm",)),
    "DepthToSpace": _support((1, 11, 13), ("blocksize", "mode"), {28: _NEWEST}),
    "SpaceToDepth": _support((1, 13), ("blocksize",), {28: _NEWEST}),
    # ratio and seed only act in training mode, which the rule refuses
    "Dropout": _support((7, 10, 12, 13, 22), ("ratio", "seed")),
    "Slice": _support((1, 10, 11, 13), ("starts", "ends", "axes")),  # attributes before 10
    "Split": _support((2, 11, 13, 18), ("axis", "split", "num_outputs")),
    "Concat": _support((4, 11, 13), ("axis",)),
    "Pad": _support((2, 11, 13, 18, 19, 21, 23, 24, 25), ("mode", "pads", "value")),
    "Gather": _support((1, 11, 13), ("axis",)),
    "Expand": _support((8, 13)),
    "Tile": _support((6, 13)),
    "TopK": _support((1, 10, 11, 24), ("axis", "k", "largest", "sorted")),
    "DFT": _support((17, 20), ("axis", "inverse", "onesided")),  # axis: an input from 20
    # Comparisons and Where: only inside fused selects (lipcert.graph.select_patterns); later
    # versions add types only. ScatterND 16 adds reductions add/mul, 18 max/min.
    **{op: _support((7, 9, 13)) for op in ("Greater", "Less")},
    **{op: _support((12, 16)) for op in ("GreaterOrEqual", "LessOrEqual")},
    "Equal": _support((7, 11, 13, 19)),
    "Where": _support((9, 16)),
    **{op: _support((7,)) for op in ("And", "Or", "Xor")},
    "Not": _support((1,)),
    "ScatterND": _support((11, 13, 16, 18), ("reduction",)),
}


def is_lipcert_op(op: str) -> bool:
    """An op lipcert makes itself (a fused pattern, which keeps the nodes it replaces in its
    body): not an ONNX op, so its attributes are lipcert's own. Ops of other domains reach
    the graph as "domain::op" and have no rule."""
    return "::" not in op and op not in _onnx_ops()


@functools.cache
def _onnx_ops() -> frozenset[str]:
    import onnx.defs

    return frozenset(s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == "")


def in_force(op: str, opset: int) -> int | None:
    """The since_version of `op`'s schema at this opset, from ONNX's own table."""
    import onnx.defs

    try:
        return int(onnx.defs.get_schema(op, opset, "").since_version)
    except Exception:  # onnx raises its own SchemaError for an unknown op or version
        return None


def check_node(node: Node, graph: Graph) -> None:
    """Refuse a node (or a node of a fused body) whose version or attributes lipcert does not
    implement, naming it."""
    for inner in node.walk():
        if inner.body or is_lipcert_op(inner.op):
            continue  # a fused node: lipcert wrote its attributes; its body is checked
        _check_one(inner, graph.opset)


def _check_one(node: Node, opset: int) -> None:
    support = SUPPORT.get(node.op)
    if support is None:
        raise refuse(node, f"no version of {node.op} has been reviewed for lipcert")
    if opset < MIN_OPSET:
        why = "unknown" if opset <= 0 else str(opset)
        raise refuse(node, f"the model's opset ({why}) is older than {MIN_OPSET}, not supported")
    version = in_force(node.op, opset)
    if version is None or version not in support.versions:
        reason = support.refused.get(version or 0, "its specification was not reviewed")
        raise refuse(
            node, f"{node.op} version {version} (opset {opset}) is not supported: {reason}"
        )
    unknown = sorted(set(node.attrs) - support.attrs)
    if unknown:
        raise refuse(node, f"attribute {unknown[0]!r} of {node.op} is not supported")
