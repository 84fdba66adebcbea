"""Composition of the per-node bounds over the graph, and the certificate spec.

For every tensor t, L[t] bounds the Lipschitz constant of input -> t: a chain multiplies,
Add sums its branches, Concat takes the root of the sum of squares. When the graph ends in a
linear head (Gemm/MatMul, then only a bias or per-logit scaling), the body bound and the
head's rows are kept apart, so that a pair of classes gets K_ij = ||w_i - w_j|| * L_body.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from lipcert.bounds import spectral
from lipcert.bounds.numeric import (
    FLOAT32_UNIT_ROUNDOFF,
    SQRT2_UP,
    add_up,
    mul_up,
    rss_up,
    singular_value_up,
    sqrt_up,
)

# The unit roundoffs and gamma live in numeric; this module has always exported them.
from lipcert.bounds.numeric import FLOAT64_UNIT_ROUNDOFF as FLOAT64_UNIT_ROUNDOFF
from lipcert.bounds.numeric import gamma as gamma
from lipcert.bounds.registry import (
    Combine,
    LayerBound,
    NonFiniteRoundingError,
    Rounding,
    bound_node,
    refuse,
)
from lipcert.bounds.spec import CertificateSpec
from lipcert.bounds.zero_input import zero_input_sizes
from lipcert.errors import LipcertError, ModelLoadError, UnsupportedOpError
from lipcert.graph import Graph, Node
from lipcert.graph.patterns import fuse_patterns

# Ops whose outputs after the first are indices, not Lipschitz in the input.
_INDEX_OUTPUTS = frozenset({"TopK", "MaxPool"})


@dataclass(frozen=True)
class LayerReport:
    """One row of `lipcert verify`: a node and its bound."""

    name: str
    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    bound: float
    method: str
    exact: bool
    combine: str
    cumulative: float  # bound of input -> this node's output


@dataclass
class Analysis:
    """The bound of every layer and the certificate spec of one graph."""

    graph: Graph
    layers: list[LayerReport]
    spec: CertificateSpec
    node_bounds: list[tuple[Node, LayerBound]]
    notes: list[str] = field(default_factory=list)
    tensor_bounds: dict[str, float] = field(default_factory=dict)
    # upper bounds of every tensor's exact per-sample ||t(0)|| (lipcert.bounds.zero_input)
    zero_sizes: dict[str, float] = field(default_factory=dict)

    def spec_for_precision(self, unit_roundoff: float) -> CertificateSpec:
        """The spec with the rounding allowance of a run at this unit roundoff."""
        constant, slope = float_error_bound(
            self.graph, self.node_bounds, self.tensor_bounds, self.zero_sizes, unit_roundoff
        )
        return dataclasses.replace(self.spec, fp_error_constant=constant, fp_error_slope=slope)


def analyse(graph: Graph) -> Analysis:
    """Fuse patterns, bound every node, compose, and build the certificate spec.

    `graph` is left as it is: patterns are fused in a copy, which is `Analysis.graph`.
    """
    from threadpoolctl import threadpool_limits

    # The bounds are many small eigenvalue problems: BLAS threads only add contention (5 to
    # 10 times slower with two threads on a two-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        return _analyse(graph.copy())


def _analyse(graph: Graph) -> Analysis:
    if graph.output_name in graph.shapes and math.prod(graph.output_shape) == 0:
        raise ModelLoadError(
            f"the output {graph.output_name!r} has no logits (shape {graph.output_shape}): "
            "there is no decision to certify"
        )
    fuse_patterns(graph)
    graph.unique_node_names()
    bounds: dict[str, float] = {graph.input_name: 1.0}
    layers: list[LayerReport] = []
    node_bounds: list[tuple[Node, LayerBound]] = []
    for node in graph.nodes:
        try:
            layer = bound_node(node, graph)
        except NonFiniteRoundingError as failure:
            raise refuse(node, f"its weights' norms overflow float64: {failure}") from failure
        if not math.isfinite(layer.factor) or layer.factor < 0:
            raise refuse(node, f"its bound {layer.factor!r} is not a finite non-negative number")
        output_bound = _compose(node, graph, layer, bounds)
        outputs = node.outputs[:1] if node.op in _INDEX_OUTPUTS else node.outputs
        for name in outputs:
            if name:
                bounds[name] = output_bound
        layers.append(_report(node, graph, layer, output_bound))
        node_bounds.append((node, layer))
    if graph.output_name not in bounds:
        raise UnsupportedOpError(
            f"the output {graph.output_name!r} is not reached by any bounded path"
        )
    notes = list(graph.notes)
    try:
        zero_sizes = zero_input_sizes(graph, node_bounds)
    except (LipcertError, RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        # no sizes: every allowance that needs one is infinite (nothing is certified)
        zero_sizes = {}
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        notes.append(
            "no rounding allowance: lipcert's float64 executor cannot run the graph at the "
            f"zero input ({first_line}), so no sample can be certified"
        )
    analysis = Analysis(
        graph=graph,
        layers=layers,
        spec=_certificate_spec(graph, bounds),
        node_bounds=node_bounds,
        notes=notes,
        tensor_bounds=bounds,
        zero_sizes=zero_sizes,
    )
    analysis.spec = analysis.spec_for_precision(FLOAT32_UNIT_ROUNDOFF)
    return analysis


def _compose(node: Node, graph: Graph, layer: LayerBound, bounds: dict[str, float]) -> float:
    sources = graph.data_inputs(node)
    for name in sources:
        if name not in bounds:
            raise refuse(
                node,
                f"its input {name!r} is not Lipschitz in the model input "
                "(an index output, or a tensor no rule bounds)",
            )
    incoming = [bounds[name] for name in sources]
    if layer.combine is Combine.CHAIN:
        if len(incoming) != 1:
            raise refuse(node, f"expected one data input but found {len(incoming)}")
        return mul_up(layer.factor, incoming[0])
    if layer.combine is Combine.SUM:
        return mul_up(layer.factor, add_up(*incoming))
    return mul_up(layer.factor, rss_up(*incoming))


def _report(node: Node, graph: Graph, layer: LayerBound, cumulative: float) -> LayerReport:
    sources = graph.data_inputs(node)
    return LayerReport(
        name=node.name,
        op=node.op,
        input_shape=graph.shape(sources[0])[1:] if sources else (),
        output_shape=graph.shape(node.outputs[0])[1:],
        bound=layer.factor,
        method=layer.method,
        exact=layer.exact,
        combine=layer.combine.value,
        cumulative=cumulative,
    )


# --- the head and the spec -----------------------------------------------------------------

# Ops allowed between a linear head and the logits: they act on each logit separately.
_TAIL_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Cast"}
)


@dataclass(frozen=True)
class _Head:
    node: Node
    body_input: str
    rows: np.ndarray  # (K, d): logit i = rows[i] . body + constant


def _certificate_spec(graph: Graph, bounds: dict[str, float]) -> CertificateSpec:
    total = bounds[graph.output_name]
    num_logits = int(np.prod(graph.output_shape)) if graph.output_shape else 1
    head = _find_head(graph)
    if head is None or head.rows.shape[0] != num_logits:
        return CertificateSpec(
            lipschitz_bound=total,
            logit_bounds=(total,) * num_logits,
            pairwise_bounds=None,
            num_logits=num_logits,
            input_shape=graph.input_shape,
            size_known=graph.size_known,
        )
    body = bounds[head.body_input]
    rows = head.rows
    dimension = rows.shape[1]
    # rows built from constants the model computes are within `spread` of the exact rows,
    # elementwise relative (lipcert.bounds.folded): norms move by at most spread times the
    # norms of the rows' absolute values
    spread = _head_spread(graph, head)
    # as in head_row_differences: squares below float64's normal range lose up to 2^-1074
    # each (rows of 1e-170: every square is 0), which no relative margin covers
    squares = np.einsum("ij,ij->i", rows, rows)
    underflow = _underflow_allowance(dimension)
    norms = np.nextafter(np.sqrt(squares + underflow), np.inf)
    logit = tuple(
        mul_up(singular_value_up(add_up(float(r), mul_up(spread, float(r))), dimension), body)
        for r in norms
    )
    pairwise = np.nextafter(head_row_differences(rows, spread) * body, np.inf)
    np.fill_diagonal(pairwise, 0.0)
    # an upper bound for tiny rows too: matrix_norm scales them by a power of two to a largest
    # entry in [0.5, 1) first (spectral._scale_to_unit), so no square underflows
    head_norm = spectral.matrix_norm(rows)
    if spread:
        # ||rows||_F^2 = sum of the K row sums: each off by gamma_d and the underflow term,
        # their sum by gamma_K more
        frobenius_squared = add_up(float(np.sum(squares)), mul_up(float(len(squares)), underflow))
        widen = 1 + 2 * gamma(dimension + len(squares) + 2, FLOAT64_UNIT_ROUNDOFF)
        frobenius = sqrt_up(mul_up(frobenius_squared, widen))
        head_norm = add_up(head_norm, mul_up(spread, frobenius))
    vector = min(total, mul_up(head_norm, body))
    pairs = np.minimum(pairwise, mul_up(SQRT2_UP, vector))
    return CertificateSpec(
        lipschitz_bound=vector,
        logit_bounds=tuple(min(b, vector) for b in logit),
        pairwise_bounds=pairs if num_logits > 1 else None,  # one logit has no pairs
        num_logits=num_logits,
        input_shape=graph.input_shape,
        size_known=graph.size_known,
        body_bound=body,
        head=head.node.name,
    )


def head_row_differences(rows: np.ndarray, spread: float) -> np.ndarray:
    """Upper bounds of ||w_i - w_j|| for every pair of the exact rows, from their float64
    values `rows` (K, d), widened by spread (||w_i|| + ||w_j||) when the rows are within
    `spread` of the exact ones elementwise (_head_spread).

    From the Gram matrix (one product, not K^2 d differences: 1,000 ImageNet classes):
    d_ij^2 = n_i + n_j - 2 G_ij, computed in float64 in any order, is within
    (2 gamma_d + 5u)(n_i + n_j) <= 4 gamma_(d+4) (n_i + n_j) =: E_ij of the exact one
    (|G_ij| <= (n_i + n_j) / 2), so d_ij <= sqrt(d_ij^2 + E_ij). Where that would add more
    than 1e-10 of d_ij (rows that nearly coincide), the difference itself is taken: its
    float64 norm, within (d + 4) eps of itself. Both are covered by a margin of 64 d eps.
    Products below float64's normal range lose up to 2^-1074 each, which no relative bound
    covers (rows of 1e-170: every square is 0): every sum of squares gets (8 d + 16) 2^-1074."""
    rows = np.asarray(rows, dtype=np.float64)
    dimension = rows.shape[1]
    underflow = _underflow_allowance(dimension)
    squares = np.einsum("ij,ij->i", rows, rows)
    total = squares[:, None] + squares[None, :]
    gram_squares = total - 2.0 * (rows @ rows.T)
    allowance = 4.0 * gamma(dimension + 4, FLOAT64_UNIT_ROUNDOFF) * total + underflow
    differences = np.sqrt(np.maximum(gram_squares, 0.0) + allowance)
    near = np.argwhere(gram_squares <= 1e10 * allowance)
    for i in np.unique(near[:, 0]):
        columns = near[near[:, 0] == i, 1]
        difference = rows[i] - rows[columns]
        differences[i, columns] = np.sqrt(np.einsum("ij,ij->i", difference, difference) + underflow)
    if spread:
        norms = np.nextafter(np.sqrt(squares + underflow), np.inf)
        moved = np.nextafter(spread * np.nextafter(norms[:, None] + norms[None, :], np.inf), np.inf)
        differences = np.nextafter(differences + moved, np.inf)
    margin = 64.0 * max(dimension, 1) * float(np.finfo(np.float64).eps)
    return np.nextafter(differences * (1.0 + margin), np.inf)


def _underflow_allowance(dimension: int) -> float:
    """(8 d + 16) 2^-1074: added to each float64 sum of d squares, it covers the squares
    below float64's normal range (each loses up to 2^-1074, no relative bound covers it)."""
    return (8.0 * dimension + 16.0) * 2.0**-1074


def _head_spread(graph: Graph, head: _Head) -> float:
    """A bound of |exact rows - head.rows| / |head.rows| elementwise: the float64 rounding of
    the rows' product (_find_head: alpha times the weight times each scaling after it, 1 /
    factor for a Div) and the error of the constants the model computes (known to rho of
    themselves) the head or a scaling after it reads; 0 for a head with alpha 1 and no Mul
    or Div after it that reads only exact constants."""
    producers = graph.producers()
    total, name, scalings = 0.0, graph.output_name, 0
    while True:
        node = producers.get(name)
        if node is None:
            break
        scalings += node is not head.node and node.op in ("Mul", "Div")
        # the node's and its body's (a folded BatchNorm's scale and variance): k of them
        # move the rows by a product of k factors (1 + rho)
        inner = [node, *node.body]
        read = {n for part in inner for n in part.inputs if n in graph.inexact_constants}
        total += len(read) * max((graph.folded_error.get(n, 0.0) for n in read), default=0.0)
        if node is head.node:
            break
        name = graph.data_inputs(node)[0]
    # float64 products of the rows: two roundings per scaling (1 / factor, the product), one
    # for alpha, one for the rows times the scale; |v - fl(v)| <= gamma / (1 - gamma) |fl(v)|
    exact_product = not scalings and float(head.node.attr("alpha", 1.0)) == 1.0
    rounding = 0.0 if exact_product else 2 * gamma(2 * scalings + 2, FLOAT64_UNIT_ROUNDOFF)
    if not total:
        return mul_up(rounding, 1 + 1e-9) if rounding else 0.0
    # a product of (1 + rho_k), and |c - c64| <= rho |c| <= rho / (1 - rho) |c64|
    folded = float(np.expm1(2 * total)) / (1 - total)
    return mul_up(folded + rounding + folded * rounding, 1 + 1e-9)


def _find_head(graph: Graph) -> _Head | None:
    """A Gemm/MatMul with constant weight whose output reaches the logits per logit only."""
    producers = graph.producers()
    scale: np.ndarray | float = 1.0
    name = graph.output_name
    while True:
        node = producers.get(name)
        if node is None:
            return None
        sources = graph.data_inputs(node)
        if len(sources) != 1:
            return None
        if node.op in ("Gemm", "MatMul"):
            rows = _head_rows(node, graph)
            if rows is None:
                return None
            scale_vector = np.broadcast_to(
                np.asarray(scale, dtype=np.float64).reshape(-1), (rows.shape[0],)
            )
            return _Head(node=node, body_input=sources[0], rows=rows * scale_vector[:, None])
        if node.op not in _TAIL_OPS or node.body:
            return None
        same_size = math.prod(graph.shape(sources[0])) == math.prod(graph.shape(node.outputs[0]))
        if not same_size:
            return None  # it broadcasts a logit to several: not one logit to one
        if node.op in ("Mul", "Div"):
            other = next(n for n in node.inputs if n != sources[0])
            factor = np.asarray(graph.constant(other), dtype=np.float64)
            if factor.size > 1 and factor.reshape(-1).size != int(
                np.prod(graph.shape(node.outputs[0]))
            ):
                return None
            factor = factor.reshape(-1) if factor.size > 1 else factor.reshape(())
            scale = scale * (factor if node.op == "Mul" else 1.0 / factor)
        if node.op in ("Add", "Sub") and graph.shape(sources[0]) != graph.shape(node.outputs[0]):
            return None
        if node.op == "Sub" and node.inputs[0] != sources[0]:
            scale = -1.0 * np.asarray(scale)
        name = sources[0]


def _head_rows(node: Node, graph: Graph) -> np.ndarray | None:
    source = graph.data_inputs(node)[0]
    if len(graph.shape(source)) != 2:
        return None
    if node.op == "Gemm":
        if node.attr("transA", 0) or not graph.is_constant(node.inputs[1]):
            return None
        weight = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
        matrix = weight if node.attr("transB", 0) else weight.T
        return float(node.attr("alpha", 1.0)) * matrix
    if node.inputs[0] != source or not graph.is_constant(node.inputs[1]):
        return None
    weight = np.asarray(graph.constant(node.inputs[1]), dtype=np.float64)
    return weight.T if weight.ndim == 2 else None


# --- the floating-point allowance ----------------------------------------------------------


def float_error_bound(
    graph: Graph,
    node_bounds: list[tuple[Node, LayerBound]],
    bounds: dict[str, float],
    zero_sizes: dict[str, float],
    unit: float = FLOAT32_UNIT_ROUNDOFF,
) -> tuple[float, float]:
    """(c, d) with ||f computed in floating point (x) - f(x)||_2 <= c + d ||x||_2, worst case.

    `unit` is the unit roundoff of the arithmetic: 2^-24 for float32, 2^-53 for float64.

    Forward over the graph, for every tensor t: ||t(x)|| <= N_t = ||t(0)|| + L_t ||x||
    (||t(0)|| bounded by `zero_sizes`, lipcert.bounds.zero_input), and
    the error of the computed t is at most e_t = c_t + d_t ||x||. A node passes on its input
    error times its Lipschitz bound and adds its own rounding, which may grow with the
    (computed, so perturbed) sizes of its input and output: all terms are affine in ||x||.
    The input's own rounding starts it: e_input = 2 u ||x|| (the division of pixels by 255,
    or the --mean/--std normalisation, and the cast to the model's precision).
    """
    errors: dict[str, tuple[float, float]] = {graph.input_name: (0.0, 2 * unit)}
    for node, layer in node_bounds:
        sources = graph.data_inputs(node)
        incoming = _affine_sum(errors[name] for name in sources)
        propagated = _affine_scale(incoming, layer.factor)
        local = _rounding_error(
            graph, node, layer.rounding, sources, incoming, propagated, bounds, zero_sizes, unit
        )
        total = _affine_sum([propagated, local])
        outputs = node.outputs[:1] if node.op in _INDEX_OUTPUTS else node.outputs
        for name in outputs:
            if name:
                errors[name] = total
    return errors[graph.output_name]


def _rounding_error(
    graph: Graph,
    node: Node,
    rounding: Rounding,
    sources: list[str],
    incoming: tuple[float, float],
    propagated: tuple[float, float],
    bounds: dict[str, float],
    zero_sizes: dict[str, float],
    unit: float,
) -> tuple[float, float]:
    if not rounding.rounds:
        return (0.0, 0.0)
    g = rounding.gamma(unit)
    parts = [(rounding.offset, 0.0)]
    if rounding.input_gain > 0:
        sizes_in = ((zero_sizes.get(name, math.inf), bounds[name]) for name in sources)
        parts.append(_affine_scale(_affine_sum([*sizes_in, incoming]), rounding.input_gain))
    if rounding.output_gain > 0:
        out = node.outputs[0]
        size_out = _affine_sum([(zero_sizes.get(out, math.inf), bounds[out]), propagated])
        parts.append(_affine_scale(size_out, rounding.output_gain))
    terms = _affine_sum(parts)
    return _affine_scale(terms, g)


def _affine_sum(parts: Iterable[tuple[float, float]]) -> tuple[float, float]:
    constant, slope = 0.0, 0.0
    for c, d in parts:
        constant, slope = add_up(constant, c), add_up(slope, d)
    return constant, slope


def _affine_scale(value: tuple[float, float], factor: float) -> tuple[float, float]:
    return mul_up(value[0], factor), mul_up(value[1], factor)
