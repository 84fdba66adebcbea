"""Bounds that hold at every input size, for models that leave their size open.

When a model does not fix its spatial size and none is given (`verify` without
--input-shape), the graph is probed at one size (32x32, say) but the bound is stated for
every size. A rule that reads the size (a mean over the map: 1/sqrt(H W); edge padding:
copies that depend on the map's width; SAME padding, present at some sizes only) would be
right at the probe's size and too small at others. So, failing closed, every node goes
through `any_size_bound`:
- ops whose rule reads no size, or switches to a size-free method when `size_known` is
  False, keep their bound;
- ops with a size-free bound of their own get it here (ReduceMean: 1/sqrt(group) <= 1;
  reflect/edge/wrap Pad: each input is copied at most 1 + before + after times per axis;
  average and L2 pooling with SAME padding: windows cut by the padding average fewer
  values; Gather: an element is read at most once per index);
- every other op is refused with a one-line error asking for --input-shape.
A node reading a constant computed from the input's shape (Shape, Size and what follows),
which holds at the probe's size only, is refused too, except where any value keeps the bound
(a Reshape's target, a Slice's or Split's bounds, a constant Pad's amounts).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lipcert.bounds.numeric import mul_up, sqrt_up
from lipcert.bounds.registry import LayerBound, refuse
from lipcert.graph import Graph, Node
from lipcert.graph.affine_blocks import ELEMENT_MOVES
from lipcert.graph.geometry import max_overlap, window

# Ops whose rule gives a bound that holds at every input size.
_ANY_SIZE = frozenset(
    {
        # element-wise (bound from the function or from constant operands)
        "Abs",
        "Add",
        "Asinh",
        "Atan",
        "BatchNormalization",
        "Cast",
        "Celu",
        "Clip",
        "Cos",
        "Div",
        "Elu",
        "Erf",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "LeakyRelu",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "PRelu",
        "Relu",
        "Selu",
        "Shrink",
        "SiLU",
        "Sigmoid",
        "Sin",
        "Softplus",
        "Softsign",
        "Sub",
        "Sum",
        "Tanh",
        # constant weights whose size fixes the size they act on
        "Gemm",
        "MatMul",
        # size-free methods when the size is open (lipcert.bounds.rules, spectral)
        "Conv",
        "ConvTranspose",
        "CircularConv",
        "MaxPool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "AffineBlock",
        "SLLBlock",
        "SandwichBlock",
        # moves and selections of elements: norm 1 at any size
        *ELEMENT_MOVES,
        "Split",
        "Concat",
        "TopK",
        "GroupSort",
        "MaxMin",
        "Householder",  # per pair, constants broadcast over space
        "ReduceMax",
        "ReduceMin",
        "ReduceL2",
        "ReduceLogSumExp",
        # copies counted from the shapes of input and output, the larger at the probe's size
        # (a shape or repeats computed from the input's size are refused below)
        "Expand",
        "Tile",
    }
)
# (op, input index) where a constant computed from the input's size may stand: any value
# there keeps the op's bound.
_SIZE_VALUES_ALLOWED = {
    "Reshape": {1},
    "Slice": {1, 2, 3, 4},
    "Split": {1},
    "Squeeze": {1},
    "Unsqueeze": {1},
}


def any_size_bound(node: Node, graph: Graph, bound: LayerBound) -> LayerBound:
    """The bound of `node` that holds at every input size, or a refusal asking for the size."""
    _refuse_size_dependent_constants(node, graph)
    if node.op in _ANY_SIZE:
        return bound
    if node.op == "ReduceMean":
        return _loosened(bound, 1.0, "1/sqrt(group size) <= 1, any input size")
    if node.op == "Pad" and node.attr("mode", "constant") == "constant":
        return bound
    if node.op == "Pad":
        return _pad_any_size(node, graph, bound)
    if node.op in ("AveragePool", "L2NormPool"):
        return _same_padding_any_size(node, graph, bound)
    if node.op == "Gather":
        indices = np.asarray(graph.constant(node.inputs[1])).reshape(-1)
        return _loosened(
            bound, max(bound.factor, sqrt_up(max(indices.size, 1))), "sqrt(indices), any size"
        )
    raise refuse(node, _ASK)


_ASK = (
    "its bound depends on the input size, which the model leaves open; pass input_shape= "
    "(--input-shape) to bound it at the size you use"
)


def _loosened(bound: LayerBound, factor: float, method: str) -> LayerBound:
    return dataclasses.replace(bound, factor=max(factor, bound.factor), method=method, exact=False)


def _refuse_size_dependent_constants(node: Node, graph: Graph) -> None:
    allowed = _SIZE_VALUES_ALLOWED.get(node.op, set())
    if node.op == "Pad" and node.attr("mode", "constant") == "constant":
        allowed = {1, 2, 3}
    for index, name in enumerate(node.inputs):
        if name and name in graph.size_dependent and index not in allowed:
            raise refuse(
                node,
                f"it reads {name!r}, computed from the input's size, which the model leaves "
                "open; pass input_shape= (--input-shape) to bound it at the size you use",
            )


def _pad_any_size(node: Node, graph: Graph, bound: LayerBound) -> LayerBound:
    """Each output reads one input: along an axis padded by (b, a), an input is read by
    itself and at most by the b + a padded positions, at any length of that axis."""
    rank = len(graph.shape(node.inputs[0]))
    if len(node.inputs) > 1 and node.inputs[1]:
        pads = [int(v) for v in np.asarray(graph.constant(node.inputs[1])).reshape(-1)]
    else:
        pads = [int(v) for v in node.attr("pads", [])]
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        axes = [int(a) % rank for a in np.asarray(graph.constant(node.inputs[3])).reshape(-1)]
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0:
        raise refuse(node, f"unusable pads {pads!r}")
    copies = 1
    for i in range(len(axes)):
        copies *= 1 + pads[i] + pads[i + len(axes)]
    return _loosened(bound, sqrt_up(copies), "sqrt(prod(1 + pads)) copies, any input size")


def _same_padding_any_size(node: Node, graph: Graph, bound: LayerBound) -> LayerBound:
    """With SAME padding not counted in the divisor, some sizes have windows that hold one
    value: the Schur bound then uses divisor 1 (sqrt(m) for averages, sqrt(c m) for L2)."""
    if node.attr("pool_op") == "GlobalAveragePool":
        raise refuse(node, _ASK)
    same = node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    if not same or node.attr("count_include_pad", 0):
        return bound
    kernel = tuple(int(k) for k in node.attr("kernel_shape", []))
    spatial = graph.shape(node.inputs[0])[2:]
    m = max_overlap(window(node, spatial, kernel))
    scale = float(node.attr("scale", 1.0)) if node.op == "L2NormPool" else 1.0
    factor = mul_up(sqrt_up(m), sqrt_up(scale))
    return _loosened(bound, factor, f"Schur bound sqrt(m) with divisor 1 (SAME padding), m = {m}")
