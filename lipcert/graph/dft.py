"""The geometry of ONNX DFT: which axis, how long, which direction, one side or both.

Shared by the graph executor and the bound rule, so both read the op the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from lipcert.graph.ir import Node, refuse


@dataclass(frozen=True)
class DftGeometry:
    """`axis` indexes the signal (the input without its last, real/imaginary, axis)."""

    axis: int
    length: int  # n: the transform's length (dft_length, else the input's size on the axis)
    input_length: int
    inverse: bool
    onesided: bool
    complex_input: bool


def dft_geometry(
    node: Node, input_shape: tuple[int, ...], length: int | None, axis_input: int | None
) -> DftGeometry:
    """Read a DFT node's attributes and inputs for an input of `input_shape`.

    Opsets 17-19 give the axis as an attribute (default 1), opset 20 as the third input
    (default -2); a node with neither is refused rather than guessed.
    """
    rank = len(input_shape)
    if rank < 3 or input_shape[-1] not in (1, 2):
        raise refuse(node, f"expected a DFT input ending in 1 or 2 components, got {input_shape!r}")
    if node.attr("axis") is not None:
        axis = int(node.attr("axis"))
    elif axis_input is not None:
        axis = axis_input
    else:
        raise refuse(node, "its axis is neither an attribute nor an input (opset unknown)")
    axis = axis % rank
    if axis == 0 or axis == rank - 1:
        raise refuse(node, f"a DFT along axis {axis} (batch or components) is not supported")
    inverse = bool(node.attr("inverse", 0))
    onesided = bool(node.attr("onesided", 0))
    size = input_shape[axis]
    if inverse and onesided:
        # irfft of the half spectrum of a signal of length n, by default 2 (size - 1) (the
        # ONNX reference and onnxruntime). onnxruntime reads any other number of bins than
        # n // 2 + 1 differently from irfft (bins beyond the half added without their
        # conjugates, measured): refused, not guessed.
        n = 2 * (size - 1) if length is None else int(length)
        if n < 1 or size != n // 2 + 1:
            raise refuse(
                node,
                f"a onesided inverse DFT of {size} bins with dft_length {n} (expected "
                f"{n // 2 + 1} bins: the runtimes disagree on other sizes)",
            )
    else:
        n = size if length is None else int(length)
    if n < 1:
        raise refuse(node, f"unusable dft_length {n!r}")
    if onesided and not inverse and input_shape[-1] != 1:
        raise refuse(node, "a onesided forward DFT of a complex signal is not supported")
    return DftGeometry(
        axis=axis,
        length=n,
        input_length=size,
        inverse=inverse,
        onesided=onesided,
        complex_input=input_shape[-1] == 2,
    )
