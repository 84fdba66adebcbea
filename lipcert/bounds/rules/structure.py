"""Rules for ops that move, select or copy elements without arithmetic.

A permutation or a restriction of coordinates has norm 1; an op that copies an element to
c places has norm sqrt(max c). Such norms are computed from the index map itself where the
op copies (Pad in reflect/edge/wrap mode, Gather, Expand, Tile).
"""

from __future__ import annotations

import numpy as np

from lipcert.bounds.numeric import sqrt_up
from lipcert.bounds.registry import EXACT, Combine, LayerBound, refuse, rule
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import pad_source_index


def _one_source(node: Node, graph: Graph) -> str:
    sources = graph.data_inputs(node)
    if len(sources) != 1 or sources[0] != node.inputs[0]:
        raise refuse(node, "expected the data in its first input and constants elsewhere")
    return sources[0]


def _same_size(node: Node, graph: Graph, what: str) -> LayerBound:
    source = _one_source(node, graph)
    in_size = int(np.prod(graph.shape(source)))
    out_size = int(np.prod(graph.shape(node.outputs[0])))
    if in_size != out_size:
        raise refuse(node, f"expected a {what} that keeps {in_size} elements but got {out_size}")
    return LayerBound(1.0, what, exact=True, rounding=EXACT)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(node: Node, graph: Graph) -> LayerBound:
    return _same_size(node, graph, "reshape (same elements)")


@rule("Transpose", "DepthToSpace", "SpaceToDepth")
def permute(node: Node, graph: Graph) -> LayerBound:
    return _same_size(node, graph, "permutation of elements")


@rule("Dropout")
def dropout(node: Node, graph: Graph) -> LayerBound:
    _one_source(node, graph)
    if len(node.inputs) > 2 and node.inputs[2]:
        training = node.inputs[2]
        if not graph.is_constant(training) or bool(np.asarray(graph.constant(training)).any()):
            raise refuse(node, "Dropout in training mode is random")
    return LayerBound(1.0, "identity at inference", exact=True, rounding=EXACT)


@rule("Identity")
def identity(node: Node, graph: Graph) -> LayerBound:
    _one_source(node, graph)
    return LayerBound(1.0, "identity", exact=True, rounding=EXACT)


@rule("Slice")
def slice_(node: Node, graph: Graph) -> LayerBound:
    """A restriction (in any order). Along the batch axis, a step other than 1 picks rows
    whose place in a sample depends on the batch size (a reversing Slice swaps samples), at
    a size of the output that scales with the batch, which lipcert.evaluators.batch_axis
    cannot tell from keeping the samples apart: refused."""
    source = _one_source(node, graph)
    if len(node.inputs) > 1:  # opset 10 on: starts, ends, axes, steps are inputs
        rank = len(graph.shape(source))
        starts = np.asarray(graph.constant(node.inputs[1])).reshape(-1)
        axes = list(range(len(starts)))
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = [int(a) for a in np.asarray(graph.constant(node.inputs[3])).reshape(-1)]
        steps = [1] * len(axes)
        if len(node.inputs) > 4 and node.inputs[4]:
            steps = [int(t) for t in np.asarray(graph.constant(node.inputs[4])).reshape(-1)]
        if any(a % rank == 0 and t != 1 for a, t in zip(axes, steps, strict=True)):
            raise refuse(node, "slicing the batch axis with a step other than 1 mixes samples")
    return LayerBound(1.0, "restriction to a subset of elements", exact=True, rounding=EXACT)


@rule("Split")
def split(node: Node, graph: Graph) -> LayerBound:
    """Each part is a restriction. Along the batch axis, equal parts of a batch hold other
    samples than equal parts of one sample (lipcert.evaluators.batch_axis): refused."""
    source = _one_source(node, graph)
    if int(node.attr("axis", 0)) % len(graph.shape(source)) == 0:
        raise refuse(node, "splitting the batch axis mixes samples")
    return LayerBound(1.0, "each part is a restriction", exact=True, rounding=EXACT)


@rule("Concat")
def concat(node: Node, graph: Graph) -> LayerBound:
    """Stacked outputs: ||(f(x), g(x))|| <= sqrt(Lf^2 + Lg^2) ||x||."""
    axis = int(node.attr("axis", 0))
    if axis % len(graph.shape(node.outputs[0])) == 0:
        raise refuse(node, "concatenating along the batch axis mixes samples")
    if len(graph.data_inputs(node)) == 1:
        return LayerBound(1.0, "one data part beside constants", exact=True, rounding=EXACT)
    return LayerBound(
        1.0,
        "sqrt of the sum of squared part bounds",
        exact=False,
        rounding=EXACT,
        combine=Combine.RSS,
    )


def _copy_gain(counts: np.ndarray) -> float:
    """Norm of an op that copies element i to counts[i] places: sqrt(max count)."""
    return sqrt_up(int(counts.max())) if counts.size else 0.0


@rule("Pad")
def pad(node: Node, graph: Graph) -> LayerBound:
    source = _one_source(node, graph)
    mode = node.attr("mode", "constant")
    if mode == "constant":
        return LayerBound(1.0, "padding with a constant", exact=True, rounding=EXACT)
    if mode not in ("reflect", "edge", "wrap"):
        raise refuse(node, f"unknown pad mode {mode!r}")
    shape = graph.shape(source)
    pads = _pad_amounts(node, graph, len(shape))
    counts = np.ones(shape, dtype=np.int64)
    for axis, (before, after) in enumerate(pads):
        if before == 0 and after == 0:
            continue
        axis_counts = _axis_copy_counts(shape[axis], before, after, mode)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        counts = counts * axis_counts.reshape(view)
    return LayerBound(
        _copy_gain(counts),
        f"{mode} padding copies elements: sqrt(max copies)",
        exact=True,
        rounding=EXACT,
    )


def _pad_amounts(node: Node, graph: Graph, rank: int) -> list[tuple[int, int]]:
    if len(node.inputs) > 1 and node.inputs[1]:
        if not graph.is_constant(node.inputs[1]):
            raise refuse(node, "the pad amounts depend on the input")
        values = [int(v) for v in np.asarray(graph.constant(node.inputs[1])).reshape(-1)]
    else:
        values = [int(v) for v in node.attr("pads", [])]
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        axes = [int(a) % rank for a in np.asarray(graph.constant(node.inputs[3])).reshape(-1)]
    if len(values) != 2 * len(axes) or min(values, default=0) < 0:
        raise refuse(node, f"unusable pads {values!r}")
    amounts = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        amounts[axis] = (values[i], values[i + len(axes)])
    return amounts


def _axis_copy_counts(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """How many output positions along one axis read each input position."""
    counts = np.zeros(n, dtype=np.int64)
    for out in range(-before, n + after):
        counts[pad_source_index(out, n, mode)] += 1
    return counts


@rule("Gather")
def gather(node: Node, graph: Graph) -> LayerBound:
    source = _one_source(node, graph)
    if not graph.is_constant(node.inputs[1]):
        raise refuse(node, "gathering at indices that depend on the input is not Lipschitz")
    indices = np.asarray(graph.constant(node.inputs[1])).reshape(-1)
    axis = int(node.attr("axis", 0)) % len(graph.shape(source))
    if axis == 0:
        raise refuse(node, "gathering along the batch axis mixes samples")
    size = graph.shape(source)[axis]
    counts = np.bincount(indices % size, minlength=size)
    return LayerBound(
        _copy_gain(counts), "sqrt(most copies of one element)", exact=True, rounding=EXACT
    )


@rule("Expand", "Tile")
def expand(node: Node, graph: Graph) -> LayerBound:
    source = _one_source(node, graph)
    copies = int(np.prod(graph.shape(node.outputs[0]))) // max(int(np.prod(graph.shape(source))), 1)
    if node.op == "Tile" and int(np.asarray(graph.constant(node.inputs[1])).reshape(-1)[0]) != 1:
        # copies of the batch, which a Reshape then merges with the samples beside them
        raise refuse(node, "tiling along the batch axis mixes samples")
    if node.op == "Expand":
        in_shape = graph.shape(source)
        out_shape = graph.shape(node.outputs[0])
        padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
        if padded[0] != out_shape[0]:
            raise refuse(node, "expanding along the batch axis mixes samples")
    return LayerBound(
        sqrt_up(copies), f"each element copied {copies} times", exact=True, rounding=EXACT
    )


@rule("TopK")
def top_k(node: Node, graph: Graph) -> LayerBound:
    """The k largest (or smallest) values along an axis, sorted: the first k entries of the
    sorted axis. Sorting is 1-Lipschitz in L2 and keeping k entries is a restriction, so the
    values are 1-Lipschitz, whether k is the whole axis or not.

    With sorted=0 the order of the values is unspecified: a runtime may return them in an
    order that depends on the input, which jumps (not Lipschitz). Only k = 1 has one order.
    """
    source = _one_source(node, graph)
    rank = len(graph.shape(source))
    axis = int(node.attr("axis", -1)) % rank
    if axis == 0:
        raise refuse(node, "sorting along the batch axis mixes samples")
    if len(node.inputs) > 1 and node.inputs[1]:
        k = int(np.asarray(graph.constant(node.inputs[1])).reshape(-1)[0])
    else:
        k = int(node.attr("k", 0))  # an attribute up to opset 9
    if not 1 <= k <= graph.shape(source)[axis]:
        raise refuse(node, f"k = {k} is outside 1..{graph.shape(source)[axis]}")
    if not node.attr("sorted", 1) and k > 1:
        raise refuse(
            node, "TopK with sorted=0 returns its values in an unspecified, input-dependent order"
        )
    which = "largest" if node.attr("largest", 1) else "smallest"
    return LayerBound(
        1.0, f"the {k} {which} values, sorted: 1-Lipschitz", exact=True, rounding=EXACT
    )
