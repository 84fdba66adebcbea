"""Sound sizes of tensors at a reference input: upper bounds of the EXACT ||t(0)||.

The rounding allowance sizes a tensor it does not measure as ||t(0)|| + L_t ||x||, where t(0)
is the exact value of t at the zero input (compose.float_error_bound, fp_error; inside a fused
affine block, the body's value at a reference entry). A computed t(0) is not the exact one: its
rounding error is absolute, so when constants cancel (a bias that another bias undoes), the
computed norm can be ~0 while the exact one is not, and no relative margin covers it.

So the values are computed in float64 (lipcert's graph executor, the graph's own constants),
and each computed tensor's error is bounded by the forward recurrence of fp_error with every
size measured: a node computing y = op(x^) from the computed x^ rounds by at most
gamma (input_gain ||x^|| + output_gain ||y(x^)|| + offset) (its `Rounding`), and
||y(x^)|| <= ||y^|| + local, so local <= gamma (input_gain ||x^|| + output_gain ||y^|| +
offset) / (1 - gamma output_gain); e_y = factor * (sum of e of its data inputs) + local. Then
||t(0)|| <= ||t^(0)|| + e_t. The executor's float64 arithmetic is what the rules' roundings at
the float64 unit describe (the `--margins float64` path relies on the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from lipcert.bounds.numeric import FLOAT64_UNIT_ROUNDOFF, add_up, div_up, mul_up
from lipcert.bounds.registry import LayerBound
from lipcert.graph import Graph, Node

# Ops whose outputs after the first are indices, not sized.
_INDEX_OUTPUTS = frozenset({"TopK", "MaxPool"})


def run_float64(
    graph: Graph, nodes: Iterable[Node], start: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every tensor the nodes write (bodies of fused nodes included), computed in float64 by
    lipcert's executor from the given values, each as (batch, -1)."""
    import torch

    from lipcert.graph.execute import GraphExecutor

    executor = GraphExecutor(graph, dtype=torch.float64)
    values: dict[str, object] = dict(executor.constants)
    batch = 1
    for name, value in start.items():
        tensor = torch.as_tensor(np.array(value, dtype=np.float64))
        values[name] = tensor
        batch = int(tensor.shape[0])
    executor._batch = batch
    with torch.no_grad():
        executor._run(tuple(nodes), values)
    return {
        name: value.detach().numpy().reshape(batch, -1)
        for name, value in values.items()
        if name not in executor.constants and name not in start and hasattr(value, "detach")
    }


def row_norm_up(value: np.ndarray) -> float:
    """The largest per-sample L2 norm of a (batch, -1) float64 array, rounded up (the norm of
    n float64 numbers is within (n + 2) 2^-53 of itself)."""
    rows = np.asarray(value, dtype=np.float64).reshape(value.shape[0], -1)
    if rows.size == 0:
        return 0.0
    norm = float(np.max(np.linalg.norm(rows, axis=1)))
    if not math.isfinite(norm):
        return math.inf
    return mul_up(norm, 1 + (rows.shape[1] + 4) * 2.0**-52)


def computed_errors(
    items: Iterable[tuple[Node, LayerBound]],
    graph: Graph,
    norms: Mapping[str, float],
    start_errors: Mapping[str, float],
    unit: float = FLOAT64_UNIT_ROUNDOFF,
) -> dict[str, float]:
    """Upper bounds of ||t^ - t|| for every tensor the nodes write, computed at `unit` from
    values whose per-sample norms are `norms` (see the module docstring). A size that was
    not measured makes the error infinite."""
    errors = dict(start_errors)
    for node, layer in items:
        sources = graph.data_inputs(node)
        incoming = 0.0
        for name in sources:
            incoming = add_up(incoming, errors.get(name, math.inf))
        total = mul_up(layer.factor, incoming) if incoming else 0.0
        rounding = layer.rounding
        if rounding.rounds:
            g = rounding.gamma(unit)
            size_in = 0.0
            if rounding.input_gain > 0:
                for name in sources:
                    size_in = add_up(size_in, norms.get(name, math.inf))
            size_out = 0.0
            denominator = 1.0
            if rounding.output_gain > 0:
                size_out = norms.get(node.outputs[0], math.inf)
                denominator = 1.0 - mul_up(g, rounding.output_gain)
            terms = add_up(
                mul_up(rounding.input_gain, size_in) if rounding.input_gain else 0.0,
                mul_up(rounding.output_gain, size_out) if rounding.output_gain else 0.0,
                rounding.offset,
            )
            local = div_up(mul_up(g, terms), denominator) if denominator > 0 else math.inf
            total = add_up(total, local)
        outputs = node.outputs[:1] if node.op in _INDEX_OUTPUTS else node.outputs
        for name in outputs:
            if name:
                errors[name] = total
    return errors


def sizes_at(values: Mapping[str, np.ndarray], errors: Mapping[str, float]) -> dict[str, float]:
    """||t(reference)|| <= ||t^|| + e_t for every computed tensor with a bounded error."""
    return {
        name: add_up(row_norm_up(value), errors[name])
        for name, value in values.items()
        if name in errors
    }


def zero_input_sizes(graph: Graph, node_bounds: list[tuple[Node, LayerBound]]) -> dict[str, float]:
    """Upper bounds of the exact per-sample ||t(0)|| of every tensor of the graph (the fused
    one the node bounds belong to). Raises what the executor raises on a graph it cannot run."""
    shape = graph.shape(graph.input_name)
    zeros = np.zeros((max(graph.batch_size, 1), *shape[1:]))
    values = run_float64(graph, graph.nodes, {graph.input_name: zeros})
    values[graph.input_name] = zeros.reshape(zeros.shape[0], -1)
    norms = {name: row_norm_up(value) for name, value in values.items()}
    errors = computed_errors(node_bounds, graph, norms, {graph.input_name: 0.0})
    return sizes_at(values, errors)
