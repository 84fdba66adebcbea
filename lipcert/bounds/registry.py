"""The table of Lipschitz rules, keyed by op name, failing closed.

A rule maps one graph node to a `LayerBound`: an upper bound of the node's L2 Lipschitz
constant with respect to its data inputs, the method used, whether that bound is exact, and
how the bounds of several data inputs combine. An op without a rule is refused with an error
that names the node and lists the ops lipcert supports: a sample that was not certified must
never look certified.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from lipcert.bounds.numeric import add_up, gamma, mul_up, sqrt_up
from lipcert.errors import UnsupportedOpError
from lipcert.graph import Graph, Node
from lipcert.graph.ir import refuse as refuse  # rules raise it; it lives with the graph
from lipcert.graph.opsets import check_node


class Combine(enum.Enum):
    """How the bounds of a node's data inputs give the bound of its output."""

    CHAIN = "chain"  # one data input: output bound = factor * input bound
    SUM = "sum"  # Add/Sub of branches: factor * sum of the input bounds
    RSS = "rss"  # Concat and friends: factor * sqrt(sum of squared input bounds)


class NonFiniteRoundingError(ValueError):
    """A rule's rounding terms are not finite (weights whose norms overflow float64);
    compose refuses the node with this message."""


@dataclass(frozen=True)
class Rounding:
    """Worst-case rounding error a node adds when it runs in floating point, in L2.

    error <= gamma(terms) * (input_gain * ||input|| + output_gain * ||output|| + offset),
    with gamma(n) = n u / (1 - n u) the classical bound for n rounded operations in a row
    (Higham, Accuracy and Stability of Numerical Algorithms, section 3.1), valid for any order
    of summation. For a dot-product layer, terms is the length of the sums and input_gain the
    norm of the operator with absolute weights, since |fl(w.x) - w.x| <= gamma_n |w|.|x|.
    terms = 0 means the op is exact in floating point (max, sort, copies, ReLU).
    `relative` is a relative error that does not scale with the unit roundoff (a constant the
    model computes, known in float64 to rho of itself, lipcert.bounds.folded): the bound is
    then (gamma(terms) + relative) * (...), see `gamma`.

    Sizes are L2 norms of the whole tensor of one sample. Where a node has several data
    inputs, ||input|| is the sum of their norms: a sum of n tensors rounds its partial sums,
    |fl(a_1 + ... + a_n) - (a_1 + ... + a_n)| <= gamma_(n-1) (|a_1| + ... + |a_n|), which
    the output's size does not bound when the terms cancel.
    """

    terms: int = 0
    input_gain: float = 0.0
    output_gain: float = 0.0
    offset: float = 0.0
    relative: float = 0.0

    def __post_init__(self) -> None:
        values = (self.terms, self.input_gain, self.output_gain, self.offset, self.relative)
        if self.terms < 0 or not all(math.isfinite(v) and v >= 0 for v in values):
            raise NonFiniteRoundingError(
                f"expected finite non-negative rounding terms but got {self!r}"
            )

    @property
    def rounds(self) -> bool:
        """Whether the op adds any rounding error at all."""
        return self.terms > 0 or self.relative > 0

    def gamma(self, unit: float) -> float:
        """The relative error factor at this unit roundoff: gamma(terms, unit) + relative."""
        if not self.rounds:
            return 0.0
        return add_up(gamma(self.terms, unit), self.relative)


EXACT = Rounding()
# Element-wise functions from a math library (tanh, exp, erf...): vectorised kernels are
# accurate to a few ulps; 64 ulps of the output plus 64 ulps absolute per element is generous.
LIBRARY_ULPS = 64
ONE_ROUNDING = Rounding(terms=1, output_gain=1.0)


@dataclass(frozen=True)
class LayerBound:
    """A guaranteed upper bound of a node's L2 Lipschitz constant (`factor`).

    `exact` says the factor equals the true constant of the operation (up to the rounding
    margin), rather than being an upper bound that may be loose. `rounding` says how much
    floating-point error the op adds when executed: every rule states it (there is no
    default), EXACT only for ops that are exact in floating point (copies, max, ReLU...).
    """

    factor: float
    method: str
    exact: bool
    rounding: Rounding
    combine: Combine = Combine.CHAIN


Rule = Callable[[Node, Graph], LayerBound]

_RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register a function as the rule for each of `ops`."""

    def register(function: Rule) -> Rule:
        for op in ops:
            if op in _RULES:
                raise RuntimeError(f"two rules registered for op {op!r}")
            _RULES[op] = function
        return function

    return register


def supported_ops() -> list[str]:
    return sorted(_RULES)


# gamma(n, u) >= n u: an offset of sqrt(m) 2^-124 gives n sqrt(m) 2^-148 at the float32 unit
# (n sqrt(m) 2^-177 at the float64 one), twice n roundings of 2^-150 in each of m elements.
_UNDERFLOW_OFFSET = 2.0**-124


def with_underflow(node: Node, graph: Graph, bound: LayerBound) -> LayerBound:
    """`bound` with the gradual underflow of its roundings: gamma(n) bounds relative errors
    only while results stay normal; a product or quotient that lands among the subnormals
    errs by up to half their spacing (2^-150 in float32, 2^-1075 in float64), absolute, and
    a later scaling can make that large (x * 1e-41 * 1e41 errs by 1e-4). Sums add no such
    error (Higham, section 2.1). So every op that rounds also rounds up to its n operations
    per output element in absolute terms: sqrt(m) 2^-124 more offset, m the output's size."""
    rounding = bound.rounding
    if rounding.terms == 0:
        return bound
    shape = graph.shapes.get(node.outputs[0]) if node.outputs else None
    size = math.prod(shape[1:]) if shape else 1
    extra = mul_up(sqrt_up(max(size, 1)), _UNDERFLOW_OFFSET)
    return dataclasses.replace(
        bound, rounding=dataclasses.replace(rounding, offset=add_up(rounding.offset, extra))
    )


def bound_node(node: Node, graph: Graph) -> LayerBound:
    """The rule's bound for `node`, or UnsupportedOpError naming it.

    The node's version and attributes (and those of a fused node's body) must be ones lipcert
    implements (lipcert.graph.opsets) before any rule reads them.
    """
    function = _RULES.get(node.op)
    if function is None:
        raise UnsupportedOpError(
            f"node {node.name!r} has op {node.op!r}, which has no sound Lipschitz rule; "
            f"supported ops: {', '.join(supported_ops())}"
        )
    check_node(node, graph)
    bound = with_underflow(node, graph, function(node, graph))
    if graph.inexact_constants:
        from lipcert.bounds.folded import with_folded_rounding

        bound = with_folded_rounding(node, graph, bound)
    if not graph.size_known:
        # A bound stated for every input size must hold at every size, not the probe's.
        from lipcert.bounds.open_size import any_size_bound

        return any_size_bound(node, graph, bound)
    return bound
