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

**Gradual underflow.** A selector product among the subnormals errs by up to h (2^-150 in
float32, 2^-1075 in float64) absolutely, not relatively: on opposite sides |w . z| <= (the
relative part above) + 2 h (1 + u), and the branches differ by 2 |w . z| / ||w||, which is
4 h (1 + u) / ||w|| more per pair (the reflected values' own products are within the
generic allowance, lipcert.bounds.registry.with_underflow). Over the P pairs of a sample
(L2), sqrt(P) 4 h (1 + u) / ||w||, covered by gamma(4) >= 4u times an offset
sqrt(P) 2^-126 (1 + 2^-20) / min ||w|| (h / u is largest in float32). A selector constant
below 2^-126 that the float32 runtime holds rounded (recomputed in float64) is off by up to
h, not u of itself: |s - w . z| grows by h (|x| + |y|) <= sqrt(2) h ||z||, the branches by
twice that over ||w||: input gain sqrt(2) 2^-127 / min ||w|| more, counted then only.
"""

from __future__ import annotations

import math

import numpy as np

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
    smallest_norm, smallest_entry = _selector_sizes(node, graph)
    per_sample = math.prod(graph.shape(node.outputs[0])[1:]) // 2
    offset = mul_up(math.sqrt(max(per_sample, 1)), 2.0**-126, 1.0 + 2.0**-20)
    offset = div_up(offset, smallest_norm)
    if smallest_entry < 2.0**-125:
        rounded = mul_up(math.sqrt(2.0), 2.0**-127, 1.0 + 2.0**-20)
        gain = add_up(gain, div_up(rounded, smallest_norm))
    return LayerBound(
        1.0,
        f"Householder reflection of channel pairs ({pairs} distinct), "
        f"continuous and piecewise orthogonal",
        exact=True,
        rounding=Rounding(terms=4, input_gain=gain, offset=offset),
    )


def _selector_sizes(node: Node, graph: Graph) -> tuple[float, float]:
    """A lower bound of ||w|| over the pairs and the smallest non-zero |w_i|, from the
    selector's constants (lipcert.graph.householder names them `...::householder_w0/1`). A
    variable without a constant has coefficient 0 or +-1 (a bare variable): the constants
    present alone bound ||w|| below, and with none ||w|| >= 1 (the matcher refuses w = 0)."""
    names = sorted({n for inner in node.body for n in inner.inputs if "::householder_w" in n})
    values = [np.abs(np.asarray(graph.constant(n), dtype=np.float64)) for n in names]
    if not values:
        return 1.0, 1.0
    squares = sum(np.square(v) for v in np.broadcast_arrays(*values))
    smallest = float(np.min(np.sqrt(squares))) * (1.0 - 2.0**-40)
    if not smallest > 0:
        raise refuse(node, "its selector vanishes on some pair")
    entries = np.concatenate([v.reshape(-1) for v in values])
    nonzero = entries[entries > 0]
    return smallest, float(nonzero.min()) if nonzero.size else 1.0
