"""Comparison-selects that are continuous: rewritten into Max, Min and GroupSort.

A comparison followed by a select is a step in general (Where(Greater(a, 0), a, a + 1) jumps
by 1 at a = 0) and is refused by the rules. Two shapes are continuous and 1-Lipschitz, and
are fused here (the fused node keeps the original ops in its body, so execution is
unchanged):

- Where(Greater(a, b), a, b) is max(a, b): at a == b both branches agree. Likewise with
  GreaterOrEqual, and Less/LessOrEqual give the minimum; swapping the branches swaps max
  and min. The fused node has op Max or Min, bounded by their rule.
- LiResNet's MinMax: one comparison g = a > b of two disjoint halves of a tensor feeding
  Where(g, a, b) and Where(g, b, a), concatenated: sorting of disjoint pairs, a GroupSort.
- The Householder activation (a pair or its reflection, selected by masks):
  lipcert.graph.householder.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from lipcert.graph.householder import float64_constants, match_householder
from lipcert.graph.ir import Graph, Node

# For Where(Cmp(p, q), p, q): which extreme it selects.
_SELECTS_FIRST_WHEN_LARGER = {
    "Greater": True,
    "GreaterOrEqual": True,
    "Less": False,
    "LessOrEqual": False,
}


def _extreme(graph: Graph, where: Node, compare: Node) -> str | None:
    """'Max' or 'Min' when Where(compare, ., .) selects an extreme of compare's operands."""
    if compare.op not in _SELECTS_FIRST_WHEN_LARGER or len(compare.inputs) != 2:
        return None
    if len(where.inputs) != 3 or where.inputs[0] != compare.outputs[0]:
        return None
    p, q = compare.inputs
    first, second = where.inputs[1], where.inputs[2]
    shape = graph.shape(where.outputs[0])
    larger_first = _SELECTS_FIRST_WHEN_LARGER[compare.op]
    if _same(graph, first, p, shape) and _same(graph, second, q, shape):
        return "Max" if larger_first else "Min"
    if _same(graph, first, q, shape) and _same(graph, second, p, shape):
        return "Min" if larger_first else "Max"
    return None


def _same(graph: Graph, one: str, other: str, shape: tuple[int, ...]) -> bool:
    """The same tensor, or two constants equal once broadcast to the select's shape."""
    if one == other:
        return True
    if not (graph.is_constant(one) and graph.is_constant(other)):
        return False
    a, b = np.asarray(graph.constant(one)), np.asarray(graph.constant(other))
    try:
        return bool(np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape)))
    except ValueError:
        return False


def _ordered(graph: Graph, nodes: list[Node]) -> tuple[Node, ...]:
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return tuple(sorted(nodes, key=lambda n: order[id(n)]))


def _only_users(graph: Graph, name: str, users: list[Node]) -> bool:
    if name == graph.output_name:
        return False
    found = graph.consumers().get(name, [])
    return sorted(map(id, found)) == sorted(map(id, users))


def match_where_extreme(graph: Graph, where: Node) -> Node | None:
    """Where(Greater(a, b), a, b) -> Max(a, b), and the other three variants."""
    if where.op != "Where" or len(where.inputs) != 3 or where.body:
        return None
    compare = graph.producers().get(where.inputs[0])
    if compare is None or compare.body:
        return None
    op = _extreme(graph, where, compare)
    if op is None or not _only_users(graph, compare.outputs[0], [where]):
        return None
    # The select's own branches (a constant may be written twice, as 0 and zeros_like(a)).
    p, q = where.inputs[1], where.inputs[2]
    if graph.is_constant(p) and graph.is_constant(q):
        return None
    return Node(
        name=where.name,
        op=op,
        inputs=(p, q),
        outputs=where.outputs,
        attrs={"written_as": f"Where({compare.op})"},
        body=_ordered(graph, [compare, where]),
    )


def match_where_min_max(graph: Graph, concat: Node) -> Node | None:
    """Concat(Where(g, a, b), Where(g, b, a)), g comparing a and b, disjoint halves of x."""
    if concat.op != "Concat" or len(concat.inputs) != 2:
        return None
    producers = graph.producers()
    wheres = [producers.get(name) for name in concat.inputs]
    if any(w is None or w.op != "Where" or w.body for w in wheres):
        return None
    first, second = wheres
    assert first is not None and second is not None
    if first is second or first.inputs[0] != second.inputs[0]:
        return None
    compare = producers.get(first.inputs[0])
    if compare is None or compare.body:
        return None
    ops = {_extreme(graph, first, compare), _extreme(graph, second, compare)}
    if ops != {"Max", "Min"}:
        return None
    a, b = compare.inputs
    shapes = {graph.shape(a), graph.shape(b), graph.shape(first.outputs[0])}
    if len(shapes) != 1 or graph.shape(second.outputs[0]) not in shapes:
        return None
    if not _only_users(graph, compare.outputs[0], [first, second]):
        return None
    for where in (first, second):
        if not _only_users(graph, where.outputs[0], [concat]):
            return None
    split = _disjoint_halves(graph, a, b)
    if split is None:
        return None
    source, cutters = split
    for name in (a, b):
        if not _only_users(graph, name, [compare, first, second]):
            return None
    body = list({id(n): n for n in [*cutters, compare, first, second, concat]}.values())
    return Node(
        name=concat.name,
        op="GroupSort",
        inputs=(source,),
        outputs=concat.outputs,
        attrs={"group_size": 2, "written_as": "MinMax with Where"},
        body=_ordered(graph, body),
    )


def _disjoint_halves(graph: Graph, a: str, b: str) -> tuple[str, list[Node]] | None:
    """(x, cutting nodes) when a and b are two distinct outputs of one Split of x, or two
    Slices of x along one axis with disjoint constant ranges."""
    producers = graph.producers()
    node_a, node_b = producers.get(a), producers.get(b)
    if node_a is None or node_b is None or a == b:
        return None
    if node_a is node_b and node_a.op == "Split":
        return node_a.inputs[0], [node_a]
    if node_a.op != "Slice" or node_b.op != "Slice" or node_a.inputs[0] != node_b.inputs[0]:
        return None
    source = node_a.inputs[0]
    shape = graph.shape(source)
    sets = [_slice_positions(graph, node, shape) for node in (node_a, node_b)]
    if sets[0] is None or sets[1] is None:
        return None
    if not any(not (x & y) for x, y in zip(sets[0], sets[1], strict=True)):
        return None
    return source, [node_a, node_b]


def _slice_positions(graph: Graph, node: Node, shape: tuple[int, ...]) -> list[set[int]] | None:
    values: list[list[int] | None] = []
    for index in range(1, 5):
        name = node.inputs[index] if index < len(node.inputs) else ""
        if name and not graph.is_constant(name):
            return None
        values.append(
            [int(v) for v in np.asarray(graph.constant(name)).reshape(-1)] if name else None
        )
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    sets = [set(range(n)) for n in shape]
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= len(shape)
        sets[axis] = set(range(shape[axis])[slice(start, end, step)])
    return sets


# --- element-wise continuous piecewise-affine selects (N-activation, ...) -------------------

_COMPARE = {
    "Less": lambda a, b: a < b,
    "Greater": lambda a, b: a > b,
    "LessOrEqual": lambda a, b: a <= b,
    "GreaterOrEqual": lambda a, b: a >= b,
}
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Identity"})
# Regions larger than this many distinct constants per element are left alone.
_MAX_ELEMENTS = 1 << 14


def match_piecewise_affine(graph: Graph, root: Node) -> Node | None:
    """A select tree on one tensor x, element-wise: Where(Cmp(x, c), F, G) with F and G built
    from x by affine ops with constants and further such selects (the N-activation of Prach
    and Lampert: x - 2 t0 below t0, -x between t0 and t1, x - 2 t1 above).

    Element by element it is a piecewise-affine function of the scalar x, with breakpoints
    at the comparison constants. It is fused only when it is continuous at every breakpoint,
    which is checked exactly: constants are read as rationals (Fractions of their float
    values) and the affine pieces computed without rounding, the value at each breakpoint
    compared with the limits on both sides. A continuous piecewise-affine function of one
    variable is Lipschitz with its largest absolute slope, recorded as `lipschitz` (exact).
    """
    if (root.op != "Where" and root.op not in _AFFINE) or root.body:
        return None
    readers = graph.consumers().get(root.outputs[0], [])
    if root.outputs[0] != graph.output_name and len(readers) == 1:
        reader = readers[0]
        if not reader.body and (reader.op == "Where" or reader.op in _AFFINE):
            return None  # the tree goes on: matched from its last node
    region = _select_region(graph, root)
    if region is None:
        return None
    nodes, source = region
    shape = graph.shape(root.outputs[0])
    if graph.shape(source) != shape:
        return None
    for node in nodes:
        if graph.shape(node.outputs[0]) != shape:
            return None
    constants = {name for node in nodes for name in node.inputs if name and graph.is_constant(name)}
    try:
        reduced = np.broadcast_shapes(
            *(np.shape(graph.constant(n)) for n in constants), (1,) * len(shape)
        )
    except ValueError:
        return None
    if len(reduced) != len(shape) or int(np.prod(reduced)) > _MAX_ELEMENTS:
        return None
    values = float64_constants(graph, constants, tuple(reduced))
    if values is None:
        return None
    order = list(_ordered(graph, nodes))
    slope = _piecewise_slope(order, source, values, root, reduced)
    if slope is None:
        return None
    return Node(
        name=root.name,
        op="PiecewiseLinear",
        inputs=(source,),
        outputs=root.outputs,
        attrs={
            "lipschitz": slope,
            "pieces": sum(1 for n in nodes if n.op in _COMPARE) + 1,
            "arithmetic": sum(1 for n in nodes if n.op in ("Add", "Sub", "Mul", "Div")),
        },
        body=tuple(order),
    )


def _select_region(graph: Graph, root: Node) -> tuple[list[Node], str] | None:
    """The nodes of the select tree ending at root, and its one data source."""
    producers = graph.producers()
    consumers = graph.consumers()
    nodes: list[Node] = []
    sources: set[str] = set()
    stack = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.body or len(node.outputs) != 1:
            return None
        if node.op not in _COMPARE and node.op not in _AFFINE and node.op != "Where":
            return None
        nodes.append(node)
        for name in node.inputs:
            if not name or graph.is_constant(name):
                continue
            producer = producers.get(name)
            inside = producer is not None and (
                producer.op in _COMPARE or producer.op in _AFFINE or producer.op == "Where"
            )
            if inside and producer is not None and not producer.body:
                stack.append(producer)
            else:
                sources.add(name)
    if len(sources) != 1 or not any(n.op == "Where" for n in nodes):
        return None
    source = next(iter(sources))
    members = {id(n) for n in nodes}
    for node in nodes:
        if node is root:
            continue
        users = consumers.get(node.outputs[0], [])
        if node.outputs[0] == graph.output_name or any(id(u) not in members for u in users):
            return None
    for node in nodes:
        if node.op in _COMPARE:
            data = [n for n in node.inputs if not graph.is_constant(n)]
            if data != [source] or len(node.inputs) != 2:
                return None
        if node.op in ("Mul", "Div") and not any(graph.is_constant(n) for n in node.inputs):
            return None
        if node.op == "Div" and not graph.is_constant(node.inputs[1]):
            return None
    return nodes, source


def _piecewise_slope(
    order: list[Node],
    source: str,
    values: dict[str, np.ndarray],
    root: Node,
    reduced: tuple[int, ...],
) -> float | None:
    """Largest |slope| of the region, element by element, or None if it may jump."""
    compares = [n for n in order if n.op in _COMPARE]
    if not compares:
        return None  # a Where on a constant condition: no select on x (left to the rules)
    largest = Fraction(0)
    for index in np.ndindex(*reduced):
        constant = {name: Fraction(float(v[index])) for name, v in values.items()}
        thresholds = sorted({constant[next(i for i in n.inputs if i != source)] for n in compares})
        points: list[Fraction] = [thresholds[0] - 1, thresholds[-1] + 1]
        points += [(a + b) / 2 for a, b in itertools.pairwise(thresholds)]
        pieces = {}
        for point in points:
            piece = _affine_at(order, source, constant, root, point)
            if piece is None:
                return None
            pieces[point] = piece
            largest = max(largest, abs(piece[0]))
        for threshold in thresholds:
            left = max(p for p in points if p < threshold)
            right = min(p for p in points if p > threshold)
            at = _affine_at(order, source, constant, root, threshold)
            if at is None:
                return None
            value = at[0] * threshold + at[1]
            for side in (left, right):
                slope, intercept = pieces[side]
                if slope * threshold + intercept != value:
                    return None
            largest = max(largest, abs(at[0]))
    return float(np.nextafter(float(largest), np.inf))


def _affine_at(
    order: list[Node],
    source: str,
    constant: dict[str, Fraction],
    root: Node,
    point: Fraction,
) -> tuple[Fraction, Fraction] | None:
    """(slope, intercept) of the region's output near x = point, exactly, with every
    comparison decided at x = point."""
    forms: dict[str, tuple[Fraction, Fraction] | bool] = {source: (Fraction(1), Fraction(0))}

    def form(name: str) -> tuple[Fraction, Fraction]:
        if name in constant:
            return (Fraction(0), constant[name])
        value = forms[name]
        assert not isinstance(value, bool)
        return value

    for node in order:
        out = node.outputs[0]
        if node.op in _COMPARE:
            a, b = (point if n == source else constant[n] for n in node.inputs)
            forms[out] = bool(_COMPARE[node.op](a, b))
        elif node.op == "Where":
            condition = forms.get(node.inputs[0])
            if not isinstance(condition, bool):
                return None
            forms[out] = form(node.inputs[1] if condition else node.inputs[2])
        elif node.op in ("Neg", "Identity"):
            slope, intercept = form(node.inputs[0])
            forms[out] = (-slope, -intercept) if node.op == "Neg" else (slope, intercept)
        else:
            (s1, b1), (s2, b2) = form(node.inputs[0]), form(node.inputs[1])
            if node.op == "Add":
                forms[out] = (s1 + s2, b1 + b2)
            elif node.op == "Sub":
                forms[out] = (s1 - s2, b1 - b2)
            elif node.op == "Mul":
                if s1 != 0 and s2 != 0:
                    return None
                forms[out] = (s1 * b2 + s2 * b1, b1 * b2)
            else:
                if s2 != 0 or b2 == 0:
                    return None
                forms[out] = (s1 / b2, b1 / b2)
    return form(root.outputs[0])


SELECT_MATCHERS: tuple[Callable[[Graph, Node], Node | None], ...] = (
    match_householder,  # lipcert.graph.householder
    match_where_min_max,
    match_where_extreme,
    match_piecewise_affine,
)

__all__ = [
    "SELECT_MATCHERS",
    "match_piecewise_affine",
    "match_where_extreme",
    "match_where_min_max",
]
