"""Blocks that are 1-Lipschitz as a whole, built around one slope-restricted activation.

Two shapes are recognised and fused into one node whose `body` keeps the original ops:

- **SLLBlock**: y = x - c W D s(W^T x + b), the residual layers of SLL (Araujo et al., 2023)
  and CPL (Meunier et al., 2022). The first op is a Conv, Gemm or MatMul with constant weight
  reading x; the second is its adjoint: the ConvTranspose of the same kernel with the same
  geometry (or, at stride 1, the Conv with the flipped, transposed kernel and the mirrored
  padding), or the transposed matrix. Between them: constant biases, constant per-unit
  multipliers and one activation whose slope lies in [0, 1]; after them scalar multipliers.
  The weights must be *exactly* one matrix and its transpose: anything else is left alone,
  and its ops are bounded one by one.
- **SandwichBlock**: y = W2 s(W1 x + b) with a constant per-unit multiplier on the hidden
  side (the Sandwich layer of LBDN, Wang & Manchester 2023): dense layers (Gemm/MatMul), or
  convolutions, whose bound the rule takes as a quadratic-constraint certificate.

The matchers only recognise structure; the bound and its proof live in
lipcert.bounds.rules.blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipcert.graph.ir import Graph, Node

# Activations whose slope lies in [0, 1] everywhere (with the attribute checks in
# `slope_in_unit_interval`): each hidden unit's derivative is a number in [0, 1].
_UNIT_SLOPE = frozenset(
    {"Relu", "Tanh", "Sigmoid", "Softplus", "Softsign", "Atan", "Asinh", "Clip"}
)


def slope_in_unit_interval(graph: Graph, node: Node) -> bool:
    """True when the element-wise activation `node` has every slope in [0, 1].

    ReLU, tanh, sigmoid (1/4), softplus, softsign, atan, asinh (1/sqrt(1+x^2)) and clipping
    do by their formulas; LeakyReLU, PReLU, ELU and HardSigmoid when their parameter lies in
    [0, 1]; CELU for every alpha > 0 (slope exp(x / alpha) <= 1 below zero).
    """
    op = node.op
    if op in _UNIT_SLOPE:
        return True
    if op == "LeakyRelu":
        return 0.0 <= float(node.attr("alpha", 0.01)) <= 1.0
    if op == "Elu":
        return 0.0 <= float(node.attr("alpha", 1.0)) <= 1.0
    if op == "Celu":
        return float(node.attr("alpha", 1.0)) > 0.0
    if op == "HardSigmoid":
        return 0.0 <= float(node.attr("alpha", 0.2)) <= 1.0
    if op == "PRelu" and len(node.inputs) > 1 and graph.is_constant(node.inputs[1]):
        slope = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
        return bool(np.all((slope >= 0) & (slope <= 1)))
    return False


# --- walking a chain of single-use ops -------------------------------------------------------


class _Chain:
    """Producers and consumers of a graph, to walk a chain of single-use tensors backwards."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.producers = graph.producers()
        self.consumers = graph.consumers()

    def single_use(self, name: str, user: Node) -> bool:
        if name == self.graph.output_name:
            return False
        users = self.consumers.get(name, [])
        return len(users) == 1 and users[0] is user

    def producer_of(self, name: str, user: Node) -> Node | None:
        """The node writing `name` when `user` is its only reader."""
        node = self.producers.get(name)
        if node is None or not self.single_use(name, user) or node.body:
            return None
        return node


def _data_and_constant(graph: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """(data input, constant input as float64) of a binary node, or None."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if graph.is_constant(second) and not graph.is_constant(first):
        return first, np.asarray(graph.constant(second), dtype=np.float64)
    if graph.is_constant(first) and not graph.is_constant(second) and node.op in ("Mul", "Add"):
        return second, np.asarray(graph.constant(first), dtype=np.float64)
    return None


def _per_unit(
    graph: Graph, value: np.ndarray, shape: tuple[int, ...], conv: bool
) -> np.ndarray | None:
    """A constant broadcast on a hidden tensor of `shape`, as one value per hidden unit.

    For a convolution the units are channels: the constant must not vary along the batch or
    spatial axes. For a dense layer the units are the features of a (batch, features) tensor.
    None when broadcasting would change the tensor's shape or the constant is not per unit.
    """
    try:
        if np.broadcast_shapes(value.shape, shape) != tuple(shape):
            return None
    except ValueError:
        return None
    if not np.all(np.isfinite(value)):
        return None
    full = np.broadcast_to(value, shape)
    if not conv:
        if len(shape) != 2:
            return None
        rows = full.reshape(shape[0], -1)
        return rows[0].copy() if np.all(rows == rows[0]) else None
    per_channel = full[0].reshape(shape[1], -1)
    if not np.all(per_channel == per_channel[:, :1]) or not np.all(full == full[:1]):
        return None
    return per_channel[:, 0].copy()


@dataclass
class _Hidden:
    """What lies between the two linear ops: an activation, biases and unit multipliers."""

    activation: Node
    scale: np.ndarray  # per hidden unit: product of the multipliers on both sides
    factors: int  # number of multipliers folded into `scale` (for rounding margins)
    start: str  # the first linear op's output
    nodes: list[Node]


def _walk_hidden(chain: _Chain, name: str, user: Node, conv: bool) -> _Hidden | None:
    """From the second linear op's input back to the first linear op's output."""
    graph = chain.graph
    shape = graph.shape(name)
    if len(shape) < 2:  # no (batch, units) axes: a tensor that lost its batch axis
        return None
    scale = np.ones(shape[1])
    factors = 0
    nodes: list[Node] = []
    activation: Node | None = None
    current, reader = name, user
    while True:
        node = chain.producer_of(current, reader)
        if node is None:
            return None
        if graph.shape(node.outputs[0]) != shape or len(node.outputs) != 1:
            return None
        if node.op in ("Mul", "Div", "Add", "Sub"):
            parts = _data_and_constant(graph, node)
            if parts is None:
                return None
            source, value = parts
            if node.op in ("Mul", "Div"):
                unit = _per_unit(graph, value, shape, conv)
                if unit is None or (node.op == "Div" and np.any(unit == 0)):
                    return None
                scale = scale * (unit if node.op == "Mul" else 1.0 / unit)
                factors += 1
            # x + c and x - c: a constant shift, wherever it sits (the next op is affine
            # or the activation, whose slopes do not depend on where it is evaluated).
        elif activation is None and slope_in_unit_interval(graph, node):
            activation = node
            source = node.inputs[0]
        else:
            if activation is None:
                return None
            return _Hidden(activation, scale, factors, current, nodes)
        if graph.shape(source) != shape:
            return None
        nodes.append(node)
        current, reader = source, node


# --- linear ops with a constant weight --------------------------------------------------------


def _dense_matrix(graph: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """(data input, A) for Gemm/MatMul of a (batch, n) tensor: y = A x + c per sample."""
    if node.op == "Gemm":
        if node.attr("transA", 0) or not graph.is_constant(node.inputs[1]):
            return None
        weight = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
        if weight.ndim != 2:
            return None
        operator = weight if node.attr("transB", 0) else weight.T
        source = node.inputs[0]
        matrix = float(node.attr("alpha", 1.0)) * operator
    elif node.op == "MatMul":
        if not graph.is_constant(node.inputs[1]) or graph.is_constant(node.inputs[0]):
            return None
        weight = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
        if weight.ndim != 2:
            return None
        source, matrix = node.inputs[0], weight.T
    else:
        return None
    if graph.is_constant(source) or len(graph.shape(source)) != 2:
        return None
    return source, matrix


def _ints(node: Node, key: str, default: list[int]) -> list[int]:
    return [int(v) for v in node.attr(key, default)]


def _conv_geometry(node: Node, rank: int) -> tuple[list[int], list[int], list[int], int] | None:
    """(strides, pads, dilations, group) of a Conv/ConvTranspose with explicit padding."""
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    strides = _ints(node, "strides", [1] * rank)
    pads = _ints(node, "pads", [0] * (2 * rank))
    dilations = _ints(node, "dilations", [1] * rank)
    return strides, pads, dilations, int(node.attr("group", 1))


def _is_adjoint_conv(graph: Graph, first: Node, second: Node, source: str) -> bool:
    """True when `second` is exactly the adjoint of the convolution `first` on `source`."""
    if first.op != "Conv" or not graph.is_constant(first.inputs[1]):
        return False
    if not graph.is_constant(second.inputs[1]) or second.op not in ("ConvTranspose", "Conv"):
        return False
    kernel = np.asarray(graph.constant(first.inputs[1]))
    other = np.asarray(graph.constant(second.inputs[1]))
    rank = kernel.ndim - 2
    geometry = _conv_geometry(first, rank)
    second_geometry = _conv_geometry(second, rank)
    if geometry is None or second_geometry is None or rank < 1:
        return False
    if graph.shape(second.outputs[0]) != graph.shape(source):
        return False
    if second.op == "ConvTranspose":
        # ConvTranspose with the same weight tensor and geometry is the adjoint of the Conv
        # (ONNX defines it so), provided it writes exactly the Conv's input grid.
        if second.attr("output_shape") is not None:
            return False
        return bool(
            other.shape == kernel.shape
            and np.array_equal(other, kernel)
            and geometry == second_geometry
        )
    # Conv with the flipped, transposed kernel at stride 1: the adjoint of a stride-1 conv
    # reads z[x + pb - t d] = correlation with the flipped kernel, padded by e - 1 - pb before
    # and e - 1 - pe after (e the dilated extent).
    strides, pads, dilations, group = geometry
    if group != 1 or strides != [1] * rank or second_geometry[0] != [1] * rank:
        return False
    if second_geometry[2] != dilations or second_geometry[3] != 1:
        return False
    flipped = np.flip(np.swapaxes(kernel, 0, 1), axis=tuple(range(2, kernel.ndim)))
    if other.shape != flipped.shape or not np.array_equal(other, flipped):
        return False
    extent = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], dilations, strict=True)]
    begin, end = pads[:rank], pads[rank:]
    # (ONNX pads list the begins first: the adjoint's begin is e - 1 - pb, its end e - 1 - pe;
    # swapped, the output size is the same but the second conv is the adjoint shifted.)
    mirrored = [e - 1 - p for e, p in zip(extent, begin, strict=True)] + [
        e - 1 - p for e, p in zip(extent, end, strict=True)
    ]
    return second_geometry[1] == mirrored


def _fused(
    graph: Graph, op: str, root: Node, source: str, body: list[Node], **attrs: object
) -> Node:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return Node(
        name=root.name,
        op=op,
        inputs=(source,),
        outputs=root.outputs,
        attrs=dict(attrs),
        body=tuple(sorted(body, key=lambda n: order[id(n)])),
    )


def _output_scalars(chain: _Chain, name: str, user: Node) -> tuple[float, list[Node], str] | None:
    """Scalar multipliers between the second linear op and the block's end."""
    graph = chain.graph
    scale = 1.0
    nodes: list[Node] = []
    current, reader = name, user
    while True:
        node = chain.producer_of(current, reader)
        if node is None:
            return None
        if node.op not in ("Mul", "Div"):
            return scale, nodes, current
        parts = _data_and_constant(graph, node)
        if (
            parts is None
            or parts[1].size != 1
            or graph.shape(node.outputs[0]) != graph.shape(parts[0])
        ):
            return scale, nodes, current
        value = float(parts[1].reshape(-1)[0])
        if value == 0 or not np.isfinite(value):
            return None
        scale *= value if node.op == "Mul" else 1.0 / value
        nodes.append(node)
        current, reader = parts[0], node


# --- SLL / CPL --------------------------------------------------------------------------------


def match_sll_block(graph: Graph, sub: Node) -> Node | None:
    """x - c W D s(W^T x + b): see the module docstring; the rule proves the bound."""
    if sub.op != "Sub" or len(sub.inputs) != 2:
        return None
    source, branch = sub.inputs
    if graph.is_constant(source) or graph.is_constant(branch) or source == branch:
        return None
    if graph.shape(source) != graph.shape(branch) or graph.shape(sub.outputs[0]) != graph.shape(
        source
    ):
        return None
    chain = _Chain(graph)
    scalars = _output_scalars(chain, branch, sub)
    if scalars is None:
        return None
    out_scale, out_nodes, second_output = scalars
    reader = out_nodes[-1] if out_nodes else sub
    second = chain.producer_of(second_output, reader)
    if second is None or second.op not in ("Gemm", "MatMul", "ConvTranspose", "Conv"):
        return None
    conv = second.op in ("ConvTranspose", "Conv")
    if graph.is_constant(second.inputs[0]):
        return None
    hidden = _walk_hidden(chain, second.inputs[0], second, conv)
    if hidden is None:
        return None
    last = hidden.nodes[-1] if hidden.nodes else second
    first = chain.producers.get(hidden.start)
    if first is None or first.body or not chain.single_use(hidden.start, last):
        return None
    if conv:
        if first.inputs[0] != source or not _is_adjoint_conv(graph, first, second, source):
            return None
        # A bias on the second op adds a constant: allowed (index 2 of either op).
    else:
        one, two = _dense_matrix(graph, first), _dense_matrix(graph, second)
        if one is None or two is None or one[0] != source:
            return None
        if two[1].shape != one[1].T.shape or not np.array_equal(two[1], one[1].T):
            return None
    diagonal = out_scale * hidden.scale
    if np.any(diagonal < 0) or not np.all(np.isfinite(diagonal)):
        return None
    body = [sub, *out_nodes, second, *hidden.nodes, first]
    return _fused(
        graph,
        "SLLBlock",
        sub,
        source,
        body,
        kind="conv" if conv else "dense",
        first=first,
        second=second,
        diagonal=tuple(float(v) for v in diagonal),
        factors=hidden.factors + len(out_nodes),
        activation=hidden.activation.op,
    )


# --- Sandwich ---------------------------------------------------------------------------------


def match_sandwich_block(graph: Graph, root: Node) -> Node | None:
    """c W2 D_post s(D_pre W1 x + b): two linear layers around an activation with a per-unit
    multiplier after it (LBDN's Psi), then scalar multipliers; the rule certifies the whole.
    A pair of layers without that multiplier is left alone (bounded layer by layer)."""
    chain = _Chain(graph)
    second, out_scale, out_nodes = _sandwich_end(chain, root)
    if second is None or graph.is_constant(second.inputs[0]):
        return None
    conv = second.op == "Conv"
    hidden = _walk_hidden(chain, second.inputs[0], second, conv)
    if hidden is None:
        return None
    position = hidden.nodes.index(hidden.activation)
    if not any(n.op in ("Mul", "Div") for n in hidden.nodes[:position]):
        return None
    last = hidden.nodes[-1]
    first = chain.producers.get(hidden.start)
    if first is None or first.body or not chain.single_use(hidden.start, last):
        return None
    if conv:
        if first.op != "Conv" or graph.is_constant(first.inputs[0]):
            return None
        source = first.inputs[0]
        for node in (first, second):
            rank = len(graph.shape(node.inputs[0])) - 2
            if not graph.is_constant(node.inputs[1]) or rank < 1:
                return None
            if _conv_geometry(node, rank) is None:
                return None
    else:
        one, two = _dense_matrix(graph, first), _dense_matrix(graph, second)
        if one is None or two is None:
            return None
        source = one[0]
    pre = np.ones_like(hidden.scale)
    post = np.ones_like(hidden.scale)
    for index, node in enumerate(hidden.nodes):
        if node.op not in ("Mul", "Div"):
            continue
        parts = _data_and_constant(graph, node)
        unit = (
            None
            if parts is None
            else _per_unit(graph, parts[1], graph.shape(node.outputs[0]), conv)
        )
        if unit is None:
            return None
        value = unit if node.op == "Mul" else 1.0 / unit
        if index < position:
            post = post * value
        else:
            pre = pre * value
    return _fused(
        graph,
        "SandwichBlock",
        root,
        source,
        [*out_nodes, second, *hidden.nodes, first],
        kind="conv" if conv else "dense",
        first=first,
        second=second,
        pre=tuple(float(v) for v in pre),
        post=tuple(float(v) for v in post * out_scale),
        activation=hidden.activation.op,
    )


def _sandwich_end(chain: _Chain, root: Node) -> tuple[Node | None, float, list[Node]]:
    """The second linear op of a sandwich ending at `root`, and the scalars after it.

    A linear op whose only reader is a scalar multiplier is not an end: the sandwich then
    ends at that multiplier (matched when the matcher reaches it).
    """
    graph = chain.graph
    scale = 1.0
    nodes: list[Node] = []
    node = root
    while node.op in ("Mul", "Div"):
        parts = _data_and_constant(graph, node)
        if parts is None or parts[1].size != 1 or node.body:
            return None, 1.0, []
        if graph.shape(parts[0]) != graph.shape(node.outputs[0]):
            return None, 1.0, []
        value = float(parts[1].reshape(-1)[0])
        if value == 0 or not np.isfinite(value):
            return None, 1.0, []
        scale *= value if node.op == "Mul" else 1.0 / value
        nodes.append(node)
        previous = chain.producer_of(parts[0], node)
        if previous is None:
            return None, 1.0, []
        node = previous
    if node.op not in ("Gemm", "MatMul", "Conv") or node.body:
        return None, 1.0, []
    if node is root:
        readers = chain.consumers.get(root.outputs[0], [])
        if len(readers) == 1 and readers[0].op in ("Mul", "Div") and not readers[0].body:
            parts = _data_and_constant(graph, readers[0])
            if parts is not None and parts[1].size == 1:
                return None, 1.0, []
    return node, scale, nodes


__all__ = ["match_sandwich_block", "match_sll_block", "slope_in_unit_interval"]
