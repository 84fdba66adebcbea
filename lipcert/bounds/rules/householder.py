"""Rule for the Householder activation fused by lipcert.graph.householder.

**Bound.** The certified function is the ideal activation h (keep a pair z = (x_i, y_i) where
w . z <= 0, reflect it by R* = I - 2 v v^T, v = w / ||w||, elsewhere): continuous and
1-Lipschitz (proof in lipcert.graph.householder). Factor 1, exact.

The matcher also takes the halves concatenated in swapped order, P h(z) with P the exchange
of the halves: a permutation of coordinates, so the bound, and the norms below, are those of h.

**Rounding: what the runtime computes, against h.** Per pair, the runtime computes the
selector s = fl(fl(x w1') + fl(y w2')) (a product may be a bare variable, a sign may be a
Neg: exact), its masks, the reflected pair r = fl(R' z) (two products and one sum per entry),
and a = x m + r n with m, n in {0, 1} complementary: x * 1, r * 0 = 0 and x + 0 are exact,
so the output is exactly z or r; a Where(s OP 0, x, r) selects one of them exactly too (both
halves compare the same selector tensor on the same side, so they take the same branch).
Here w' and R' are the constants the runtime holds: w' within one rounding u of the graph's
w (or w itself), R' within `deviation32` (float32 runtime) or `deviation64` (float64) of R*
per pair, Frobenius norm (computed exactly in the matcher).
- Same side as h: zero error where both keep z; where both reflect,
  ||r - R* z|| <= ||(R' - R*) z|| + gamma(2) || |R'| |z| || <= (D + gamma(2) A) ||z||, with
  A = `abs_norm` >= || |R'| ||_2.
- Opposite sides: s and w . z straddle 0, so |w . z| <= |s - w . z|
  <= (u + gamma(2)(1 + u)) (|w1| |x| + |w2| |y|) <= (u + gamma(2)(1 + u)) ||w|| ||z||
  (Cauchy-Schwarz with |w|, whose norm is ||w||). The two branches of h differ there by
  ||R* z - z|| = 2 |v . z| = 2 |w . z| / ||w|| <= 2 (u + gamma(2)(1 + u)) ||z||, and the
  runtime's value is the branch it took, computed as above. So
  ||runtime - h|| <= (D + gamma(2) A + 2 (u + gamma(2)(1 + u))) ||z||.
- Over all pairs (L2): the same coefficient times ||z||.
With gamma(4) >= 4u > gamma(2)(1 + u) + u for the u of float32 and float64, this is at most
gamma(4) (4 + 2 A + D / (4u)) ||z||. D is the runtime's: `deviation32` with u = 2^-24 and
`deviation64` with u = 2^-53 (the float64 executor computes with R*'s float64 roundings,
within u64 of R*, covered by the gamma(4) A part); both are in the input gain, each divided
by its own 4u, so whichever precision runs the node is covered.
"""

from __future__ import annotations

import math

from lipcert.bounds.numeric import add_up, div_up, mul_up
from lipcert.bounds.registry import LayerBound, Rounding, refuse, rule
from lipcert.graph import Graph, Node

_U32 = 2.0**-24
_U64 = 2.0**-53


@rule("Householder")
def householder(node: Node, graph: Graph) -> LayerBound:
    """The Householder activation of channel pairs: 1-Lipschitz (exact), its runtime's
    distance to the exact reflection counted in the rounding (see the module docstring)."""
    values = [float(node.attr(key, math.nan)) for key in ("deviation32", "deviation64", "abs_norm")]
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise refuse(node, f"unusable Householder deviations {values!r}")
    deviation32, deviation64, abs_norm = values
    gain = add_up(
        4.0,
        mul_up(2.0, abs_norm),
        div_up(deviation32, 4 * _U32),
        div_up(deviation64, 4 * _U64),
    )
    pairs = int(node.attr("pairs", 0))
    return LayerBound(
        1.0,
        f"Householder reflection of channel pairs ({pairs} distinct), "
        f"continuous and piecewise orthogonal",
        exact=True,
        rounding=Rounding(terms=4, input_gain=gain),
    )
