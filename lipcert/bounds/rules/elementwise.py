"""Rules for element-wise ops: activations, and arithmetic with constants or between branches.

An activation's bound is the supremum of |derivative| over the real line, from a table of
constants (rounded up where irrational). Arithmetic with a constant is a diagonal operator
whose norm is the largest gain any input element sees; arithmetic between data branches
combines their bounds (Add sums them, Max/Min take the root of the sum of squares).
"""

from __future__ import annotations

import numpy as np

from lipcert.bounds.numeric import (
    add_up,
    div_up,
    max_abs_up,
    norm_up,
    sqrt_up,
    sum_of_squares_up,
)
from lipcert.bounds.registry import (
    EXACT,
    LIBRARY_ULPS,
    ONE_ROUNDING,
    Combine,
    LayerBound,
    Rounding,
    refuse,
    rule,
)
from lipcert.bounds.rules.linear import constant_input
from lipcert.graph import Graph, Node

# sup |f'| over the real line. Irrational values are rounded up in the ninth decimal, from a
# bracketed search of the analytic derivative's maximum; tests check each against the
# Jacobian at the maximising point.
_ACTIVATION_CONSTANTS: dict[str, tuple[float, str]] = {
    "Relu": (1.0, "max |slope|"),
    "Abs": (1.0, "max |slope|"),
    "Neg": (1.0, "max |slope|"),
    "Tanh": (1.0, "sup |tanh'| = 1"),
    "Softplus": (1.0, "sup |softplus'| = 1"),
    "Softsign": (1.0, "sup |softsign'| = 1"),
    "Sigmoid": (0.25, "sup |sigmoid'| = 1/4"),
    "Sin": (1.0, "sup |sin'| = 1"),
    "Cos": (1.0, "sup |cos'| = 1"),
    "Atan": (1.0, "sup |atan'| = 1"),
    "Asinh": (1.0, "sup |asinh'| = 1"),
    "Erf": (1.128379168, "sup |erf'| = 2/sqrt(pi), rounded up"),
    "HardSwish": (1.5, "sup |hardswish'| = 3/2"),
    "Mish": (1.088498162, "sup |mish'|, rounded up"),
    "SiLU": (1.099839321, "sup |silu'|, rounded up"),
}


# Computed exactly in floating point; the others call a math library.
_EXACT_IN_FLOAT = frozenset({"Relu", "Abs", "Neg"})


def _constant_activation(node: Node, graph: Graph) -> LayerBound:
    factor, method = _ACTIVATION_CONSTANTS[node.op]
    _single_data_input(node, graph)
    rounding = EXACT if node.op in _EXACT_IN_FLOAT else library_rounding(node, graph)
    return LayerBound(factor, method, exact=True, rounding=rounding)


def library_rounding(node: Node, graph: Graph) -> Rounding:
    """LIBRARY_ULPS ulps of each output element, relative and absolute."""
    elements = float(np.prod(graph.shape(node.outputs[0])))
    return Rounding(terms=LIBRARY_ULPS, output_gain=1.0, offset=sqrt_up(elements))


rule(*_ACTIVATION_CONSTANTS)(_constant_activation)


def _finite_attr(node: Node, name: str, default: float) -> float:
    """A float attribute, refused when NaN or infinite: max(1, |NaN|) is 1 in Python, while
    the op then outputs NaN on half the line (Elu with alpha NaN was certified beside them)."""
    value = float(node.attr(name, default))
    if not np.isfinite(value):
        raise refuse(node, f"its attribute {name} is {value!r}, not a finite number")
    return value


def _single_data_input(node: Node, graph: Graph) -> str:
    sources = graph.data_inputs(node)
    if len(sources) != 1:
        raise refuse(node, f"expected one data input but found {len(sources)}")
    return sources[0]


# sup |gelu'| for the exact form (x Phi(x)) and the tanh approximation, rounded up.
_GELU = {"none": 1.128904146, "tanh": 1.128993069}


@rule("Gelu")
def gelu(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    form = str(node.attr("approximate", "none"))
    if form not in _GELU:
        raise refuse(node, f"unknown GELU approximation {form!r}")
    return LayerBound(
        _GELU[form],
        f"sup |gelu'| ({form} form), rounded up",
        exact=True,
        rounding=library_rounding(node, graph),
    )


@rule("LeakyRelu")
def leaky_relu(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    alpha = abs(_finite_attr(node, "alpha", 0.01))
    return LayerBound(max(1.0, alpha), "max(1, |alpha|)", exact=True, rounding=ONE_ROUNDING)


@rule("PRelu")
def prelu(node: Node, graph: Graph) -> LayerBound:
    """x where x >= 0, else slope * x. onnxruntime also broadcasts x to a larger slope (the
    specification broadcasts the slope only): each element of x then has copies, all of
    slope 1 where it is positive, of its slopes where negative, so the norm is the larger
    of sqrt(copies) and the largest root of the sum of the copies' squared slopes."""
    source = _single_data_input(node, graph)
    slope = constant_input(node, graph, 1, "slope")
    gain = max(
        _broadcast_gain(node, graph, source, None), _broadcast_gain(node, graph, source, slope)
    )
    return LayerBound(gain, "max(1, max |slope|), over copies", exact=True, rounding=ONE_ROUNDING)


@rule("Elu")
def elu(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    alpha = abs(_finite_attr(node, "alpha", 1.0))
    return LayerBound(
        max(1.0, alpha), "max(1, |alpha|)", exact=True, rounding=library_rounding(node, graph)
    )


@rule("Celu")
def celu(node: Node, graph: Graph) -> LayerBound:
    """max(0, x) + min(0, alpha (exp(x / alpha) - 1)): slope exp(x / alpha) <= 1 for x < 0
    when alpha > 0; with alpha < 0 that slope grows without bound as x falls."""
    _single_data_input(node, graph)
    alpha = _finite_attr(node, "alpha", 1.0)
    if not alpha > 0:
        raise refuse(node, f"CELU with alpha {alpha!r} <= 0 is not Lipschitz")
    return LayerBound(1.0, "sup |celu'| = 1", exact=True, rounding=library_rounding(node, graph))


@rule("Selu")
def selu(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    alpha = abs(_finite_attr(node, "alpha", 1.67326319217681884765625))
    gamma = abs(_finite_attr(node, "gamma", 1.05070102214813232421875))
    return LayerBound(
        max_abs_up(np.array([gamma, gamma * alpha])),
        "gamma * max(1, alpha)",
        exact=True,
        rounding=library_rounding(node, graph),
    )


@rule("HardSigmoid")
def hard_sigmoid(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    alpha = abs(_finite_attr(node, "alpha", 0.2))
    beta = abs(_finite_attr(node, "beta", 0.5))
    elements = float(np.prod(graph.shape(node.outputs[0])))
    rounding = Rounding(terms=2, input_gain=alpha, offset=beta * sqrt_up(elements))
    return LayerBound(alpha, "|alpha| (its slope)", exact=True, rounding=rounding)


@rule("Clip")
def clip(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    return LayerBound(1.0, "clipping is 1-Lipschitz", exact=True, rounding=EXACT)


@rule("Shrink")
def shrink(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    bias, lambd = _finite_attr(node, "bias", 0.0), _finite_attr(node, "lambd", 0.5)
    if bias != lambd or lambd < 0:
        raise refuse(
            node,
            f"shrink with bias {bias!r} and lambd {lambd!r} is discontinuous "
            "(only soft shrink, bias == lambd >= 0, is Lipschitz)",
        )
    return LayerBound(1.0, "soft shrink is 1-Lipschitz", exact=True, rounding=ONE_ROUNDING)


# --- arithmetic ----------------------------------------------------------------------------


def _broadcast_gain(node: Node, graph: Graph, source: str, scale: np.ndarray | None) -> float:
    """Norm of x -> scale * broadcast(x) from `source`'s shape to the output's shape.

    Each input element is copied to the output positions it broadcasts to, each multiplied
    by its scale: the operator norm is the largest root of the sum of squared scales over
    the copies of one input element (exact).
    """
    in_shape = graph.shape(source)
    out_shape = graph.shape(node.outputs[0])
    padded = (1,) * (len(out_shape) - len(in_shape)) + tuple(in_shape)
    gains = np.ones(out_shape) if scale is None else np.broadcast_to(np.abs(scale), out_shape)
    expanded = tuple(
        axis for axis, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a != b
    )
    if not expanded:
        return max_abs_up(gains)
    return sqrt_up(max_abs_up(sum_of_squares_up(gains, axis=expanded)))


@rule("Mul")
def mul(node: Node, graph: Graph) -> LayerBound:
    sources = graph.data_inputs(node)
    if len(sources) != 1:
        raise refuse(
            node,
            "a product of two data tensors is not Lipschitz (only inside a recognised pattern "
            "such as SiLU or L2-norm pooling)",
        )
    other = 1 if node.inputs[0] == sources[0] else 0
    scale = constant_input(node, graph, other, "factor")
    gain = _broadcast_gain(node, graph, sources[0], scale)
    return LayerBound(gain, "max |constant factor|", exact=True, rounding=ONE_ROUNDING)


@rule("Div")
def div(node: Node, graph: Graph) -> LayerBound:
    sources = graph.data_inputs(node)
    if sources != [node.inputs[0]] or len(sources) != 1:
        raise refuse(
            node, "division by a data tensor is not Lipschitz; only x / constant is supported"
        )
    divisor = constant_input(node, graph, 1, "divisor")
    if np.any(divisor == 0):
        raise refuse(node, "division by zero")
    gain = _broadcast_gain(node, graph, sources[0], 1.0 / divisor)
    # One division, or a product by the rounded reciprocal: two roundings of the result.
    rounding = Rounding(terms=2, output_gain=1.0)
    return LayerBound(gain, "max |1 / constant divisor|", exact=True, rounding=rounding)


@rule("Add", "Sub", "Sum")
def add(node: Node, graph: Graph) -> LayerBound:
    """x + c is 1-Lipschitz; a sum of data branches has the sum of their bounds."""
    sources = graph.data_inputs(node)
    if not sources:
        raise refuse(node, "expected a data input")
    for source in sources:
        if graph.shape(source) != graph.shape(node.outputs[0]) and len(sources) > 1:
            raise refuse(node, f"broadcasting the data branch {source!r} is not supported")
    gain = _broadcast_gain(node, graph, sources[0], None) if len(sources) == 1 else 1.0
    rounding = _sum_rounding(node, graph, gain)
    if len(sources) == 1:
        return LayerBound(gain, "adds a constant", exact=True, rounding=rounding)
    return LayerBound(
        1.0, "sum of the branches' bounds", exact=False, rounding=rounding, combine=Combine.SUM
    )


def _sum_rounding(node: Node, graph: Graph, data_gain: float) -> Rounding:
    """The rounding of a sum of the node's n operands, in any order.

    One addition (n = 2) is correctly rounded: at most u of its result. Longer sums round
    their partial sums, whose size the result does not bound when terms cancel:
    |fl(sum) - sum| <= gamma_(n-1) sum |a_i| <= gamma_(n-1) (sum of the operands' norms),
    data operands (their norms times `data_gain`, the norm of broadcasting one) and
    constants (their broadcast norms) alike.
    """
    operands = [name for name in node.inputs if name]
    if len(operands) <= 2:
        return Rounding(terms=1, output_gain=1.0)
    out_shape = graph.shape(node.outputs[0])
    constants = [
        norm_up(np.broadcast_to(np.abs(constant_input(node, graph, i, "term")), out_shape))
        for i, name in enumerate(node.inputs)
        if name and graph.is_constant(name)
    ]
    return Rounding(terms=len(operands) - 1, input_gain=data_gain, offset=add_up(*constants))


@rule("Mean")
def mean(node: Node, graph: Graph) -> LayerBound:
    """(a_1 + ... + a_n) / n, computed as a sum and then a division (or a product by 1/n).

    The sum's error gamma_(n-1) sum |a_i| is divided by n; the division (or the rounded
    reciprocal and the product) adds two roundings of the result: gamma_(n+1) of
    (sum of the operands' norms) / n + |mean| bounds it.
    """
    sources = graph.data_inputs(node)
    if len(sources) != len([n for n in node.inputs if n]):
        raise refuse(node, "Mean of data and constants is not supported")
    for source in sources:
        if graph.shape(source) != graph.shape(node.outputs[0]):
            raise refuse(node, f"broadcasting the data branch {source!r} is not supported")
    factor = div_up(1.0, len(sources))
    rounding = Rounding(terms=len(sources) + 1, input_gain=factor, output_gain=1.0)
    return LayerBound(
        factor,
        "1/n times the sum of the branches' bounds",
        exact=False,
        rounding=rounding,
        combine=Combine.SUM,
    )


@rule("Max", "Min")
def max_min(node: Node, graph: Graph) -> LayerBound:
    """|max(a,b) - max(a',b')| <= max(|a-a'|, |b-b'|): sqrt of the sum of squared bounds."""
    sources = graph.data_inputs(node)
    if not sources:
        raise refuse(node, "expected a data input")
    for source in sources:
        if graph.shape(source) != graph.shape(node.outputs[0]):
            raise refuse(node, f"broadcasting the data branch {source!r} is not supported")
    if len(sources) == 1:
        return LayerBound(1.0, "max/min with a constant is 1-Lipschitz", exact=True, rounding=EXACT)
    return LayerBound(
        1.0,
        "sqrt of the sum of squared branch bounds",
        exact=False,
        rounding=EXACT,
        combine=Combine.RSS,
    )


@rule("Cast")
def cast(node: Node, graph: Graph) -> LayerBound:
    _single_data_input(node, graph)
    target = int(node.attr("to", 1))
    # FLOAT=1, DOUBLE=11: in exact arithmetic such a cast is the identity, and its rounding is
    # part of the float32 allowance. Half precision rounds far more coarsely than that
    # allowance covers, and a cast to an integer type is a step function.
    if target not in (1, 11):
        raise refuse(node, f"only casts to float32 or float64 are supported, not to type {target}")
    return LayerBound(
        1.0, "float cast (identity in exact arithmetic)", exact=True, rounding=ONE_ROUNDING
    )
