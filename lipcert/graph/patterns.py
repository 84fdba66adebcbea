"""Fusion of patterns that are Lipschitz only as a whole, before the bound rules run.

Exporters write GroupSort, MaxMin, L2-norm pooling or SiLU as several ops, some of which
(Pow, a product of two data tensors) have no Lipschitz bound on their own, and others
(Concat of a min and a max) would be bounded loosely. Each matcher below recognises one
such shape exactly, checks that the inner tensors are used nowhere else, and replaces the
nodes by one fused node that keeps them in its `body`, so executing the graph still runs the
model's own ops. A matcher that does not find its whole pattern changes nothing, and the
ops are then bounded (or refused) one by one.

Also folded here: BatchNormalization after a Conv or Gemm, into that layer's weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lipcert.graph.affine_blocks import find_affine_blocks, match_sliced_circular_conv
from lipcert.graph.fourier_sandwich import find_fourier_sandwiches
from lipcert.graph.ir import Graph, Node
from lipcert.graph.residual_blocks import match_sandwich_block, match_sll_block
from lipcert.graph.select_patterns import SELECT_MATCHERS

Matcher = Callable[[Graph, Node], "Node | None"]


def fuse_patterns(graph: Graph) -> Graph:
    """Apply every matcher until none applies; returns the same graph, fused."""
    _fuse_until_fixed(graph, _MATCHERS)
    # Then the exporter's sliced circular padding, then the affine blocks
    # (lipcert.graph.affine_blocks).
    _fuse_until_fixed(graph, (match_sliced_circular_conv,))
    for block in find_affine_blocks(graph):
        if reads_only_its_inputs(graph, block):
            _replace(graph, block)
    for sandwich in find_fourier_sandwiches(graph):  # lipcert.graph.fourier_sandwich
        if reads_only_its_inputs(graph, sandwich):
            _replace(graph, sandwich)
    return graph


def reads_only_its_inputs(graph: Graph, fused: Node) -> bool:
    """True when every data tensor the body reads is the fused node's input or made inside.

    A body op may have data inputs its matcher never looked at (a Gemm's C, a Clip's min
    computed from x): the fused node's rule bounds the block as a function of its inputs
    alone, so a data path entering the body elsewhere would go unbounded. Such a block is
    left unfused (its ops are bounded, or refused, one by one).
    """
    inner = [n for top in fused.body for n in top.walk()]
    made = {name for n in inner for name in n.outputs}
    allowed = set(fused.inputs) | made
    return all(
        not name or graph.is_constant(name) or name in allowed for n in inner for name in n.inputs
    )


def _fuse_until_fixed(graph: Graph, matchers: tuple[Matcher, ...]) -> None:
    changed = True
    while changed:
        changed = False
        for matcher in matchers:
            for node in list(graph.nodes):
                if node not in graph.nodes:
                    continue
                # A matcher may have rewritten nodes of its match (Householder's constants)
                # and noted it: undone when its node is not taken.
                nodes, notes = graph.nodes, len(graph.notes)
                fused = matcher(graph, node)
                if fused is not None and reads_only_its_inputs(graph, fused):
                    _replace(graph, fused)
                    changed = True
                elif fused is not None:
                    graph.nodes = nodes
                    del graph.notes[notes:]


def _replace(graph: Graph, fused: Node) -> None:
    """Put `fused` where the last node of its body was, and drop the body's nodes."""
    body_ids = {id(n) for n in fused.body}
    position = max(i for i, n in enumerate(graph.nodes) if id(n) in body_ids)
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        if i == position:
            nodes.append(fused)
        elif id(node) not in body_ids:
            nodes.append(node)
    graph.nodes = nodes


# --- helpers -------------------------------------------------------------------------------


class _View:
    """Producers and consumers of a graph, for matching."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()

    def producer(self, name: str, op: str | tuple[str, ...]) -> Node | None:
        node = self.producers.get(name)
        ops = (op,) if isinstance(op, str) else op
        return node if node is not None and node.op in ops else None

    def only_used_by(self, name: str, users: list[Node]) -> bool:
        """True when `name` feeds exactly `users` and is not the graph's output."""
        if name == self.graph.output_name:
            return False
        found = self.consumers.get(name, [])
        return sorted(map(id, found)) == sorted(map(id, users))


def _scalar(graph: Graph, name: str) -> float | None:
    if not name or not graph.is_constant(name):
        return None
    value = np.asarray(graph.constant(name))
    if value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _other_input(node: Node, name: str) -> str:
    """The input of a binary node that is not `name`."""
    first, second = node.inputs[0], node.inputs[1]
    return second if first == name else first


def _axis(value: int, rank: int) -> int:
    return value % rank


def _reduce_axes(graph: Graph, node: Node) -> list[int] | None:
    rank = len(graph.shape(node.inputs[0]))
    if len(node.inputs) > 1 and node.inputs[1]:
        if not graph.is_constant(node.inputs[1]):
            return None
        axes = [int(a) for a in np.asarray(graph.constant(node.inputs[1])).reshape(-1)]
    else:
        axes = [int(a) for a in node.attr("axes", [])]
    return sorted({_axis(a, rank) for a in axes})


def _ordered(graph: Graph, nodes: list[Node]) -> tuple[Node, ...]:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return tuple(sorted(nodes, key=lambda n: order[id(n)]))


def _fused(
    graph: Graph, op: str, root: Node, inputs: tuple[str, ...], body: list[Node], **attrs: object
) -> Node:
    return Node(
        name=root.name,
        op=op,
        inputs=inputs,
        outputs=root.outputs,
        attrs=dict(attrs),
        body=_ordered(graph, body),
    )


# --- GroupSort written as min and max over pairs ---------------------------------------------


def match_group_sort(graph: Graph, concat: Node) -> Node | None:
    """Concat(ReduceMin(t, a), ReduceMax(t, a), axis=a): min and max of each group of t.

    The pair (min, max) of a group is two of its order statistics, a 1-Lipschitz map of the
    group, and distinct groups are disjoint: the whole is 1-Lipschitz (deel-torchlip's
    GroupSort2 and GroupSort with any group size export this way).
    """
    if concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    view = _View(graph)
    low, high = (view.producer(name, ("ReduceMin", "ReduceMax")) for name in concat.inputs)
    if low is None or high is None or {low.op, high.op} != {"ReduceMin", "ReduceMax"}:
        return None
    source = low.inputs[0]
    if high.inputs[0] != source or graph.is_constant(source):
        return None
    rank = len(graph.shape(source))
    axis = _axis(int(concat.attr("axis", 0)), rank)
    # A group of one element would be copied twice (norm sqrt(2)); axis 0 holds samples.
    if axis == 0 or graph.shape(source)[axis] < 2:
        return None
    for reduce in (low, high):
        if int(reduce.attr("keepdims", 1)) != 1 or _reduce_axes(graph, reduce) != [axis]:
            return None
        if not view.only_used_by(reduce.outputs[0], [concat]):
            return None
    return _fused(
        graph,
        "GroupSort",
        concat,
        (source,),
        [low, high, concat],
        axis=axis,
        group_size=graph.shape(source)[axis],
    )


# --- MaxMin: Concat(Relu(x), Relu(-x)) ------------------------------------------------------


def match_max_min(graph: Graph, concat: Node) -> Node | None:
    """Concat(Relu(x), Relu(-x)): per element (max(x,0), max(-x,0)), 1-Lipschitz.

    For scalars a, b: (relu(a)-relu(b))^2 + (relu(-a)-relu(-b))^2 <= (a-b)^2, with equality
    when a and b have the same sign.
    """
    if concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    view = _View(graph)
    relus = [view.producer(name, "Relu") for name in concat.inputs]
    if relus[0] is None or relus[1] is None:
        return None
    for positive, negative in ((relus[0], relus[1]), (relus[1], relus[0])):
        source = positive.inputs[0]
        negation = view.producers.get(negative.inputs[0])
        if negation is None or not _negates(graph, negation, source):
            continue
        inner = [positive, negative, negation]
        if not (
            view.only_used_by(positive.outputs[0], [concat])
            and view.only_used_by(negative.outputs[0], [concat])
            and view.only_used_by(negation.outputs[0], [negative])
        ):
            continue
        axis = _axis(int(concat.attr("axis", 0)), len(graph.shape(source)))
        return _fused(graph, "MaxMin", concat, (source,), [*inner, concat], axis=axis)
    return None


def _negates(graph: Graph, node: Node, source: str) -> bool:
    if node.op == "Neg":
        return node.inputs[0] == source
    if node.op == "Mul" and source in node.inputs:
        return _scalar(graph, _other_input(node, source)) == -1.0
    return False


# --- GroupSort written as Max/Min of disjoint slices ------------------------------------------


def match_sorted_slices(graph: Graph, concat: Node) -> Node | None:
    """Concat(Max(a, b), Min(a, b)) with a, b disjoint slices of one tensor x.

    Element-wise (max, min) of a pair sorts the pair, and the pairs are disjoint sets of x's
    elements: 1-Lipschitz in x.
    """
    if concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    view = _View(graph)
    first, second = (view.producer(name, ("Max", "Min")) for name in concat.inputs)
    if first is None or second is None or {first.op, second.op} != {"Max", "Min"}:
        return None
    if len(first.inputs) != 2 or set(first.inputs) != set(second.inputs):
        return None
    parts = [first, second]
    a, b = parts[0].inputs
    # Pairs must match one to one: broadcasting a smaller slice would copy its elements.
    shapes = {
        graph.shape(a),
        graph.shape(b),
        graph.shape(first.outputs[0]),
        graph.shape(second.outputs[0]),
    }
    if len(shapes) != 1:
        return None
    pieces = _disjoint_pieces(graph, view, a, b)
    if pieces is None:
        return None
    source, slicers = pieces
    for part in parts:
        if not view.only_used_by(part.outputs[0], [concat]):
            return None
    for name in (a, b):
        if not view.only_used_by(name, list(parts)):
            return None
    body = list({id(n): n for n in [*slicers, *parts, concat]}.values())
    return _fused(graph, "GroupSort", concat, (source,), body, group_size=2)


def _disjoint_pieces(graph: Graph, view: _View, a: str, b: str) -> tuple[str, list[Node]] | None:
    """When a and b are disjoint parts of one tensor, that tensor and the nodes cutting it."""
    node_a, node_b = view.producers.get(a), view.producers.get(b)
    if node_a is None or node_b is None:
        return None
    if node_a is node_b and node_a.op == "Split" and a != b:
        return node_a.inputs[0], [node_a]
    if node_a.op != "Slice" or node_b.op != "Slice" or node_a.inputs[0] != node_b.inputs[0]:
        return None
    source = node_a.inputs[0]
    shape = graph.shape(source)
    ranges_a, ranges_b = _slice_sets(graph, node_a, shape), _slice_sets(graph, node_b, shape)
    if ranges_a is None or ranges_b is None:
        return None
    # Two boxes of indices are disjoint when they are disjoint along at least one axis.
    if not any(not (sa & sb) for sa, sb in zip(ranges_a, ranges_b, strict=True)):
        return None
    return source, [node_a, node_b]


def _slice_sets(graph: Graph, node: Node, shape: tuple[int, ...]) -> list[set[int]] | None:
    values = []
    for index in range(1, 5):
        name = node.inputs[index] if index < len(node.inputs) else ""
        if name and not graph.is_constant(name):
            return None
        values.append(np.asarray(graph.constant(name)).reshape(-1).tolist() if name else None)
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    sets = [set(range(n)) for n in shape]
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(int(axis), len(shape))
        sets[axis] = set(range(shape[axis])[slice(int(start), int(end), int(step))])
    return sets


# --- L2-norm pooling ------------------------------------------------------------------------


def match_l2_pool(graph: Graph, root: Node) -> Node | None:
    """sqrt(c * AveragePool(x^2)): the L2 norm of each window times sqrt(c / divisor).

    Matches deel-torchlip's ScaledL2NormPool2d and torch's lp_pool2d(p=2) as exported:
    Pow(x, 2) -> AveragePool -> [Sign(a) * Relu(Abs(a)) | Relu | Abs] -> [Mul by c] ->
    Pow(., 0.5) or Sqrt. The optional wrappers are the identity on the non-negative averages.
    """
    if root.op == "Sqrt" or (root.op == "Pow" and _scalar(graph, root.inputs[1]) == 0.5):
        current = root.inputs[0]
    else:
        return None
    view = _View(graph)
    body = [root]
    scale = 1.0
    mul = view.producer(current, "Mul")
    if mul is not None and len(graph.data_inputs(mul)) == 1:
        factor = _scalar(graph, _other_input(mul, graph.data_inputs(mul)[0]))
        if factor is None or factor <= 0:
            return None
        scale = factor
        body.append(mul)
        current = graph.data_inputs(mul)[0]
    wrapper = _identity_on_nonnegative(graph, view, current)
    if wrapper is not None:
        wrapped, wrapper_nodes = wrapper
        body.extend(wrapper_nodes)
        current = wrapped
    pool = view.producer(current, ("AveragePool", "GlobalAveragePool"))
    if pool is None:
        return None
    square = view.producer(pool.inputs[0], ("Pow", "Mul"))
    if square is None or not _squares(graph, square):
        return None
    source = square.inputs[0]
    body.extend([pool, square])
    for node in body[1:]:
        if not view.only_used_by(node.outputs[0], [n for n in body if node.outputs[0] in n.inputs]):
            return None
    attrs = {k: v for k, v in pool.attrs.items()}
    return _fused(graph, "L2NormPool", root, (source,), body, pool_op=pool.op, scale=scale, **attrs)


def _squares(graph: Graph, node: Node) -> bool:
    if node.op == "Pow":
        return _scalar(graph, node.inputs[1]) == 2.0
    return (
        node.op == "Mul"
        and node.inputs[0] == node.inputs[1]
        and not graph.is_constant(node.inputs[0])
    )


def _identity_on_nonnegative(graph: Graph, view: _View, name: str) -> tuple[str, list[Node]] | None:
    """Sign(a) * Relu(Abs(a)), Relu(a) or Abs(a): all equal a when a >= 0."""
    node = view.producers.get(name)
    if node is None:
        return None
    if node.op in ("Relu", "Abs"):
        return node.inputs[0], [node]
    if node.op == "Mul" and len(node.inputs) == 2:
        sign = next(
            (view.producers.get(n) for n in node.inputs if view.producer(n, "Sign") is not None),
            None,
        )
        relu = next(
            (view.producers.get(n) for n in node.inputs if view.producer(n, "Relu") is not None),
            None,
        )
        if sign is None or relu is None:
            return None
        absolute = view.producer(relu.inputs[0], "Abs")
        if absolute is None or absolute.inputs[0] != sign.inputs[0]:
            return None
        return sign.inputs[0], [node, sign, relu, absolute]
    return None


# --- SiLU -----------------------------------------------------------------------------------


def match_silu(graph: Graph, mul: Node) -> Node | None:
    """x * Sigmoid(x), the SiLU (swish) activation."""
    if mul.op != "Mul" or len(mul.inputs) != 2:
        return None
    view = _View(graph)
    for name in mul.inputs:
        sigmoid = view.producer(name, "Sigmoid")
        if (
            sigmoid is not None
            and sigmoid.inputs[0] == _other_input(mul, name)
            and view.only_used_by(sigmoid.outputs[0], [mul])
        ):
            return _fused(graph, "SiLU", mul, (sigmoid.inputs[0],), [sigmoid, mul])
    return None


# --- circular convolution -------------------------------------------------------------------


def match_circular_conv(graph: Graph, conv: Node) -> Node | None:
    """Pad(mode=wrap) on the spatial axes, then an unpadded Conv: a circular convolution."""
    if conv.op != "Conv":
        return None
    view = _View(graph)
    pad = view.producer(conv.inputs[0], "Pad")
    if pad is None or pad.attr("mode", "constant") != "wrap":
        return None
    if any(int(p) for p in conv.attr("pads", [])) or conv.attr("auto_pad", "NOTSET") not in (
        "NOTSET",
        "VALID",
        "",
    ):
        return None
    if not view.only_used_by(pad.outputs[0], [conv]) or len(pad.inputs) < 2:
        return None
    if not graph.is_constant(pad.inputs[1]) or (len(pad.inputs) > 3 and pad.inputs[3]):
        return None
    amounts = [int(v) for v in np.asarray(graph.constant(pad.inputs[1])).reshape(-1)]
    rank = len(amounts) // 2
    begin, end = amounts[:rank], amounts[rank:]
    if begin[:2] != [0, 0] or end[:2] != [0, 0] or not graph.is_constant(conv.inputs[1]):
        return None
    # Only a wrap of exactly the kernel's reach makes the valid conv a circular one.
    kernel = np.asarray(graph.constant(conv.inputs[1])).shape[2:]
    dilations = [int(d) for d in conv.attr("dilations", [1] * len(kernel))]
    for axis, (k, d) in enumerate(zip(kernel, dilations, strict=True)):
        if begin[2 + axis] + end[2 + axis] != (k - 1) * d:
            return None
    attrs = dict(conv.attrs)
    attrs["pads"] = begin[2:] + end[2:]
    attrs.pop("auto_pad", None)
    return Node(
        name=conv.name,
        op="CircularConv",
        inputs=(pad.inputs[0], *conv.inputs[1:]),
        outputs=conv.outputs,
        attrs=attrs,
        body=_ordered(graph, [pad, conv]),
    )


# --- BatchNormalization folded into the layer before it ------------------------------------


def match_folded_batchnorm(graph: Graph, bn: Node) -> Node | None:
    """Conv or Gemm followed by inference BatchNorm: one layer with scaled weights.

    BN(y) = s * y + t per channel, s = gamma / sqrt(var + eps): scaling the layer's output
    channels by s (rows of the weight) and adjusting its bias gives the same function, whose
    norm is bounded as one operator (tighter than the product of the two norms).
    """
    if bn.op != "BatchNormalization" or bn.attr("training_mode", 0):
        return None
    if not all(name and graph.is_constant(name) for name in bn.inputs[1:5]):
        return None
    view = _View(graph)
    layer = view.producer(bn.inputs[0], ("Conv", "Gemm"))
    if layer is None or not view.only_used_by(layer.outputs[0], [bn]):
        return None
    if not graph.is_constant(layer.inputs[1]) or len(graph.shape(bn.inputs[0])) < 2:
        return None
    gamma, beta, mean, var = (
        np.asarray(graph.constant(n), dtype=np.float64) for n in bn.inputs[1:5]
    )
    scale = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    weight = np.asarray(graph.constant(layer.inputs[1]), dtype=np.float64)
    if layer.op == "Conv":
        folded = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    else:
        if layer.attr("transA", 0):
            return None
        alpha = float(layer.attr("alpha", 1.0))
        # Gemm's output feature j uses column j of op(B): scale those columns.
        folded = alpha * (
            weight * scale[:, None] if layer.attr("transB", 0) else weight * scale[None, :]
        )
    weight_name = graph.fresh_name(f"{layer.name}/batchnorm_folded_weight")
    graph.constants[weight_name] = folded
    attrs = {k: v for k, v in layer.attrs.items() if k != "alpha"}
    del beta, mean
    return Node(
        name=f"{layer.name}+{bn.name}",
        op=layer.op,
        inputs=(layer.inputs[0], weight_name),
        outputs=bn.outputs,
        attrs=attrs,
        body=_ordered(graph, [layer, bn]),
    )


_MATCHERS: tuple[Matcher, ...] = (
    match_folded_batchnorm,
    *SELECT_MATCHERS,  # lipcert.graph.select_patterns: Where/Greater as Max, Min, MinMax
    match_sll_block,  # x - W D s(W^T x + b): lipcert.graph.residual_blocks
    match_sandwich_block,  # W2 D s(W1 x + b) (LBDN): lipcert.graph.residual_blocks
    match_circular_conv,
    match_group_sort,
    match_max_min,
    match_sorted_slices,
    match_l2_pool,
    match_silu,
)

__all__ = ["fuse_patterns"]
