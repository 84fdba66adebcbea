"""ONNX geometry: the attributes of Conv, ConvTranspose and pooling made explicit, and the
index maps of padding modes.

Both the bound rules and the graph executor read these, so they live with the graph, once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lipcert.graph.ir import Node, refuse


@dataclass(frozen=True)
class Window:
    """Kernel size, strides, dilations and explicit padding per spatial axis."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    ceil_mode: bool = False

    @property
    def has_padding(self) -> bool:
        return any(self.pads_begin) or any(self.pads_end)


def window(node: Node, spatial_input: tuple[int, ...], kernel: tuple[int, ...]) -> Window:
    """Resolve a node's auto_pad/pads/strides/dilations for inputs of size `spatial_input`."""
    rank = len(kernel)
    if len(spatial_input) != rank:
        raise refuse(node, f"expected {rank} spatial axes but the input has {spatial_input!r}")
    strides = tuple(int(s) for s in node.attr("strides", [1] * rank))
    dilations = tuple(int(d) for d in node.attr("dilations", [1] * rank))
    if len(strides) != rank or len(dilations) != rank or min(strides + dilations) < 1:
        raise refuse(node, f"unusable strides {strides!r} or dilations {dilations!r}")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in node.attr("pads", [0] * (2 * rank))]
        if len(pads) != 2 * rank or min(pads) < 0:
            raise refuse(node, f"unusable pads {pads!r}")
        begin, end = tuple(pads[:rank]), tuple(pads[rank:])
    elif auto_pad == "VALID":
        begin = end = (0,) * rank
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin_list, end_list = [], []
        for n, k, s, d in zip(spatial_input, kernel, strides, dilations, strict=True):
            extent = (k - 1) * d + 1
            total = max((math.ceil(n / s) - 1) * s + extent - n, 0)
            small, large = total // 2, total - total // 2
            first, last = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            if node.op in _POOLING or node.attr("pool_op") in _POOLING:  # or a fused pool
                _check_onnxruntime_same_pads(node, n, k, s, d, (first, last))
            else:  # Conv (and blocks fused from it): the dilated kernel, the same split
                _check_onnxruntime_same_pads(node, n, extent, s, d, (first, last))
            begin_list.append(first)
            end_list.append(last)
        begin, end = tuple(begin_list), tuple(end_list)
    else:
        raise refuse(node, f"unknown auto_pad {auto_pad!r}")
    return Window(
        kernel=kernel,
        strides=strides,
        dilations=dilations,
        pads_begin=begin,
        pads_end=end,
        ceil_mode=bool(node.attr("ceil_mode", 0)),
    )


_POOLING = ("MaxPool", "AveragePool", "LpPool")


def _check_onnxruntime_same_pads(
    node: Node, n: int, k: int, s: int, d: int, specified: tuple[int, int]
) -> None:
    """Refuse a pooling node (or Conv) whose auto_pad SAME windows onnxruntime places
    elsewhere.

    onnxruntime's pooling kernels (PoolAttributes::ComputeSizePadDilations) pad as if the
    kernel were not dilated (`k`), its Conv with the dilated extent (the caller passes that
    as `k`); neither clamps the total at 0 (a kernel shorter than the stride pads by a
    negative amount: a 1-tap Conv of stride 4 on 4 values read x[1], not x[0]) and both
    split it with C's division, which truncates towards zero. Its windows start at
    o s - begin, clipped to the input: where its begin differs from the specification's,
    they are not the windows the bound and the executor read (a
    dilated MaxPool window may read an input element where the specification's reads only
    padding: a bound of 0 for a 1-Lipschitz output). The end padding moves only the output
    size (checked by `check_window_output`) and, with count_include_pad, the divisor of
    average pooling.
    """
    auto_pad = node.attr("auto_pad")
    total = (math.ceil(n / s) - 1) * s + k - n
    numerator = total if auto_pad == "SAME_UPPER" else total + 1
    head = abs(numerator) // 2 * (1 if numerator >= 0 else -1)
    theirs = (head, total - head)
    average = "AveragePool" in (node.op, node.attr("pool_op"))
    divisor_reads_end = average and bool(node.attr("count_include_pad", 0))
    if theirs[0] != specified[0] or (divisor_reads_end and theirs[1] != specified[1]):
        raise refuse(
            node,
            f"onnxruntime computes pads {theirs} for auto_pad {auto_pad} where the "
            f"specification gives {specified} (dilation {d}, input {n}): windows unknown",
        )


def max_overlap(win: Window) -> int:
    """Most windows that can contain one position, whatever the input size.

    Per axis a position lies in at most k windows (one tap each) and in at most
    ceil(extent / stride) windows (their starts are stride apart); the product over axes.
    """
    total = 1
    for k, s, d in zip(win.kernel, win.strides, win.dilations, strict=True):
        extent = (k - 1) * d + 1
        total *= min(k, math.ceil(extent / s))
    return total


def transpose_window(
    node: Node,
    spatial_input: tuple[int, ...],
    spatial_output: tuple[int, ...],
    kernel: tuple[int, ...],
) -> Window:
    """A ConvTranspose's explicit padding, from its pads or from its output size.

    The full transposed convolution has s (n - 1) + (k - 1) d + 1 positions per axis; the
    output keeps output_size of them from `pads_begin` on. Without explicit pads (an
    output_shape attribute, or auto_pad), the padding to remove is
    total = s (n - 1) + output_padding + (k - 1) d + 1 - output_size, split as onnxruntime
    does: begin = total // 2 for SAME_UPPER, else total - total // 2.
    """
    rank = len(kernel)
    strides = tuple(int(s) for s in node.attr("strides", [1] * rank))
    dilations = tuple(int(d) for d in node.attr("dilations", [1] * rank))
    if len(strides) != rank or len(dilations) != rank or min(strides + dilations) < 1:
        raise refuse(node, f"unusable strides {strides!r} or dilations {dilations!r}")
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    explicit = auto_pad == "NOTSET" and node.attr("output_shape") is None
    if explicit:
        pads = [int(p) for p in node.attr("pads", [0] * (2 * rank))]
        if len(pads) != 2 * rank or min(pads) < 0:
            raise refuse(node, f"unusable pads {pads!r}")
        return Window(kernel, strides, dilations, tuple(pads[:rank]), tuple(pads[rank:]))
    output_padding = [int(p) for p in node.attr("output_padding", [0] * rank)]
    begin, end = [], []
    for axis in range(rank):
        extent = (kernel[axis] - 1) * dilations[axis] + 1
        total = (
            strides[axis] * (spatial_input[axis] - 1)
            + output_padding[axis]
            + extent
            - spatial_output[axis]
        )
        if total < 0:
            raise refuse(
                node, f"its output is larger than the full transposed convolution on axis {axis}"
            )
        first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begin.append(first)
        end.append(total - first)
    return Window(kernel, strides, dilations, tuple(begin), tuple(end))


def pad_source_index(i: int, n: int, mode: str) -> int:
    """The input position that output position `i` (from -before on) copies, along an axis
    of size `n`, for the Pad modes edge, wrap and reflect."""
    if 0 <= i < n:
        return i
    if mode == "edge":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    # reflect, without repeating the edge element
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = i % period
    return j if j < n else period - j


def window_output_size(win: Window, spatial_input: tuple[int, ...]) -> tuple[int, ...]:
    """The output size per axis the ONNX specification gives a Conv or pooling window."""
    sizes = []
    for n, k, s, d, b, e in zip(
        spatial_input,
        win.kernel,
        win.strides,
        win.dilations,
        win.pads_begin,
        win.pads_end,
        strict=True,
    ):
        span = n + b + e - ((k - 1) * d + 1)
        count = (-(-span // s) if win.ceil_mode else span // s) + 1
        if win.ceil_mode and (count - 1) * s >= n + b:
            count -= 1  # a last window starting in the end padding is dropped
        sizes.append(count)
    return tuple(sizes)


def check_window_output(
    node: Node, win: Window, spatial_input: tuple[int, ...], spatial_output: tuple[int, ...]
) -> None:
    """Refuse a window whose output size is not the one onnxruntime computed.

    onnxruntime pads pooling with auto_pad SAME as if the kernel were not dilated, so its
    windows are not the ones the specification (and lipcert's geometry) describes.
    """
    for axis, n in enumerate(spatial_input):
        extent = (win.kernel[axis] - 1) * win.dilations[axis] + 1
        padded = n + win.pads_begin[axis] + win.pads_end[axis]
        if padded < extent:  # onnxruntime's ceil mode still makes an output of it
            raise refuse(
                node,
                f"its window ({extent}) is longer than the padded input ({padded}) on axis {axis}",
            )
    expected = window_output_size(win, spatial_input)
    if expected != tuple(spatial_output):
        raise refuse(
            node,
            f"onnxruntime computes an output of size {tuple(spatial_output)} where its "
            f"attributes give {expected} (auto_pad SAME with dilations): windows unknown",
        )
