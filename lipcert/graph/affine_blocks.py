"""Affine blocks: subgraphs that are one operator x -> A x + c, fused so A is bounded whole.

Op by op, a residual x + conv(x) is bounded by 1 + ||conv|| and a truncated Taylor series
sum_k A^k / k! by e^||A||, while the operator itself may be orthogonal. This pass finds each
maximal connected set of affine ops (convolutions and dense layers with constant weights,
sums of branches, scalings, padding, slicing, reshapes, average pooling, DFT) that reads one
tensor and writes one tensor, and replaces it by one `AffineBlock` node whose `body` keeps
the original nodes: executing the graph still runs the model's own ops, and the bound rule
(lipcert.bounds.rules.affine_blocks) bounds the block as one operator. The replacing is done
by lipcert.graph.patterns.fuse_patterns.

Also here: the TorchScript exporter's circular padding, written as Slice + Concat along each
spatial axis before an unpadded Conv, is fused into a `CircularConv` (as Pad(mode=wrap)
is in lipcert.graph.patterns).
"""

from __future__ import annotations

import numpy as np

from lipcert.graph.ir import Graph, Node

# Ops that move or select elements of one tensor (their other inputs constant).
ELEMENT_MOVES = frozenset(
    {
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "DepthToSpace",
        "SpaceToDepth",
        "Identity",
        "Dropout",
        "Slice",
    }
)
# Ops that are affine in their data inputs when their other inputs are constant.
_STRUCTURAL = ELEMENT_MOVES | {"Pad", "Neg", "Gather"}
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "CircularConv", "Gemm", "MatMul", "DFT"})
_COMBINING = frozenset({"Add", "Sub", "Sum", "Concat"})
_SCALING = frozenset({"Mul", "Div", "BatchNormalization"})
_POOLING = frozenset({"AveragePool", "GlobalAveragePool"})
# Ops between a linear head and the logits (as lipcert.bounds.compose reads them): the head is
# kept apart so that pairs of classes get their own bounds, so it never joins a block.
_TAIL_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Cast"}
)


def _ordered(graph: Graph, nodes: list[Node]) -> tuple[Node, ...]:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return tuple(sorted(nodes, key=lambda n: order[id(n)]))


def _constant_ints(graph: Graph, name: str) -> list[int] | None:
    if not name or not graph.is_constant(name):
        return None
    return [int(v) for v in np.asarray(graph.constant(name)).reshape(-1)]


# --- circular padding written as Slice + Concat ------------------------------------------------


def match_sliced_circular_conv(graph: Graph, conv: Node) -> Node | None:
    """Concat(x[..., n-b:], x, x[..., :e]) along each spatial axis, then an unpadded Conv.

    This is how torch.onnx.export (TorchScript) writes padding_mode='circular' and
    F.pad(mode='circular'): the result is the wrap padding of x, so the Conv is a circular
    convolution when the wrap on each spatial axis adds exactly the dilated kernel extent - 1
    (as match_circular_conv requires of Pad(mode=wrap)). The slices must take exactly the
    last b and first e positions of the tensor being padded, and every intermediate tensor
    must be used only inside the pattern.
    """
    if conv.op != "Conv" or len(conv.inputs) < 2 or not graph.is_constant(conv.inputs[1]):
        return None
    if any(int(p) for p in conv.attr("pads", [])) or conv.attr("auto_pad", "NOTSET") not in (
        "NOTSET",
        "VALID",
        "",
    ):
        return None
    producers = graph.producers()
    consumers = graph.consumers()
    current = conv.inputs[0]
    rank = len(graph.shape(current))
    begin = [0] * rank
    end = [0] * rank
    seen_axes: set[int] = set()
    body: list[Node] = [conv]
    users: list[Node] = [conv]
    while True:
        concat = producers.get(current)
        if concat is None or concat.op != "Concat" or current == graph.output_name:
            break
        if sorted(map(id, consumers.get(current, []))) != sorted(map(id, users)):
            break
        wrap = _wrap_along_axis(graph, producers, consumers, concat)
        if wrap is None:
            break
        axis, before, after, source, slices = wrap
        if axis in seen_axes or axis < 2:
            return None
        seen_axes.add(axis)
        begin[axis], end[axis] = before, after
        body.extend([concat, *slices])
        users = [concat, *slices]
        current = source
    if len(body) == 1:
        return None
    kernel = np.asarray(graph.constant(conv.inputs[1])).shape[2:]
    if len(kernel) != rank - 2:
        return None
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
        inputs=(current, *conv.inputs[1:]),
        outputs=conv.outputs,
        attrs=attrs,
        body=_ordered(graph, body),
    )


def _wrap_along_axis(
    graph: Graph,
    producers: dict[str, Node],
    consumers: dict[str, list[Node]],
    concat: Node,
) -> tuple[int, int, int, str, list[Node]] | None:
    """(axis, b, e, x, slices) when `concat` is Concat(x[n-b:], x, x[:e]) along one axis."""
    parts = list(concat.inputs)
    rank = len(graph.shape(concat.outputs[0]))
    axis = int(concat.attr("axis", 0)) % rank
    slice_parts = [
        p for p in parts if (producers.get(p) is not None and producers[p].op == "Slice")
    ]
    sources = {producers[p].inputs[0] for p in slice_parts}
    middle = [p for p in parts if p not in slice_parts]
    if len(middle) != 1 or len(sources) != 1 or middle[0] not in sources:
        return None
    source = middle[0]
    if graph.is_constant(source):
        return None
    position = parts.index(source)
    left, right = parts[:position], parts[position + 1 :]
    if len(left) > 1 or len(right) > 1 or not (left or right):
        return None
    n = graph.shape(source)[axis]
    before = after = 0
    slices: list[Node] = []
    for names, last in ((left, True), (right, False)):
        if not names:
            continue
        node = producers[names[0]]
        taken = _sliced_positions(graph, node, axis)
        if taken is None or not taken:
            return None
        count = len(taken)
        wanted = list(range(n - count, n)) if last else list(range(count))
        if taken != wanted:
            return None
        if consumers.get(names[0], []) != [concat]:
            return None
        slices.append(node)
        if last:
            before = count
        else:
            after = count
    return axis, before, after, source, slices


def _sliced_positions(graph: Graph, node: Node, axis: int) -> list[int] | None:
    """The positions a Slice keeps along `axis`, when it keeps everything along the others."""
    values = []
    for index in range(1, 5):
        name = node.inputs[index] if index < len(node.inputs) else ""
        if name and not graph.is_constant(name):
            return None
        values.append(_constant_ints(graph, name) if name else None)
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    shape = graph.shape(node.inputs[0])
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    kept: list[int] | None = None
    for start, stop, ax, step in zip(starts, ends, axes, steps, strict=True):
        ax = ax % len(shape)
        positions = list(range(shape[ax])[slice(start, stop, step)])
        if ax != axis:
            if positions != list(range(shape[ax])):
                return None
            continue
        if kept is not None:
            return None
        kept = positions
    return kept


# --- affine blocks -----------------------------------------------------------------------------


def is_affine(graph: Graph, node: Node) -> bool:
    """True when `node` is affine in its data inputs (its other inputs constant)."""
    op = node.op
    data = graph.data_inputs(node)
    if not data or len(node.outputs) != 1 or op not in _AFFINE_OPS:
        return False
    constants = [n for n in node.inputs if n and graph.is_constant(n)]
    if op in _STRUCTURAL or op in _POOLING:
        if op == "Pad" and node.attr("mode", "constant") not in (
            "constant",
            "reflect",
            "edge",
            "wrap",
        ):
            return False
        if op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
            return False
        return len(data) == 1 and data[0] == node.inputs[0]
    if op in ("Conv", "ConvTranspose", "CircularConv"):
        return (
            len(data) == 1
            and data[0] == node.inputs[0]
            and len(node.inputs) > 1
            and (node.inputs[1] in constants)
        )
    if op == "Gemm":
        return len(data) == 1 and data[0] == node.inputs[0] and not node.attr("transA", 0)
    if op == "MatMul":
        return len(data) == 1
    if op == "DFT":
        return len(data) == 1 and data[0] == node.inputs[0]
    if op in ("Mul", "Div"):
        if len(data) != 1:
            return False
        return op == "Mul" or data[0] == node.inputs[0]
    if op == "BatchNormalization":
        return len(data) == 1 and data[0] == node.inputs[0] and not node.attr("training_mode", 0)
    if op in ("Add", "Sub", "Sum"):
        out = graph.shape(node.outputs[0])
        # Broadcasting a data branch copies it: leave that to the op's own rule.
        return all(graph.shape(name) == out for name in data) if len(data) > 1 else True
    if op == "Concat":
        rank = len(graph.shape(node.outputs[0]))
        return int(node.attr("axis", 0)) % rank != 0
    return False


_AFFINE_OPS = _STRUCTURAL | _WEIGHTED | _COMBINING | _SCALING | _POOLING


def find_affine_blocks(graph: Graph) -> list[Node]:
    """The fused AffineBlock nodes of `graph` (the graph itself is not changed).

    A block is a connected set of affine nodes, connected through the tensors they pass
    each other, with one entry tensor (the only data tensor it reads from outside) and one
    exit tensor (the only one it writes that is read outside, or the graph's output). A
    block is fused when it holds a weighted op (convolution, dense layer, DFT) and either
    a second one or a sum or concatenation of branches: otherwise the ops' own rules are
    already the bound of the whole.
    """
    excluded = _head_nodes(graph)
    candidates = [n for n in graph.nodes if id(n) not in excluded and is_affine(graph, n)]
    ids = {id(n) for n in candidates}
    producers = graph.producers()
    parent = {id(n): id(n) for n in candidates}

    def root(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    cuts = _fourier_cuts(graph, candidates, ids)
    for node in candidates:
        for name in graph.data_inputs(node):
            source = producers.get(name)
            if source is not None and id(source) in ids and name not in cuts:
                parent[root(id(node))] = root(id(source))
    groups: dict[int, list[Node]] = {}
    for node in candidates:
        groups.setdefault(root(id(node)), []).append(node)
    consumers = graph.consumers()
    blocks = []
    for members in groups.values():
        block = _block_node(graph, members, consumers)
        if block is not None:
            blocks.append(block)
    return blocks


def _fourier_cuts(graph: Graph, candidates: list[Node], ids: set[int]) -> set[str]:
    """Outputs of one-sided inverse DFTs that reach another weighted op through a chain of
    one-input ops (reshapes, a pixel unshuffle, scalings, a bias): the blocks are cut there.

    LBDN's convolutional Sandwich layers follow each other with no activation between:
    without the cut, the second half of one layer and the first half of the next would be
    one block of two DFT round trips, which neither the per-frequency bound nor the sandwich
    certificate (lipcert.graph.fourier_sandwich) reads. Cut, each half is one Fourier block
    (the product of two blocks' norms bounds their composition; both are exact for
    orthogonal layers).
    """
    consumers = graph.consumers()
    cuts: set[str] = set()
    for node in candidates:
        if node.op != "DFT" or not node.attr("inverse", 0) or not node.attr("onesided", 0):
            continue
        name = current = node.outputs[0]
        while True:
            users = consumers.get(current, [])
            if len(users) != 1 or id(users[0]) not in ids or current == graph.output_name:
                break
            user = users[0]
            if user.op in _WEIGHTED:
                cuts.add(name)
                break
            if user.op in _COMBINING or len(graph.data_inputs(user)) != 1:
                break
            current = user.outputs[0]
    return cuts


def _block_node(graph: Graph, members: list[Node], consumers: dict[str, list[Node]]) -> Node | None:
    member_ids = {id(n) for n in members}
    produced = {name for n in members for name in n.outputs if name}
    entries = {name for n in members for name in graph.data_inputs(n) if name not in produced}
    exits = {
        name
        for name in produced
        if name == graph.output_name
        or any(id(user) not in member_ids for user in consumers.get(name, []))
    }
    if len(entries) != 1 or len(exits) != 1:
        return None
    weighted = sum(n.op in _WEIGHTED for n in members)
    combines = any(n.op in _COMBINING and len(graph.data_inputs(n)) > 1 for n in members)
    if weighted == 0 or (weighted < 2 and not combines):
        return None
    body = _ordered(graph, members)
    (entry,), (exit_,) = entries, exits
    return Node(
        name=f"{body[0].name}..{body[-1].name}",
        op="AffineBlock",
        inputs=(entry,),
        outputs=(exit_,),
        attrs={"ops": len(_leaves(body))},
        body=body,
    )


def _leaves(nodes: tuple[Node, ...] | list[Node]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.extend(_leaves(node.body) if node.body else [node])
    return found


def _head_nodes(graph: Graph) -> set[int]:
    """The linear head (a Gemm/MatMul) and the per-logit ops after it, as compose finds them."""
    producers = graph.producers()
    found: set[int] = set()
    name = graph.output_name
    while True:
        node = producers.get(name)
        if node is None:
            return set()
        sources = graph.data_inputs(node)
        if len(sources) != 1:
            return set()
        found.add(id(node))
        if node.op in ("Gemm", "MatMul"):
            return found
        if node.op not in _TAIL_OPS or node.body:
            return set()
        name = sources[0]


__all__ = ["ELEMENT_MOVES", "find_affine_blocks", "is_affine", "match_sliced_circular_conv"]
