"""Rules for pooling and reductions.

Channels are pooled independently, so a pooling layer's norm is that of one channel's
operator. Max and norm pooling change one output per window a position belongs to: their
bound is sqrt(m), m the most windows sharing one position (1 without overlap), which is
attained, hence exact.
"""

from __future__ import annotations

import math

import numpy as np

from lipcert.bounds import spectral
from lipcert.bounds.numeric import inverse_sqrt_up, mul_up, pow_up, sqrt_up, up
from lipcert.bounds.registry import EXACT, LIBRARY_ULPS, LayerBound, Rounding, refuse, rule
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import (
    Window,
    check_window_output,
    max_overlap,
    window,
    window_output_size,
)

# p-norms (|v|^p, then the 1/p-th power) and log-sum-exp (exp, then log) call a library
# function twice per output: LIBRARY_ULPS each, on top of the sum.
_TWO_LIBRARY_CALLS = 2 * LIBRARY_ULPS

# Gradual underflow, per format: (unit roundoff u, log2 of the half spacing of the
# subnormals, the most a result among them errs by): float32, float64.
_UNDERFLOW = ((2.0**-24, -150.0), (2.0**-53, -1075.0))


def root_underflow_offset(terms: int, outputs: int, p: float, log2_sum_error: float) -> float:
    """The offset X with gamma(terms, u) X >= sqrt(outputs) (delta)^(1/p) at both units: the
    error of a p-th root (p >= 1) of a sum of powers whose powers underflowed.

    Proof. The sum computed is s (1 + theta) + delta: the relative roundings theta are
    counted in the rule's gamma, delta gathers the subnormal powers' absolute errors (sums
    add none): |delta| <= h 2^log2_sum_error, h the format's half spacing of the subnormals
    (2^-150, 2^-1075; a 1 % slack covers delta's own relative roundings).
    t -> t^(1/p) is concave and 0 at 0, hence subadditive: |(a + delta)^(1/p) - a^(1/p)|
    <= |delta|^(1/p) for a, a + delta >= 0, per output element (what follows the root only
    rounds relatively, or within the generic allowance); in L2 over the outputs,
    sqrt(outputs) times that; gamma(terms, u) >= terms u. In float32, p = 2, k squares:
    sqrt(k) 2^-75 per output, where the generic allowance covers k 2^-148.
    """
    needed = max(
        2.0 ** ((log2_sum_error + log2_half + math.log2(1.01)) / p - math.log2(terms * unit))
        for unit, log2_half in _UNDERFLOW
    )
    return mul_up(sqrt_up(max(outputs, 1)), needed, 1.0 + 1e-9)


def _pool_window(node: Node, graph: Graph) -> tuple[Window, tuple[int, ...]]:
    sources = graph.data_inputs(node)
    if len(sources) != 1:
        raise refuse(node, "expected one data input")
    spatial = graph.shape(sources[0])[2:]
    kernel = tuple(int(k) for k in node.attr("kernel_shape", []))
    if not kernel:
        raise refuse(node, "expected a kernel_shape attribute")
    win = window(node, spatial, kernel)
    check_window_output(node, win, spatial, graph.shape(node.outputs[0])[2:])
    return win, spatial


def overlap(win: Window, spatial: tuple[int, ...], graph: Graph) -> tuple[int, str]:
    """m for this window at this input size (or for any size), and how it was found."""
    if graph.size_known:
        m = spectral.window_multiplicity(
            spatial,
            win.kernel,
            win.strides,
            win.pads_begin,
            win.pads_end,
            win.dilations,
            win.ceil_mode,
        )
        return m, "windows counted at this input size"
    return max_overlap(win), "most overlapping windows at any input size"


def _refuse_empty_windows(node: Node, win: Window, spatial: tuple[int, ...]) -> None:
    """A MaxPool window whose taps all fall in the padding: onnxruntime outputs the lowest
    float there (-3.4e38), lipcert's executor -inf, which the load-time cross-check can
    only report as a misreading."""
    counts = window_output_size(win, spatial)
    for axis, (n, count) in enumerate(zip(spatial, counts, strict=True)):
        k, s, d = win.kernel[axis], win.strides[axis], win.dilations[axis]
        begin = win.pads_begin[axis]
        for o in range(max(count, 0)):
            if all(not 0 <= o * s - begin + t * d < n for t in range(k)):
                raise refuse(node, f"window {o} on axis {axis} reads only padding")


@rule("MaxPool")
def max_pool(node: Node, graph: Graph) -> LayerBound:
    win, spatial = _pool_window(node, graph)
    if graph.size_known:
        _refuse_empty_windows(node, win, spatial)
    m, how = overlap(win, spatial, graph)
    method = "windows do not overlap" if m == 1 else f"sqrt(m), m = {m} ({how})"
    return LayerBound(sqrt_up(m), method, exact=graph.size_known, rounding=EXACT)


@rule("LpPool")
def lp_pool(node: Node, graph: Graph) -> LayerBound:
    """The p-norm of each window: sqrt(m) * max(1, k^(1/p - 1/2)) in L2."""
    win, spatial = _pool_window(node, graph)
    p = _norm_order(node)
    m, how = overlap(win, spatial, graph)
    window_size = math.prod(win.kernel)
    gain = _p_norm_gain(p, window_size)
    factor = mul_up(sqrt_up(m), gain)
    terms = window_size + _TWO_LIBRARY_CALLS
    rounding = Rounding(
        terms=terms, input_gain=factor, offset=_power_underflow(node, graph, terms, window_size, p)
    )
    return LayerBound(
        factor,
        f"p-norm of windows, sqrt(m), m = {m} ({how})",
        exact=p >= 2.0 and graph.size_known,
        rounding=rounding,
    )


def _power_underflow(node: Node, graph: Graph, terms: int, size: int, p: float) -> float:
    """The underflow of a p-norm of `size` elements: each |v|^p (a library call, LIBRARY_ULPS
    ulps) errs by up to 2 LIBRARY_ULPS half spacings of the subnormals when it lands there."""
    outputs = math.prod(graph.shape(node.outputs[0])[1:])
    return root_underflow_offset(terms, outputs, p, math.log2(size * 2 * LIBRARY_ULPS))


def _norm_order(node: Node) -> float:
    """The p of an Lp pooling; (sum |v|^p)^(1/p) is a norm, hence Lipschitz, only for p >= 1."""
    p = float(node.attr("p", 2))
    if not p >= 1:
        raise refuse(node, f"Lp pooling with p = {p!r} < 1 is not Lipschitz")
    return p


def _p_norm_gain(p: float, size: int) -> float:
    """sup over v of ||v||_p / ||v||_2 for v of `size` elements."""
    if p <= 0:
        raise ValueError(f"expected p > 0 but got {p!r}")
    if p >= 2.0:
        return 1.0
    return pow_up(size, up(1.0 / p) - 0.5)


@rule("AveragePool")
def average_pool(node: Node, graph: Graph) -> LayerBound:
    win, spatial = _pool_window(node, graph)
    if any(d != 1 for d in win.dilations):
        raise refuse(node, "dilated average pooling is not supported")
    count_pad = bool(node.attr("count_include_pad", 0))
    if graph.size_known:
        factor = spectral.avg_pool_norm(
            spatial, win.kernel, win.strides, win.pads_begin, win.pads_end, win.ceil_mode, count_pad
        )
        rounding = Rounding(terms=math.prod(win.kernel) + 1, input_gain=factor)
        return LayerBound(
            factor, "SVD of the separable pooling operator", exact=True, rounding=rounding
        )
    # Schur test: entries 1/divisor, at most m windows per position, rows sum to at most 1.
    m = max_overlap(win)
    full_windows = not win.ceil_mode and (count_pad or not win.has_padding)
    smallest_divisor = math.prod(win.kernel) if full_windows else 1
    factor = sqrt_up(up(m / smallest_divisor))
    rounding = Rounding(terms=math.prod(win.kernel) + 1, input_gain=factor)
    return LayerBound(
        factor, "Schur bound sqrt(m / divisor), any input size", exact=False, rounding=rounding
    )


@rule("GlobalAveragePool")
def global_average_pool(node: Node, graph: Graph) -> LayerBound:
    source = graph.data_inputs(node)[0]
    size = math.prod(graph.shape(source)[2:])
    if not graph.size_known:
        # The probe's size gives the sum's length; any other size is refused by the runtime
        # of certify, which always loads the model at the dataset's size.
        rounding = Rounding(terms=size + 1, input_gain=1.0)
        return LayerBound(1.0, "1/sqrt(H*W) <= 1, any input size", exact=False, rounding=rounding)
    factor = inverse_sqrt_up(size)
    rounding = Rounding(terms=size + 1, input_gain=factor)
    return LayerBound(factor, "1/sqrt(H*W)", exact=True, rounding=rounding)


@rule("GlobalMaxPool")
def global_max_pool(node: Node, graph: Graph) -> LayerBound:
    return LayerBound(1.0, "max over one window", exact=True, rounding=EXACT)


@rule("GlobalLpPool")
def global_lp_pool(node: Node, graph: Graph) -> LayerBound:
    source = graph.data_inputs(node)[0]
    p = _norm_order(node)
    size = math.prod(graph.shape(source)[2:])
    terms = size + _TWO_LIBRARY_CALLS
    underflow = _power_underflow(node, graph, terms, size, p)
    if p >= 2.0:
        rounding = Rounding(terms=terms, input_gain=1.0, offset=underflow)
        return LayerBound(1.0, "p-norm over one window, p >= 2", exact=True, rounding=rounding)
    if not graph.size_known:
        raise refuse(node, "a p < 2 norm over the whole map needs a known input size")
    factor = _p_norm_gain(p, size)
    rounding = Rounding(terms=terms, input_gain=factor, offset=underflow)
    return LayerBound(factor, "p-norm over one window", exact=True, rounding=rounding)


# --- reductions ----------------------------------------------------------------------------


def reduced_axes(node: Node, graph: Graph) -> tuple[int, ...]:
    """The axes a Reduce* node reduces (attribute or, from opset 18, constant input)."""
    source = graph.data_inputs(node)[0]
    rank = len(graph.shape(source))
    if len(node.inputs) > 1 and node.inputs[1]:
        if not graph.is_constant(node.inputs[1]):
            raise refuse(node, "the reduced axes depend on the input")
        axes = [int(a) for a in np.asarray(graph.constant(node.inputs[1])).reshape(-1)]
    else:
        axes = [int(a) for a in node.attr("axes", [])]
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return ()
        axes = list(range(rank))
    normalised = tuple(sorted({a % rank for a in axes}))
    if 0 in normalised:
        raise refuse(node, "reducing over the batch axis mixes samples")
    return normalised


def _group_size(node: Node, graph: Graph) -> int:
    source = graph.data_inputs(node)[0]
    shape = graph.shape(source)
    return math.prod(shape[a] for a in reduced_axes(node, graph))


@rule("ReduceMax", "ReduceMin")
def reduce_max(node: Node, graph: Graph) -> LayerBound:
    """Max over disjoint groups: each output moves by at most its group's change."""
    _group_size(node, graph)
    return LayerBound(1.0, "max/min over disjoint groups", exact=True, rounding=EXACT)


@rule("ReduceL2")
def reduce_l2(node: Node, graph: Graph) -> LayerBound:
    """sqrt(sum v^2) per group; squares among the subnormals err by a half spacing each
    (root_underflow_offset)."""
    size = _group_size(node, graph)
    outputs = math.prod(graph.shape(node.outputs[0])[1:])
    underflow = root_underflow_offset(size + 2, outputs, 2.0, math.log2(size))
    rounding = Rounding(terms=size + 2, input_gain=1.0, offset=underflow)
    return LayerBound(1.0, "L2 norm over disjoint groups", exact=True, rounding=rounding)


@rule("ReduceLogSumExp")
def reduce_logsumexp(node: Node, graph: Graph) -> LayerBound:
    size = _group_size(node, graph)
    elements = float(np.prod(graph.shape(node.outputs[0])))
    rounding = Rounding(terms=size + _TWO_LIBRARY_CALLS, output_gain=1.0, offset=sqrt_up(elements))
    return LayerBound(1.0, "gradient is a softmax, of L2 norm <= 1", exact=False, rounding=rounding)


@rule("ReduceMean")
def reduce_mean(node: Node, graph: Graph) -> LayerBound:
    size = _group_size(node, graph)
    factor = inverse_sqrt_up(size)
    rounding = Rounding(terms=size + 1, input_gain=factor)
    return LayerBound(factor, f"1/sqrt(group size {size})", exact=True, rounding=rounding)


@rule("ReduceSum", "ReduceL1")
def reduce_sum(node: Node, graph: Graph) -> LayerBound:
    size = _group_size(node, graph)
    factor = sqrt_up(size)
    return LayerBound(
        factor,
        f"sqrt(group size {size})",
        exact=True,
        rounding=Rounding(terms=size, input_gain=factor),
    )
