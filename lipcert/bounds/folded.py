"""The rounding allowance for constants the model computes inexactly (see onnx_exact).

The graph holds such a constant c in float64; the runtime uses its float32 rounding
c' = c (1 + d), |d| <= u elementwise. A node reading c' instead of c computes, besides its own
rounding, an output that differs by:
- for a product with c (Mul, Div, Gemm, MatMul, Conv, BatchNormalization, PRelu...): at most
  u times the product with |c| and |x|, which the rule's own input or output gains already
  measure (|w|.|x| for dot products, |y| for element-wise products);
- for a sum with c, a clip or a max with c, a padding value...: at most u |c| per element
  it reaches, bounded by ||c|| broadcast to the output.
So one more rounded operation (gamma(n + 1) >= gamma(n) + u), an output gain of at least 1
and ||c|| (broadcast) in the offset cover it, whatever the op. The float64 value itself is
within rho |c| of the exact one (a forward error analysis of the recomputation, rho <= 2^-30,
lipcert.frontends.onnx_exact.float64_errors): a relative error rho that does not scale with
the unit roundoff (`Rounding.relative`), whether the float32 runtime or the float64 executor
computes (counting it as rho / u64 roundings made the float32 allowance 2^29 rho too large).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lipcert.bounds.numeric import add_up, mul_up
from lipcert.bounds.registry import LayerBound, Rounding, refuse
from lipcert.graph import Graph, Node

_U64 = 2.0**-53
# onnx_exact.MAX_FOLDED_ERROR: larger errors (sines and cosines near 0) are refused here
_MAX_RHO = 2.0**-30
# float32 copies of constants below this may be subnormal (2^-126), with a margin
_SMALLEST_COPIED = 2.0**-120
# Nodes whose rules bound the block with the exact constants themselves (exact_spread).
_BOUNDED_BY_RULE = frozenset({"SLLBlock", "SandwichBlock", "FourierSandwich"})
# Nonlinear nodes whose bound is proved for the float64 constants only, refused when they
# read an inexact constant: a select tree continuous with c64 may jump with the exact c.
_UNPROVED = {
    "PiecewiseLinear": "select tree checked continuous with that value, not the exact one",
}


def with_folded_rounding(node: Node, graph: Graph, bound: LayerBound) -> LayerBound:
    """`bound` with the rounding of the float32 copies of inexact constants it reads."""
    names = sorted(
        {name for inner in node.walk() for name in inner.inputs} & graph.inexact_constants
    )
    if not names:
        return bound
    output = (
        int(np.prod(graph.shape(node.outputs[0])[1:])) if node.outputs[0] in graph.shapes else 1
    )
    offset = bound.rounding.offset
    for name in names:
        value = np.abs(np.asarray(graph.constant(name), dtype=np.float64))
        copies = max(1, math.ceil(output / max(value.size, 1)))
        offset = add_up(
            offset, mul_up(float(np.linalg.norm(value)), math.sqrt(copies) * (1 + 1e-12))
        )
    # c' (the runtime's float32 copy) is within u32 |c64| of c64, and c64 within rho |c| of
    # the exact c: one more rounding covers the first and a unit-free relative error rho
    # the second, at the float32 unit; the float64 executor computes with c64 itself, where
    # the relative error alone is needed. Two more roundings are taken, with rho rounded up.
    if node.op != "Householder":  # its rule counts a selector's subnormal copy itself
        for name in names:
            value = np.abs(np.asarray(graph.constant(name), dtype=np.float64))
            if np.any((value > 0) & (value < _SMALLEST_COPIED)):
                # fl32(c64) among float32's subnormals is off by up to 2^-150 absolute, not
                # u |c64|: a product with a large input then errs beyond every relative term
                # (x 1e20 times W = 2^-126 / (3 2^22), then 2^100: 7.6e5 times the allowance)
                raise refuse(
                    node,
                    f"it reads {name!r}, computed inside the model, with values below 2^-120 "
                    "whose float32 copy the runtime rounds among the subnormals (off by "
                    "2^-150, not relatively); fold it into the weights",
                )
    rho = max(graph.folded_error.get(name, 0.0) for name in names)
    if not rho <= _MAX_RHO:
        # a sine or cosine near 0 (onnx_exact): known to an absolute error only
        worst = max(names, key=lambda name: graph.folded_error.get(name, 0.0))
        raise refuse(
            node,
            f"it reads {worst!r}, computed inside the model, whose float64 value is known "
            f"only to {rho:.3g} of itself (a sine or cosine near 0), and its rounding "
            f"allowance for such constants needs 2^-30 relative; fold it into the weights",
        )
    factor = bound.factor
    if rho > 0 and node.op in _UNPROVED:
        raise refuse(
            node,
            f"it reads {names[0]!r}, computed inside the model (known to {rho:.3g} of "
            f"itself), and its bound holds for the float64 value only (a {_UNPROVED[node.op]})"
            "; fold it into the weights",
        )
    if rho > 0 and node.op not in _BOUNDED_BY_RULE:
        # The rule's factor is a bound for the graph's constants c64, the exact constants are
        # within rho |c| of them: an operator built from k such constants (a weight, a scale,
        # BatchNorm's scale / sqrt(var + eps) folded into a weight: k = 3) moves by at most
        # ((1 + rho) / (1 - rho))^k - 1 (2 rho / (1 - rho) for one) times its absolute
        # values' norm, which the rule's input gain (|W| for sums of products) or, for
        # element-wise products, the factor itself bounds. Proved for a node linear in its
        # data input (a fused affine block included: its input gain counts every layer's
        # |W| along its paths) and for nonlinear ones whose bound is |c| times a constant
        # (PRelu, L2NormPool's sqrt(c)); SLL and Sandwich blocks, whose bounds are formulas
        # of several constants, bound the exact constants' block themselves
        # (`exact_spread`), as does a FourierSandwich from its blocks' moves, and a select
        # tree is refused above. Without it a float64 radius exceeded the exact distance to
        # the boundary by 3e-10 of itself (the test).
        spread = exact_spread(node, graph, len(names))
        factor = add_up(factor, mul_up(spread, max(bound.rounding.input_gain, factor)))
    rounding = Rounding(
        terms=bound.rounding.terms + 2,
        input_gain=bound.rounding.input_gain,
        output_gain=max(bound.rounding.output_gain, 1.0),
        offset=offset,
        relative=add_up(bound.rounding.relative, mul_up(rho, 1 + 1e-12)),
    )
    return dataclasses.replace(bound, factor=factor, rounding=rounding)


def inexact_count(node: Node, graph: Graph) -> int:
    """How many constants computed inside the model the node (or its body) reads."""
    names = {name for inner in node.walk() for name in inner.inputs}
    return len(names & graph.inexact_constants)


def exact_spread(node: Node, graph: Graph, factors: int) -> float:
    """eta with |c_1 .. c_k - c64_1 .. c64_k| <= eta |c64_1 .. c64_k| for a product (or
    quotient, square root) of up to `factors` constants the node reads, each either exact
    or within rho of its float64 value: ((1 + rho) / (1 - rho))^factors - 1, rounded up;
    0 when the node reads no inexact constant, or one refused by `with_folded_rounding`."""
    names = {name for inner in node.walk() for name in inner.inputs} & graph.inexact_constants
    rho = max((graph.folded_error.get(name, 0.0) for name in names), default=0.0)
    if not 0 < rho <= _MAX_RHO:
        return 0.0
    growth = factors * (math.log1p(rho) - math.log1p(-rho))
    return mul_up(math.expm1(growth), 1 + 1e-6)
