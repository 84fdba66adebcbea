"""Norms of affine blocks (lipcert.graph.affine_blocks) bounded as one operator.

A fused `AffineBlock` computes x -> A x + c; its Lipschitz constant is ||A||_2. Methods, each
a guaranteed upper bound (the rule takes the smallest that applies):

- **product of the parts**: the op-by-op composition over the block's body (a chain
  multiplies, a sum of branches adds), what lipcert does without the block. Always applies.
- **probed matrix** (exact): on small blocks, A is built column by column by running the
  bias-free body on the unit vectors in float64, and its largest singular value is computed
  by SVD; the float64 error of the probing and of the SVD are added (see probe_bound).
- **polynomial of one convolution**: when the block is a reshaping prefix, then p(A) for a
  single stride-1 convolution A applied several times with sums and scalar factors between
  (a truncated Taylor series, x + conv(x)), then a reshaping suffix:
  - A skew-symmetric (kernel equal to minus its flipped transpose, symmetric padding):
    ||p(A)|| <= max over |t| <= rho of |p(i t)| with rho >= ||A|| (see skew_polynomial_bound);
  - p of degree 1: c0 x + c1 conv(x) is one convolution whose kernel is c1 K plus c0 at
    the tap that reads the output's own position; its norm is bounded as a conv's is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from lipcert.bounds import numeric, spectral
from lipcert.bounds.numeric import (
    FLOAT32_UNIT_ROUNDOFF,
    FLOAT64_UNIT_ROUNDOFF,
    add_up,
    gamma,
    mul_up,
    rss_up,
)
from lipcert.bounds.registry import Combine, LayerBound, Rounding, bound_node
from lipcert.bounds.zero_input import computed_errors, row_norm_up, sizes_at
from lipcert.errors import UnsupportedOpError
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import window

_LOG = logging.getLogger(__name__)

# The probed matrix holds at most this many entries (32 MiB of float64), with its smaller side
# at most _PROBE_MAX_SIDE: its SVD then takes well under a second.
PROBE_MAX_ENTRIES = 1 << 22
PROBE_MAX_SIDE = 1536
# Probing one model-sized batch at a time (bodies whose shapes pin the batch) costs one run
# of the body per unit vector: only up to this many.
PROBE_MAX_SINGLE = 1024
# ... and the elements the body writes, summed over its ops, times n, at most this many.
PROBE_MAX_WORK = 1 << 28
# A kernel is taken as skew-symmetric when the norm of its symmetric part is at most this
# fraction of its skew part's: the symmetric part's norm is still added (see below), so this
# only decides when the method is worth using, never whether it is sound.
SKEW_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Candidate:
    """One method's bound of ||A||."""

    factor: float
    method: str
    exact: bool


def body_bounds(node: Node, graph: Graph) -> list[tuple[Node, LayerBound]]:
    """Each body node's own rule (the nodes are the graph's; their tensors keep their shapes).

    A Taylor series applies one convolution many times: nodes with the same op, attributes,
    shapes and constant inputs (compared by value) share one computation of their rule.
    """
    found: list[tuple[Node, LayerBound]] = []
    cache: dict[tuple[object, ...], LayerBound] = {}
    for inner in node.body:
        key = _rule_key(inner, graph)
        if key is None:
            found.append((inner, bound_node(inner, graph)))
            continue
        if key not in cache:
            cache[key] = bound_node(inner, graph)
        found.append((inner, cache[key]))
    return found


def _rule_key(node: Node, graph: Graph) -> tuple[object, ...] | None:
    """The key of a Conv's rule, or None when it is not shared: the rule also reads what
    consumes the output (a Mul by a constant that onnxruntime folds into the weights,
    rules/linear.py), so a Conv read by an Add, Sub or Mul keeps its own."""
    if node.op not in ("Conv", "CircularConv") or (node.body and node.op == "Conv"):
        return None
    output = node.outputs[0]
    pending = list(graph.nodes)
    while pending:
        other = pending.pop()
        pending.extend(other.body)
        if other.op in ("Add", "Sub", "Mul") and output in other.inputs:
            return None
    constants = []
    for name in node.inputs[1:]:
        if not name or not graph.is_constant(name):
            return None
        value = np.asarray(graph.constant(name))
        constants.append((value.dtype.str, value.shape, value.tobytes()))
    data = graph.data_inputs(node)
    return (
        node.op,
        repr(sorted(node.attrs.items())),
        tuple(graph.shape(name) for name in data),
        graph.shape(node.outputs[0]),
        tuple(constants),
    )


def _combine(layer: LayerBound, incoming: list[float]) -> float:
    if layer.combine is Combine.CHAIN:
        return mul_up(layer.factor, incoming[0])
    if layer.combine is Combine.SUM:
        return mul_up(layer.factor, add_up(*incoming))
    return mul_up(layer.factor, rss_up(*incoming))


def path_bounds(
    node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]
) -> dict[str, float]:
    """For every tensor t of the body, a bound of the Lipschitz constant of entry -> t."""
    values = {node.inputs[0]: 1.0}
    for inner, layer in bounds:
        incoming = [values[name] for name in graph.data_inputs(inner)]
        result = _combine(layer, incoming)
        for name in inner.outputs:
            if name:
                values[name] = result
    return values


def product_bound(node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]) -> Candidate:
    """The op-by-op composition over the body: always sound, loose for residual sums."""
    factor = path_bounds(node, graph, bounds)[node.outputs[0]]
    return Candidate(factor, "product and sum of its ops' bounds", exact=False)


# --- the floating-point allowance of the whole block ---------------------------------------


def block_rounding(
    node: Node,
    graph: Graph,
    bounds: list[tuple[Node, LayerBound]],
    unit: float = FLOAT32_UNIT_ROUNDOFF,
) -> Rounding:
    """The rounding error of running the block's own ops, as one Rounding of the fused node.

    Forward over the body, as lipcert.bounds.compose.float_error_bound does over a graph,
    with sizes and errors affine in s = ||block input||: a body tensor t, as a function of
    the entry, satisfies ||t(v)|| <= ||t(e0)|| + L_t (s + ||e0||) for any reference entry e0,
    since t(v) - t(e0) = A_t (v - e0) with ||A_t|| <= L_t (the op-by-op bound from the entry
    to t); e0 is the probe's entry at the zero input and ||t(e0)|| is bounded with the
    rounding of its float64 computation (_zero_norms). Each node passes
    on its input errors times its bound and adds its own rounding. The exit's error C + D s is
    returned as Rounding(terms=1, input_gain=D/g, offset=C/g) with g = gamma(1): since
    gamma(n, u) / gamma(1, u) grows with u, the allowance computed at the float32 unit also
    covers the float64 unit, except for the body's unit-free relative errors (constants the
    model computes, lipcert.bounds.folded): the block's own `relative` then makes up the
    difference at the float64 unit, (gamma(1, u64) + relative) X >= the error at u64.
    """
    paths = path_bounds(node, graph, bounds)
    zeros = _zero_norms(node, graph, bounds)
    constant, slope = _block_error(node, graph, bounds, paths, zeros, unit)
    g = gamma(1, unit)
    input_gain = numeric.up(slope / g) if slope else 0.0
    offset = numeric.up(constant / g) if constant else 0.0
    relative = 0.0
    if unit != FLOAT64_UNIT_ROUNDOFF and any(layer.rounding.relative for _, layer in bounds):
        constant64, slope64 = _block_error(node, graph, bounds, paths, zeros, FLOAT64_UNIT_ROUNDOFF)
        g64 = gamma(1, FLOAT64_UNIT_ROUNDOFF)
        for needed, given in ((slope64, input_gain), (constant64, offset)):
            if needed > 0:
                if given <= 0:  # cannot happen: the body rounds at every unit or at none
                    raise UnsupportedOpError(f"node {node.name!r}: inconsistent block rounding")
                relative = max(relative, numeric.up(needed / given) - g64)
    return Rounding(terms=1, input_gain=input_gain, offset=offset, relative=max(relative, 0.0))


def _block_error(
    node: Node,
    graph: Graph,
    bounds: list[tuple[Node, LayerBound]],
    paths: dict[str, float],
    zeros: dict[str, float],
    unit: float,
) -> tuple[float, float]:
    """(C, D): the error of the block's exit is at most C + D ||block input|| at this unit."""
    entry = node.inputs[0]
    entry_zero = zeros[entry]
    sizes: dict[str, tuple[float, float]] = {entry: (0.0, 1.0)}
    errors: dict[str, tuple[float, float]] = {entry: (0.0, 0.0)}
    for inner, layer in bounds:
        sources = graph.data_inputs(inner)
        incoming = _sum(errors[name] for name in sources)
        propagated = _scale(incoming, layer.factor)
        output = inner.outputs[0]
        out_size = (add_up(zeros[output], mul_up(paths[output], entry_zero)), paths[output])
        local = (0.0, 0.0)
        r = layer.rounding
        if r.rounds:
            size_in = _sum([*(sizes[name] for name in sources), incoming])
            size_out = _sum([out_size, propagated])
            terms = _sum(
                [_scale(size_in, r.input_gain), _scale(size_out, r.output_gain), (r.offset, 0.0)]
            )
            local = _scale(terms, r.gamma(unit))
        for name in inner.outputs:
            if name:
                sizes[name] = out_size
                errors[name] = _sum([propagated, local])
    return errors[node.outputs[0]]


def _sum(parts: Iterable[tuple[float, float]]) -> tuple[float, float]:
    c, d = 0.0, 0.0
    for a, b in parts:
        c, d = add_up(c, a), add_up(d, b)
    return c, d


def _scale(value: tuple[float, float], factor: float) -> tuple[float, float]:
    return mul_up(value[0], factor), mul_up(value[1], factor)


def _zero_norms(
    node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]
) -> dict[str, float]:
    """Per-sample sizes at the reference entry e0 (the entry's value at the zero input, as
    the probe computed it: a known vector): ||e0|| for the entry and, for every tensor the
    body writes, an upper bound of the EXACT ||t(e0)||: its float64 value plus that value's
    rounding error (lipcert.bounds.zero_input)."""
    entry = node.inputs[0]
    at_zero = graph.zero_input_values.get(entry)
    if at_zero is None:
        raise RuntimeError(f"no zero-input value recorded for tensor {entry!r}")
    # the whole probed batch (a block may read across it); sizes are the largest row's
    start = np.asarray(at_zero, dtype=np.float64)
    values = _run_body(node, graph, start, linear=False)
    values.pop(entry, None)
    norms = {name: row_norm_up(value) for name, value in values.items()}
    norms[entry] = row_norm_up(start.reshape(start.shape[0], -1))
    errors = computed_errors(bounds, graph, norms, {entry: 0.0})
    found = sizes_at(values, errors)
    found[entry] = norms[entry]
    missing = [name for inner in node.body for name in inner.outputs[:1] if name not in found]
    if missing:
        raise RuntimeError(f"no size at the reference input for tensor {missing[0]!r}")
    return found


# --- probing the explicit matrix --------------------------------------------------------------


def _leaves(nodes: Iterable[Node]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.extend(_leaves(node.body) if node.body else [node])
    return found


def _linear_part(node: Node, graph: Graph) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The body's ops with every constant term removed: x -> A x.

    Biases of Conv/ConvTranspose/Gemm are dropped, BatchNorm becomes its scale, an Add/Sub
    of a constant becomes the identity (or a negation), constant padding pads with zero and
    a constant part of a Concat becomes zeros. The other ops are linear already.
    """
    extra: dict[str, np.ndarray] = {}
    nodes = []
    for leaf in _leaves(node.body):
        data = graph.data_inputs(leaf)
        op = leaf.op
        if op in ("Conv", "ConvTranspose", "Gemm"):
            nodes.append(_with(leaf, inputs=leaf.inputs[:2]))
        elif op == "BatchNormalization":
            scale = np.asarray(graph.constant(leaf.inputs[1]), dtype=np.float64) / np.sqrt(
                np.asarray(graph.constant(leaf.inputs[4]), dtype=np.float64)
                + float(leaf.attr("epsilon", 1e-5))
            )
            rank = len(graph.shape(leaf.inputs[0]))
            name = _fresh(graph, extra, f"{leaf.name}/linear_scale")
            extra[name] = scale.reshape(-1, *([1] * (rank - 2)))
            nodes.append(_with(leaf, op="Mul", inputs=(leaf.inputs[0], name), attrs={}))
        elif op in ("Add", "Sum") and len(data) < len([n for n in leaf.inputs if n]):
            if len(data) == 1:
                nodes.append(_with(leaf, op="Identity", inputs=(data[0],), attrs={}))
            else:
                nodes.append(_with(leaf, op="Sum", inputs=tuple(data), attrs={}))
        elif op == "Sub" and len(data) == 1:
            negate = data[0] != leaf.inputs[0]
            nodes.append(
                _with(leaf, op="Neg" if negate else "Identity", inputs=(data[0],), attrs={})
            )
        elif op == "Pad" and leaf.attr("mode", "constant") == "constant":
            inputs = list(leaf.inputs)
            if len(inputs) > 2:
                inputs[2] = ""
            nodes.append(_with(leaf, inputs=tuple(inputs)))
        elif op == "Concat" and len(data) < len(leaf.inputs):
            inputs = []
            for i, name in enumerate(leaf.inputs):
                if name in data:
                    inputs.append(name)
                else:
                    zero_name = _fresh(graph, extra, f"{leaf.name}/linear_zero_{i}")
                    extra[zero_name] = np.zeros(np.asarray(graph.constant(name)).shape)
                    inputs.append(zero_name)
            nodes.append(_with(leaf, inputs=tuple(inputs)))
        else:
            nodes.append(leaf)
    return nodes, extra


def _fresh(graph: Graph, extra: dict[str, np.ndarray], base: str) -> str:
    """A name for a constant of the linear part that no tensor of the graph has (under a
    file's own constant name, it replaced that constant for every op reading it)."""
    name = graph.fresh_name(base)
    while name in extra:
        name = graph.fresh_name(f"{name}'")
    return name


def _with(node: Node, **changes: object) -> Node:
    import dataclasses

    return dataclasses.replace(node, **changes)  # type: ignore[arg-type]


def _run_body(
    node: Node, graph: Graph, start: np.ndarray, *, linear: bool
) -> dict[str, np.ndarray]:
    """Every tensor of the body (per sample, flattened) for a batch of entry values."""
    import torch

    from lipcert.graph.execute import GraphExecutor

    if linear:
        nodes, extra = _linear_part(node, graph)
    else:
        nodes, extra = _leaves(node.body), {}
    sub = Graph(
        input_name=node.inputs[0],
        output_name=node.outputs[0],
        nodes=nodes,
        constants={**graph.constants, **extra},
        shapes=graph.shapes,
        size_known=graph.size_known,
        batch_size=graph.batch_size,
        opset=graph.opset,
    )
    executor = GraphExecutor(sub, dtype=torch.float64)
    values: dict[str, object] = dict(executor.constants)
    x = torch.as_tensor(np.array(start, dtype=np.float64))
    values[sub.input_name] = x
    executor._batch = int(x.shape[0])
    with torch.no_grad():
        executor._run(sub.nodes, values)
    batch = int(x.shape[0])
    return {
        name: value.detach().numpy().reshape(batch, -1)  # type: ignore[attr-defined]
        for name, value in values.items()
        if name not in executor.constants
    }


def probe_bound(
    node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]
) -> Candidate | None:
    """Exact ||A|| of a small block: its explicit matrix, probed on unit vectors, then SVD.

    Column j of A is the bias-free body applied to the unit vector e_j in float64. The
    float64 run has a worst-case error per column of at most D = block_rounding's slope at
    the float64 unit (op-by-op sizes, any summation order), so the computed matrix M has
    ||M - A||_2 <= ||M - A||_F <= sqrt(n) D, and ||A|| <= sigma_max(M) (rounded up by the
    SVD allowance) + sqrt(n) D. The probe is cross-checked against the model's own body at
    its own batch size (f(v) - f(0) = A v for random v): a body whose ops mix the samples of
    a batch, or any disagreement, and the probe is not used.
    """
    entry, exit_ = node.inputs[0], node.outputs[0]
    entry_shape = graph.shape(entry)[1:]
    n = int(np.prod(entry_shape))
    m = int(np.prod(graph.shape(exit_)[1:]))
    if n * m > PROBE_MAX_ENTRIES or min(n, m) > PROBE_MAX_SIDE or not graph.size_known:
        return None
    # The probe runs the body on n samples: a long body on many unit vectors is too slow.
    written = sum(
        int(np.prod(graph.shapes[name][1:]))
        for leaf in _leaves(node.body)
        for name in leaf.outputs
        if name in graph.shapes
    )
    if n * written > PROBE_MAX_WORK:
        return None
    matrix = None
    spread = 0.0
    # All unit vectors as one batch; where the body's folded shapes pin the batch size (a
    # Reshape that moves the batch axis), as many batches of the model's own size. A model
    # whose batch is pinned above 1 may hold constants of the batch's shape, which make the
    # body differ between batch positions: there every unit vector runs at every position
    # (`_probe_positions`), the matrix is position 0's and the others' distance to it is
    # added to the error.
    pinned = graph.batch_size > 1
    for chunk in (graph.batch_size,) if pinned else (n, graph.batch_size):
        if chunk != n and n > PROBE_MAX_SINGLE:
            break
        try:
            if pinned:
                matrix, spread = _probe_positions(node, graph, entry_shape, chunk)
            else:
                matrix = _probe(node, graph, entry_shape, chunk)
            if _probe_agrees(node, graph, matrix, entry_shape):
                break
        except (RuntimeError, ValueError, UnsupportedOpError) as failure:
            # A body whose folded shapes pin the batch fails at another batch size: torch
            # raises RuntimeError (a Reshape or a broadcast that does not fit), numpy
            # ValueError (an output of another size), the executor UnsupportedOpError (an
            # op it refuses at that size). The probe is then not used; anything else is a
            # bug and surfaces.
            _LOG.debug("probe of %s, batches of %d: %s", node.name, chunk, failure)
        matrix = None
    if matrix is None:
        return None
    if not np.all(np.isfinite(matrix)):
        return None
    sigma = spectral.matrix_norm(matrix)
    rounding = block_rounding(node, graph, bounds, unit=FLOAT64_UNIT_ROUNDOFF)
    error = mul_up(
        mul_up(rounding.input_gain, rounding.gamma(FLOAT64_UNIT_ROUNDOFF)), numeric.sqrt_up(n)
    )
    # Position b's computed matrix is within `error` of its exact one (the same rounding
    # bound) and within `spread` (Frobenius) of position 0's: both are added.
    return Candidate(
        add_up(sigma, error, spread),
        f"SVD of the probed {m}x{n} matrix of the whole block",
        exact=True,
    )


def _probe(node: Node, graph: Graph, entry_shape: tuple[int, ...], chunk: int) -> np.ndarray:
    """The (m, n) matrix of the bias-free body, probed `chunk` unit vectors at a time."""
    n = int(np.prod(entry_shape))
    basis = np.eye(n)
    rows = []
    for start in range(0, n, chunk):
        part = basis[start : start + chunk]
        if part.shape[0] < chunk:
            part = np.concatenate([part, np.zeros((chunk - part.shape[0], n))])
        out = _run_body(node, graph, part.reshape(chunk, *entry_shape), linear=True)
        rows.append(out[node.outputs[0]][: min(chunk, n - start)])
    return np.concatenate(rows).T


def _probe_positions(
    node: Node, graph: Graph, entry_shape: tuple[int, ...], batch: int
) -> tuple[np.ndarray, float]:
    """The (m, n) matrix of the bias-free body at batch position 0, each unit vector run at
    all `batch` positions at once, and an upper bound of max over positions b of the
    Frobenius norm of (position b's matrix - position 0's)."""
    n = int(np.prod(entry_shape))
    columns = []
    spread_sq = np.zeros(batch)
    for j in range(n):
        part = np.zeros((batch, n))
        part[:, j] = 1.0
        out = _run_body(node, graph, part.reshape(batch, *entry_shape), linear=True)
        written = np.asarray(out[node.outputs[0]]).reshape(batch, -1)
        columns.append(written[0])
        spread_sq += ((written - written[:1]) ** 2).sum(axis=1)
    spread = float(np.sqrt(spread_sq.max()))
    if not math.isfinite(spread):
        raise ValueError("non-finite probe")
    return np.array(columns).T, numeric.up(spread * (1 + 1e-12)) if spread else 0.0


def _probe_agrees(
    node: Node, graph: Graph, matrix: np.ndarray, entry_shape: tuple[int, ...]
) -> bool:
    rng = np.random.default_rng(0)
    batch = graph.batch_size
    n = matrix.shape[1]
    v = rng.standard_normal((batch, n))
    start = np.asarray(graph.zero_input_values.get(node.inputs[0], np.zeros((batch, n))))
    start = np.broadcast_to(start.reshape(start.shape[0], -1)[:1], (batch, n))
    at_v = _run_body(node, graph, (start + v).reshape(batch, *entry_shape), linear=False)
    at_0 = _run_body(node, graph, start.reshape(batch, *entry_shape), linear=False)
    exit_ = node.outputs[0]
    difference = at_v[exit_] - at_0[exit_]
    expected = v @ matrix.T
    scale = float(np.abs(matrix).sum(axis=1).max() * np.abs(v).max() + np.abs(at_0[exit_]).max())
    return bool(np.all(np.abs(difference - expected) <= 1e-9 * max(scale, 1e-300)))


# --- one convolution applied several times: p(A) ----------------------------------------------


@dataclass(frozen=True)
class ConvPolynomial:
    """The block as suffix o p(A) o prefix, A one stride-1 convolution from C to C channels."""

    conv: Node
    coefficients: np.ndarray  # p(A) = sum_k coefficients[k] A^k
    outer_factor: float  # product of the prefix's and suffix's bounds
    circular: bool
    conv_bound: float  # the conv's own rule: an upper bound of ||A||


def conv_polynomial(
    node: Node, graph: Graph, bounds: list[tuple[Node, LayerBound]]
) -> ConvPolynomial | None:
    """Read the block as prefix, p(A), suffix; None when it is not of that form."""
    factors = {id(inner): layer.factor for inner, layer in bounds}
    body = list(node.body)
    users: dict[str, list[Node]] = {}
    for inner in body:
        for name in graph.data_inputs(inner):
            users.setdefault(name, []).append(inner)
    producers = {name: inner for inner in body for name in inner.outputs if name}
    outer = 1.0
    start = node.inputs[0]
    taken: set[int] = set()
    while len(users.get(start, [])) == 1 and _passive(graph, users[start][0]):
        step = users[start][0]
        taken.add(id(step))
        outer = mul_up(outer, factors[id(step)])
        start = step.outputs[0]
    stop = node.outputs[0]
    while stop != start and stop in producers:
        step = producers[stop]
        source = step.inputs[0]
        if not _passive(graph, step) or len(users.get(source, [])) != 1 or id(step) in taken:
            break
        taken.add(id(step))
        outer = mul_up(outer, factors[id(step)])
        stop = source
    polynomial: dict[str, np.ndarray] = {start: np.array([1.0])}
    conv: Node | None = None
    for inner in body:
        if id(inner) in taken:
            continue
        coefficients = _apply(graph, inner, polynomial, conv)
        if coefficients is None:
            return None
        if inner.op in ("Conv", "CircularConv") and conv is None:
            conv = inner
        polynomial[inner.outputs[0]] = coefficients
    if conv is None or stop not in polynomial:
        return None
    return ConvPolynomial(
        conv,
        polynomial[stop],
        outer,
        circular=conv.op == "CircularConv",
        conv_bound=factors[id(conv)],
    )


def _passive(graph: Graph, node: Node) -> bool:
    """An op before or after the polynomial, bounded by its own rule: any op of one data input
    but a convolution (a bias added after the series, a channel padding or slice, a pixel
    (un)shuffle...)."""
    return len(graph.data_inputs(node)) == 1 and node.op not in ("Conv", "CircularConv")


def _apply(
    graph: Graph, node: Node, polynomial: dict[str, np.ndarray], conv: Node | None
) -> np.ndarray | None:
    data = graph.data_inputs(node)
    if any(name not in polynomial for name in data):
        return None
    inputs = [polynomial[name] for name in data]
    op = node.op
    # Every tensor of p(A) has A's shape: an op that broadcasts its data copies it.
    if any(graph.shape(name) != graph.shape(node.outputs[0]) for name in data):
        return None
    if op in ("Conv", "CircularConv"):
        if conv is not None and not _same_conv(graph, conv, node):
            return None
        if conv is None and not _square_conv(graph, node):
            return None
        return np.concatenate([[0.0], inputs[0]])
    if op in ("Identity", "Dropout"):
        return inputs[0]
    if op == "Neg":
        return -inputs[0]
    if op in ("Add", "Sum"):
        return _add(inputs)
    if op == "Sub":
        if len(data) == 2:
            return _add([inputs[0], -inputs[1]])
        return inputs[0] if data[0] == node.inputs[0] else -inputs[0]
    if op in ("Mul", "Div"):
        other = next(n for n in node.inputs if n != data[0])
        value = np.asarray(graph.constant(other), dtype=np.float64)
        if value.size != 1 or (op == "Div" and data[0] != node.inputs[0]):
            return None
        scalar = float(value.reshape(-1)[0])
        if op == "Div":
            if scalar == 0:
                return None
            return inputs[0] / scalar
        return inputs[0] * scalar
    return None


def _add(parts: list[np.ndarray]) -> np.ndarray:
    size = max(len(p) for p in parts)
    total = np.zeros(size)
    for p in parts:
        total[: len(p)] += p
    return total


def _square_conv(graph: Graph, node: Node) -> bool:
    """A stride-1, ungrouped convolution from C channels to C on the same grid."""
    if not graph.is_constant(node.inputs[1]):
        return False
    weight = np.asarray(graph.constant(node.inputs[1]))
    if weight.ndim < 3 or weight.shape[0] != weight.shape[1] or int(node.attr("group", 1)) != 1:
        return False
    if graph.shape(node.inputs[0]) != graph.shape(node.outputs[0]):
        return False
    return all(int(s) == 1 for s in node.attr("strides", [1] * (weight.ndim - 2)))


def _same_conv(graph: Graph, first: Node, other: Node) -> bool:
    if first.op != other.op or not graph.is_constant(other.inputs[1]):
        return False
    keys = ("pads", "strides", "dilations", "group", "auto_pad", "kernel_shape")
    if any(first.attr(k) != other.attr(k) for k in keys):
        return False
    if graph.shape(first.inputs[0]) != graph.shape(other.inputs[0]):
        return False
    a = np.asarray(graph.constant(first.inputs[1]))
    b = np.asarray(graph.constant(other.inputs[1]))
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _geometry(
    graph: Graph, conv: Node
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    weight = np.asarray(graph.constant(conv.inputs[1]))
    spatial = graph.shape(conv.inputs[0])[2:]
    win = window(conv, spatial, tuple(weight.shape[2:]))
    return spatial, win.pads_begin, win.pads_end, win.dilations


def _conv_operator_norm(graph: Graph, conv: Node, kernel: np.ndarray, circular: bool) -> float:
    """Upper bound of the norm of `conv` with its weight replaced by `kernel` (stride 1)."""
    spatial, begin, end, dilations = _geometry(graph, conv)
    rank = len(spatial)
    if not graph.size_known:
        if circular:
            taps = int(np.prod(kernel.shape[2:]))
            reshaped = spectral.matrix_norm(kernel.reshape(kernel.shape[0], -1))
            return mul_up(numeric.sqrt_up(taps), reshaped)
        return spectral.conv_norm_size_free(kernel, (1,) * rank, dilations, 1)
    return spectral.conv_norm(
        kernel, spatial, (1,) * rank, begin, end, dilations, 1, circular=circular
    )


def flipped_transpose(kernel: np.ndarray) -> np.ndarray:
    """The kernel of the adjoint of a symmetric-padded stride-1 conv: K^T with taps reversed."""
    spatial_axes = tuple(range(2, kernel.ndim))
    return np.flip(np.swapaxes(kernel, 0, 1), axis=spatial_axes)


def _split_leftover_bound(weight: np.ndarray) -> float:
    """A bound of the conv norm of weight - skew_part - symmetric_part, the float64 rounding
    of the split. Each half is one rounded sum halved exactly, so each entry of the leftover
    is at most u (|w| + |flip(w^T)|); a conv's norm is at most the sum of its taps' norms,
    hence at most sqrt(taps) times the kernel's Frobenius norm. (When the symmetric part is
    exactly zero the split is exact: w - (-w) = 2w.)"""
    magnitude = np.abs(weight) + np.abs(flipped_transpose(weight))
    taps = int(np.prod(weight.shape[2:]))
    frobenius = float(np.sqrt(np.sum(magnitude * magnitude)))
    return numeric.up(math.sqrt(taps) * 2.0**-52 * frobenius * (1 + 1e-6))


def polynomial_candidates(graph: Graph, poly: ConvPolynomial) -> list[Candidate]:
    """Bounds of ||suffix p(A) prefix|| <= outer * ||p(A)||, by every method that applies."""
    conv = poly.conv
    weight = np.asarray(graph.constant(conv.inputs[1]), dtype=np.float64)
    c = poly.coefficients
    found: list[Candidate] = []
    rho = poly.conv_bound
    absolute = numeric.add_up(*(mul_up(abs(float(ck)), rho**k) for k, ck in enumerate(c)))
    found.append(
        Candidate(
            mul_up(poly.outer_factor, numeric.up(absolute * (1 + 1e-12))),
            f"sum of |c_k| ||A||^k over a polynomial of degree {len(c) - 1} in one conv",
            exact=False,
        )
    )
    _, begin, end, dilations = _geometry(graph, conv)
    kernel = weight.shape[2:]
    symmetric = all(
        b == e and b * 2 == (k - 1) * d
        for b, e, k, d in zip(begin, end, kernel, dilations, strict=True)
    )
    if symmetric:
        skew_part = (weight - flipped_transpose(weight)) / 2
        symmetric_part = (weight + flipped_transpose(weight)) / 2
        rho_skew = (
            rho
            if not np.any(symmetric_part)
            else _conv_operator_norm(graph, conv, skew_part, poly.circular)
        )
        epsilon = (
            0.0
            if not np.any(symmetric_part)
            else add_up(
                _conv_operator_norm(graph, conv, symmetric_part, poly.circular),
                _split_leftover_bound(weight),
            )
        )
        if epsilon <= SKEW_TOLERANCE * rho_skew:
            value = skew_polynomial_bound(c, rho_skew, epsilon)
            found.append(
                Candidate(
                    mul_up(poly.outer_factor, value),
                    "polynomial of a skew-symmetric conv: max |p(it)| over |t| <= ||A||",
                    exact=False,
                )
            )
    if len(c) <= 2:
        identity_tap: list[int] | None = []
        for b, k, d in zip(begin, kernel, dilations, strict=True):
            if b % d or b // d >= k or identity_tap is None:
                identity_tap = None
                continue
            identity_tap.append(b // d)
        if identity_tap is not None:
            folded = (c[1] if len(c) > 1 else 0.0) * weight
            channels = weight.shape[0]
            index = (
                np.arange(channels),
                np.arange(channels),
                *[np.full(channels, t) for t in identity_tap],
            )
            folded[index] += c[0]
            value = _conv_operator_norm(graph, conv, folded, poly.circular)
            # float64 rounding of the folded taps: at most 2 ulps of each, far below the
            # allowance the norm adds; one more relative ulp-scale margin covers it.
            value = numeric.up(value * (1 + 1e-12))
            found.append(
                Candidate(
                    mul_up(poly.outer_factor, value),
                    "identity folded into the conv kernel (c0 x + c1 conv(x) is one conv)",
                    exact=poly.circular and graph.size_known and poly.outer_factor == 1.0,
                )
            )
    return found


def skew_polynomial_bound(coefficients: np.ndarray, rho: float, epsilon: float = 0.0) -> float:
    """Upper bound of ||p(S + E)|| for S skew-symmetric with ||S|| <= rho and ||E|| <= epsilon.

    S is normal with eigenvalues i t, |t| <= rho, so p(S) is normal with eigenvalues p(i t)
    and ||p(S)|| = max |p(i t)| over its spectrum <= max over |t| <= rho of |p(i t)|. For the
    perturbation, (S + E)^k - S^k is a sum of products with at least one E, whose norms add
    up to at most (rho + epsilon)^k - rho^k: so
    ||p(S + E)|| <= max_{|t| <= rho} |p(i t)| + sum_k |c_k| ((rho + epsilon)^k - rho^k).

    The maximum of q(t) = |p(i t)|^2 (a real polynomial, even in t) on [0, rho] is bounded
    on a grid of spacing h: between two grid points q is at most the larger of its values
    plus h^2 / 8 max |q''| (the error of linear interpolation), with max |q''| bounded by
    sum |a_k| k (k - 1) rho^(k - 2); the float64 evaluation error of Horner's rule is added.
    """
    c = np.asarray(coefficients, dtype=np.float64)
    k = np.arange(len(c))
    real = np.where(k % 2 == 0, c * np.where(k % 4 == 0, 1.0, -1.0), 0.0)
    imag = np.where(k % 2 == 1, c * np.where(k % 4 == 1, 1.0, -1.0), 0.0)
    q: np.ndarray = np.polynomial.polynomial.polyadd(
        np.polynomial.polynomial.polymul(real, real), np.polynomial.polynomial.polymul(imag, imag)
    )
    points = 1 << 16
    t = np.linspace(0.0, rho, points + 1)
    values = np.polynomial.polynomial.polyval(t, q)
    degree = np.arange(len(q))
    absolute_sum = float(np.sum(np.abs(q) * rho**degree))
    evaluation = 4 * len(q) * numeric.FLOAT64_EPS * absolute_sum
    second = float(
        np.sum(np.abs(q) * degree * np.maximum(degree - 1, 0) * rho ** np.maximum(degree - 2, 0))
    )
    h = rho / points
    q_max = float(values.max()) + evaluation + h * h / 8 * second
    # The coefficients themselves come from a few float64 operations on the model's
    # constants: a relative margin far above their rounding.
    top = numeric.sqrt_up(max(q_max, 0.0) * (1 + 1e-12))
    perturbation = 0.0
    if epsilon > 0:
        perturbation = float(np.sum(np.abs(c) * ((rho + epsilon) ** k - rho**k))) * (1 + 1e-12)
    return numeric.up(add_up(top, perturbation) * (1 + 1e-12))


# --- stride-1 circular convolutions: one symbol per frequency ----------------------------------

# The symbol method multiplies F matrices per conv: at most this many complex multiply-adds,
# and holds symbols of at most this many complex entries (256 MiB).
SYMBOL_MAX_WORK = 1 << 31
SYMBOL_MAX_ENTRIES = 1 << 24


def circular_symbol_bound(node: Node, graph: Graph) -> Candidate | None:
    """Exact ||A|| of a block of stride-1 circular convolutions on one grid, by frequency.

    On the grid of size n (per spatial axis), the unitary DFT over space turns a stride-1
    circular convolution y[q] = sum_t W[t] x[q + t d - pb] into a block-diagonal operator with
    the C_out x C_in matrix K(f) = sum_t W[t] exp(2 pi i f.(t d - pb) / n) at frequency f.
    Sums of branches add these symbols, compositions multiply them, per-channel scalings,
    channel zero-padding and channel slices are constant matrices: the block is unitarily
    equivalent to block-diag over f of S(f), and ||A|| = max_f ||S(f)||_2, exactly.

    Rounding: beside each symbol S_t we carry a non-negative matrix B_t with |S_t(f)| <= B_t
    entrywise for every f (the abs kernels summed over taps, multiplied and added as S_t is)
    and a relative error e_t with |computed S_t(f) - S_t(f)| <= e_t B_t entrywise: a symbol of
    T taps computed by direct summation starts at gamma(T + 6) plus the twiddle factors'
    own error (see _circular_kernel_symbol); a product of inner size c adds gamma(c + 4)
    (complex multiply-adds) to e_in; a sum keeps the larger e plus gamma(2); a scaling adds
    gamma(2). Then
    ||computed S(f) - S(f)||_2 <= e ||B||_F, added to the largest computed singular value
    (rounded up by the SVD allowance).
    """
    entry = node.inputs[0]
    entry_shape = graph.shape(entry)
    if len(entry_shape) < 3 or not graph.size_known:
        return None
    grid = tuple(entry_shape[2:])
    frequencies = int(np.prod(grid))
    channels0 = entry_shape[1]
    unit = FLOAT64_UNIT_ROUNDOFF
    eye = np.eye(channels0)
    symbols: dict[str, tuple[np.ndarray, np.ndarray, float]] = {
        entry: (
            np.broadcast_to(eye.astype(np.complex128), (frequencies, channels0, channels0)),
            eye,
            0.0,
        )
    }
    work = 0
    has_conv = False
    for inner in node.body:
        data = graph.data_inputs(inner)
        if any(name not in symbols for name in data):
            return None
        out = inner.outputs[0]
        out_shape = graph.shape(out)
        if len(out_shape) != len(entry_shape) or tuple(out_shape[2:]) != grid:
            return None
        largest_channels = max([out_shape[1], *(graph.shape(name)[1] for name in data)])
        if frequencies * largest_channels * max(largest_channels, channels0) > SYMBOL_MAX_ENTRIES:
            return None
        result = _symbol_step(graph, inner, data, symbols, grid, unit)
        if result is None:
            return None
        if inner.op in ("Conv", "CircularConv"):
            has_conv = True
            work += frequencies * int(np.prod(result[0].shape[1:])) * symbols[data[0]][0].shape[1]
            if work > SYMBOL_MAX_WORK:
                return None
        symbols[out] = result
    if not has_conv or node.outputs[0] not in symbols:
        return None
    symbol, bound_matrix, error = symbols[node.outputs[0]]
    rows, cols = symbol.shape[1:]
    sigma = float(np.linalg.svd(symbol, compute_uv=False).max()) if symbol.size else 0.0
    largest = numeric.singular_value_up(sigma, max(rows, cols))
    slack = mul_up(
        numeric.up(error * (1 + 1e-12)),
        numeric.up(float(np.linalg.norm(bound_matrix)) * (1 + 1e-12)),
    )
    return Candidate(
        add_up(largest, slack),
        f"per-frequency symbols of circular convolutions ({frequencies} frequencies), SVD",
        exact=True,
    )


def _symbol_step(
    graph: Graph,
    node: Node,
    data: list[str],
    symbols: dict[str, tuple[np.ndarray, np.ndarray, float]],
    grid: tuple[int, ...],
    unit: float,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    op = node.op
    out_shape = graph.shape(node.outputs[0])
    same = all(graph.shape(name) == out_shape for name in data)
    if op in ("Identity", "Dropout") and same:
        return symbols[data[0]]
    if op == "Neg" and same:
        s, b, e = symbols[data[0]]
        return -s, b, e
    if op in ("Add", "Sum", "Sub") and same:
        parts = [symbols[name] for name in data]
        signs = [1.0] * len(parts)
        if op == "Sub":
            if len(data) == 2:
                signs = [1.0, -1.0]
            elif data[0] != node.inputs[0]:
                signs = [-1.0]
        total = sum(sign * p[0] for sign, p in zip(signs, parts, strict=True))
        bound = sum(p[1] for p in parts)
        error = max(p[2] for p in parts) + gamma(len(parts) + 1, unit)
        return np.asarray(total), np.asarray(bound), error
    if op in ("Mul", "Div", "BatchNormalization") and same:
        scale = _channel_scale(graph, node, data[0])
        if scale is None:
            return None
        s, b, e = symbols[data[0]]
        return scale[None, :, None] * s, np.abs(scale)[:, None] * b, e + gamma(4, unit)
    if op in ("Conv", "CircularConv"):
        kernel = _circular_kernel_symbol(graph, node, grid)
        if kernel is None:
            return None
        k_symbol, k_bound, taps, twiddle = kernel
        s, b, e = symbols[data[0]]
        if k_symbol.shape[2] != s.shape[1]:
            return None
        product = np.matmul(k_symbol, s)
        inner_size = k_symbol.shape[2]
        k_error = gamma(taps + 6, unit) + twiddle
        error = e + k_error + gamma(inner_size + 4, unit) + 2 * e * k_error
        return product, k_bound @ b, error
    if op in ("Pad", "Slice") and len(data) == 1:
        selection = _channel_selection(graph, node, data[0])
        if selection is None:
            return None
        s, b, e = symbols[data[0]]
        return np.matmul(selection, s), selection @ b, e
    return None


def _channel_scale(graph: Graph, node: Node, source: str) -> np.ndarray | None:
    """Per-channel factors of a Mul/Div by a constant (or an inference BatchNorm)."""
    shape = graph.shape(source)
    channels = shape[1]
    if node.op == "BatchNormalization":
        if node.attr("training_mode", 0):
            return None
        gamma = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
        var = np.asarray(graph.constant(node.inputs[4]), dtype=np.float64)
        return gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
    other = next((n for n in node.inputs if n != source), None)
    if other is None or not graph.is_constant(other):
        return None
    if node.op == "Div" and node.inputs[0] != source:
        return None
    value = np.asarray(graph.constant(other), dtype=np.float64)
    if value.ndim > len(shape):
        return None
    try:
        full = np.broadcast_to(value, (1, *shape[1:]))
    except ValueError:
        return None
    per_channel = full[0].reshape(channels, -1)
    if not np.all(per_channel == per_channel[:, :1]):
        return None
    factors = per_channel[:, 0]
    if node.op == "Div":
        if np.any(factors == 0):
            return None
        return 1.0 / factors
    return factors


def _channel_selection(graph: Graph, node: Node, source: str) -> np.ndarray | None:
    """The 0/1 matrix of a zero Pad or a Slice that acts on the channel axis only."""
    in_shape, out_shape = graph.shape(source), graph.shape(node.outputs[0])
    if in_shape[0] != out_shape[0] or in_shape[2:] != out_shape[2:]:
        return None
    c_in, c_out = in_shape[1], out_shape[1]
    matrix = np.zeros((c_out, c_in))
    if node.op == "Pad":
        if node.attr("mode", "constant") != "constant":
            return None
        if len(node.inputs) < 2 or not graph.is_constant(node.inputs[1]):
            return None
        if len(node.inputs) > 3 and node.inputs[3]:
            return None
        pads = [int(v) for v in np.asarray(graph.constant(node.inputs[1])).reshape(-1)]
        rank = len(in_shape)
        if len(pads) != 2 * rank or any(p for i, p in enumerate(pads) if i % rank != 1):
            return None
        before = pads[1]
        if before < 0 or pads[rank + 1] < 0:
            return None
        matrix[before + np.arange(c_in), np.arange(c_in)] = 1.0
        return matrix
    from lipcert.graph.affine_blocks import _sliced_positions

    kept = _sliced_positions(graph, node, 1)
    if kept is None or len(kept) != c_out:
        return None
    matrix[np.arange(c_out), kept] = 1.0
    return matrix


def _circular_kernel_symbol(
    graph: Graph, node: Node, grid: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """K(f) (F, C_out, C_in), sum over taps of |W| (C_out, C_in), the number of taps, and the
    relative error of the twiddle factors: exp(i a) for a float64 argument a = 2 pi f s / n,
    itself off by at most 4 u |a|, evaluated within a few ulps; 8 u (1 + max |a|) per axis."""
    if not graph.is_constant(node.inputs[1]) or int(node.attr("group", 1)) != 1:
        return None
    weight = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
    kernel = weight.shape[2:]
    if len(kernel) != len(grid):
        return None
    win = window(node, grid, tuple(kernel))
    if any(s != 1 for s in win.strides):
        return None
    if node.op == "Conv" and (
        any(win.pads_begin) or any(win.pads_end) or any(k != 1 for k in kernel)
    ):
        return None  # only a 1x1 conv without padding is circular as it stands
    offsets = []
    twiddle = 0.0
    for axis, n in enumerate(grid):
        taps = np.arange(kernel[axis]) * win.dilations[axis] - win.pads_begin[axis]
        phases = 2 * np.pi * np.outer(np.arange(n), taps) / n
        offsets.append(np.exp(1j * phases))  # (n, k)
        twiddle += 8 * FLOAT64_UNIT_ROUNDOFF * (1 + float(np.abs(phases).max()))
    if len(grid) == 1:
        symbol = np.einsum("fa,oia->foi", offsets[0], weight)
    else:
        symbol = np.einsum("fa,gb,oiab->fgoi", offsets[0], offsets[1], weight).reshape(
            -1, weight.shape[0], weight.shape[1]
        )
    absolute = np.abs(weight).sum(axis=tuple(range(2, weight.ndim)))
    return symbol, absolute, int(np.prod(kernel)), twiddle
