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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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


SELECT_MATCHERS: tuple[Callable[[Graph, Node], Node | None], ...] = (
    match_where_min_max,
    match_where_extreme,
)

__all__ = ["SELECT_MATCHERS", "match_where_extreme", "match_where_min_max"]
