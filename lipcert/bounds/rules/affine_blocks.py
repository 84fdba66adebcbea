"""Rules for affine blocks bounded as one operator, and for the DFT op.

See lipcert.graph.affine_blocks for what a block is and lipcert.bounds.affine_operator for
the methods; the rule takes the smallest of their bounds, each of them sound.
"""

from __future__ import annotations

import math

import numpy as np

from lipcert.bounds import affine_operator as ops
from lipcert.bounds.folded import exact_spread, inexact_count
from lipcert.bounds.fourier_operator import FourierAnalysis, fourier_analysis, fourier_bound
from lipcert.bounds.fourier_sandwich import sandwich_bound
from lipcert.bounds.numeric import add_up, inverse_sqrt_up, mul_up, sqrt_up, up
from lipcert.bounds.registry import LayerBound, Rounding, bound_node, refuse, rule
from lipcert.graph import Graph, Node
from lipcert.graph.dft import dft_geometry


@rule("AffineBlock")
def affine_block(node: Node, graph: Graph) -> LayerBound:
    """||A|| of a block x -> A x + c: the smallest bound among the methods that apply.

    Exact when the chosen bound is within the allowance of an exact method (the probed
    matrix, or a folded circular kernel); an upper bound otherwise.
    """
    if len(node.inputs) != 1 or len(node.outputs) != 1:
        raise refuse(node, "expected an affine block with one input and one output")
    return _affine_block(node, graph, ops.body_bounds(node, graph))


def _affine_block(
    node: Node,
    graph: Graph,
    bounds: list[tuple[Node, LayerBound]],
    analysis: FourierAnalysis | str | None = "compute",
) -> LayerBound:
    candidates = [ops.product_bound(node, graph, bounds)]
    fourier = fourier_bound(node, graph, bounds, analysis)
    if fourier is not None:
        candidates.append(ops.Candidate(*fourier))
    # The probe is exact too, and slow on bodies that pin the batch: not when the
    # per-frequency bound already is.
    if fourier is None or not fourier[2]:
        probed = ops.probe_bound(node, graph, bounds)
        if probed is not None:
            candidates.append(probed)
    symbols = ops.circular_symbol_bound(node, graph)
    if symbols is not None:
        candidates.append(symbols)
    polynomial = ops.conv_polynomial(node, graph, bounds)
    if polynomial is not None:
        candidates.extend(ops.polynomial_candidates(graph, polynomial))
    best = min(candidates, key=lambda c: c.factor)
    exact = any(c.exact and c.factor <= best.factor * (1 + 1e-9) for c in candidates)
    return LayerBound(
        best.factor,
        best.method,
        exact=exact or best.exact,
        rounding=ops.block_rounding(node, graph, bounds),
    )


@rule("FourierSandwich")
def fourier_sandwich(node: Node, graph: Graph) -> LayerBound:
    """Two Fourier blocks around a ReLU (lipcert.graph.fourier_sandwich): the smaller of the
    product of the three nodes' bounds and the per-frequency LipSDP certificate of
    lipcert.bounds.fourier_sandwich (when both blocks are Fourier blocks joined element by
    element); the rounding allowance is the body's, op by op."""
    if len(node.inputs) != 1 or len(node.outputs) != 1 or len(node.body) != 3:
        raise refuse(node, "expected two blocks around an activation")
    first, activation, second = node.body
    if first.op != "AffineBlock" or second.op != "AffineBlock":
        raise refuse(node, "expected two affine blocks around an activation")
    inner = [ops.body_bounds(first, graph), ops.body_bounds(second, graph)]
    analyses = [
        fourier_analysis(first, graph, inner[0]),
        fourier_analysis(second, graph, inner[1]),
    ]
    bounds = [
        (first, _affine_block(first, graph, inner[0], analyses[0])),
        (activation, bound_node(activation, graph)),
        (second, _affine_block(second, graph, inner[1], analyses[1])),
    ]
    best = ops.product_bound(node, graph, bounds)
    factor, method = best.factor, best.method
    certified = sandwich_bound(node, graph, analyses[0], analyses[1], [*inner[0], *inner[1]])
    if certified is not None and certified[0] < factor:
        factor, method = certified
    spread = exact_spread(node, graph, inexact_count(node, graph))
    if spread > 0:
        # Constants the model computes (lipcert.bounds.folded): each block's operator T_i,
        # built from at most all k of them, moves by at most d_i = spread(k) max(input gain,
        # bound) (folded's proof for affine nodes), so for every activation slope pattern L
        # (||L|| <= a, the activation's bound), ||T2e L T1e|| <= ||T2 L T1|| + a (d2 (f1 +
        # d1) + f2 d1), f_i >= ||T_i|| the blocks' bounds: the certificate and the product
        # alike.
        (_, one), (_, act), (_, two) = bounds
        d1 = mul_up(spread, max(one.rounding.input_gain, one.factor))
        d2 = mul_up(spread, max(two.rounding.input_gain, two.factor))
        moved = add_up(mul_up(d2, add_up(one.factor, d1)), mul_up(two.factor, d1))
        factor = add_up(factor, mul_up(act.factor, moved))
        method += f", with the exact constants computed in the model (within {spread:.3g})"
    return LayerBound(factor, method, exact=False, rounding=ops.block_rounding(node, graph, bounds))


@rule("DFT")
def dft(node: Node, graph: Graph) -> LayerBound:
    """ONNX DFT along one axis, in L2 over (real, imaginary) pairs.

    The unnormalised DFT F_n has orthogonal columns of norm sqrt(n) and every row of modulus
    one entries: F_n restricted to m <= n columns (dft_length > m pads with zeros) or applied
    to the first n inputs (dft_length < m truncates), and keeping the bins 0 .. n // 2
    (onesided), has norm sqrt(n) (a constant input reaches it at bin 0): exact. The inverse
    is F_n^* / n: norm 1 / sqrt(n), exact. The onesided inverse (irfft) maps bins
    X_0 .. X_(n//2) to a real signal y with ||y||^2 = (Re X_0^2 + 2 sum_(0<k<n/2) |X_k|^2
    [+ Re X_(n/2)^2]) / n: norm sqrt(2 / n), exact when a bin 0 < k < n / 2 is read.
    """
    source = node.inputs[0]
    if not source or graph.is_constant(source) or graph.data_inputs(node) != [source]:
        raise refuse(node, "expected the signal as its only data input")
    length = _constant_int(node, graph, 1)
    axis = _constant_int(node, graph, 2)
    geo = dft_geometry(node, graph.shape(source), length, axis)
    n = geo.length
    if not geo.inverse:
        factor, method, exact = sqrt_up(n), f"sqrt(n) = sqrt({n}) (unnormalised DFT)", True
        gain = float(2 * n)
    elif not geo.onesided:
        factor, method, exact = inverse_sqrt_up(n), f"1/sqrt(n), n = {n} (inverse DFT)", True
        gain = 2.0
    else:
        factor = up(math.sqrt(2.0 / n) * (1 + 1e-15))
        method = f"sqrt(2/n), n = {n} (inverse of a one-sided spectrum)"
        exact = n >= 3 and geo.input_length >= 2
        gain = 4.0
    # A direct DFT sums n products with rounded twiddle factors; an FFT does fewer operations.
    rounding = Rounding(terms=n + 8, input_gain=gain, output_gain=1.0)
    return LayerBound(factor, method, exact=exact, rounding=rounding)


def _constant_int(node: Node, graph: Graph, index: int) -> int | None:
    name = node.inputs[index] if index < len(node.inputs) else ""
    if not name:
        return None
    if not graph.is_constant(name):
        raise refuse(node, f"its input {index} ({name!r}) depends on the data")
    return int(np.asarray(graph.constant(name)).reshape(-1)[0])


__all__ = ["affine_block", "dft", "fourier_sandwich"]
