"""Rules for the fused patterns of lipcert.graph.patterns (and SiLU in the activation table)."""

from __future__ import annotations

import math

from lipcert.bounds.numeric import mul_up, sqrt_up, up
from lipcert.bounds.registry import EXACT, LIBRARY_ULPS, LayerBound, Rounding, refuse, rule
from lipcert.bounds.rules.pooling import overlap, root_underflow_offset
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import check_window_output, window


@rule("GroupSort")
def group_sort(node: Node, graph: Graph) -> LayerBound:
    """Sorting within disjoint groups (min/max of pairs, or of slices) is 1-Lipschitz."""
    return LayerBound(1.0, "sorting within disjoint groups", exact=True, rounding=EXACT)


@rule("MaxMin")
def max_min_activation(node: Node, graph: Graph) -> LayerBound:
    """(relu(x), relu(-x)) per element is 1-Lipschitz (an isometry on same-sign pairs)."""
    return LayerBound(1.0, "(relu(x), relu(-x)) per element", exact=True, rounding=EXACT)


@rule("L2NormPool")
def l2_norm_pool(node: Node, graph: Graph) -> LayerBound:
    """sqrt(c * average of x^2 over each window) = sqrt(c / divisor) * ||window||_2.

    Each window's L2 norm is 1-Lipschitz and a position lies in at most m windows, so the
    map is sqrt(c / divisor) * sqrt(m)-Lipschitz; the divisor is the kernel size when every
    window is full (no ceil mode, padding counted or absent), else at least 1.
    """
    source = node.inputs[0]
    spatial = graph.shape(source)[2:]
    scale = float(node.attr("scale", 1.0))
    full = True
    if node.attr("pool_op") == "GlobalAveragePool":
        divisor, m, how = math.prod(spatial), 1, "one window"
        if not graph.size_known:
            raise refuse(node, "global L2 pooling needs a known input size")
    else:
        kernel = tuple(int(k) for k in node.attr("kernel_shape", []))
        win = window(node, spatial, kernel)
        check_window_output(node, win, spatial, graph.shape(node.outputs[0])[2:])
        count_pad = bool(node.attr("count_include_pad", 0))
        full = not win.ceil_mode and (count_pad or not win.has_padding)
        divisor = math.prod(kernel) if full else 1
        m, how = overlap(win, spatial, graph)
    gain = sqrt_up(up(scale / divisor))
    method = f"sqrt(c/divisor) = sqrt({scale:g}/{divisor}) times sqrt(m), m = {m} ({how})"
    factor = mul_up(gain, sqrt_up(m))
    # squares and a square root (Pow, a library function each), a sum of the window, a
    # division and the scaling
    window_size = divisor if node.attr("pool_op") == "GlobalAveragePool" else math.prod(kernel)
    terms = window_size + 8 + 2 * LIBRARY_ULPS
    # Underflow under the root: the k squares (library calls, 2 LIBRARY_ULPS half spacings h
    # each among the subnormals) err by k 2 LIBRARY_ULPS h, divided by the divisor; the
    # division and the scaling err by h each; the scaling multiplies what comes before it:
    # delta <= (c (2 LIBRARY_ULPS k / divisor + 1) + 1) h.
    multiple = scale * (2 * LIBRARY_ULPS * window_size / divisor + 1.0) + 1.0
    outputs = math.prod(graph.shape(node.outputs[0])[1:])
    underflow = root_underflow_offset(terms, outputs, 2.0, math.log2(multiple))
    rounding = Rounding(terms=terms, input_gain=factor, offset=underflow)
    # Exact when every window has the same divisor; else the smallest possible divisor (1)
    # gives an upper bound.
    return LayerBound(factor, method, exact=graph.size_known and full, rounding=rounding)
