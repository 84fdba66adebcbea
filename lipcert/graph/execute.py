"""Executing the internal graph with torch, for gradients (empirical bounds and attacks).

The graph's ops follow ONNX semantics; each has a small torch implementation below. A fused
node runs the original nodes of its body, so execution reproduces the model itself. Constants
that were folded at batch size 1 (Reshape and Expand targets) get the actual batch size.
The result is checked against onnxruntime by the callers that rely on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipcert.errors import UnsupportedOpError
from lipcert.graph.geometry import (
    check_window_output,
    pad_source_index,
    transpose_window,
    window,
)
from lipcert.graph.ir import Graph, Node, refuse
from lipcert.graph.opsets import check_node, in_force

Tensor = torch.Tensor
OpFn = Callable[[Node, list[Any], "GraphExecutor"], list[Tensor]]

_OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(function: OpFn) -> OpFn:
        for name in names:
            _OPS[name] = function
        return function

    return register


class GraphExecutor(torch.nn.Module):
    """A torch module computing the graph's logits from a batch of inputs."""

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.graph = graph
        self.dtype = dtype
        self.constants = {name: _to_tensor(value, dtype) for name, value in graph.constants.items()}
        for node in _all_nodes(graph.nodes):
            if node.op not in _OPS:
                raise UnsupportedOpError(
                    f"node {node.name!r} has op {node.op!r}, which lipcert cannot execute"
                )
            check_node(node, graph)
            _check_semantics(node, graph)

    def forward(self, x: Tensor) -> Tensor:
        """The logits of the batch `x`. A model that fixes its batch B runs in zero-padded
        chunks of B: its shape constants may hold B (a Reshape merging the batch axis)."""
        size = max(self.graph.batch_size, 1)
        if not self.graph.batch_fixed or x.shape[0] == size:
            return self._forward(x)
        outputs = []
        for start in range(0, x.shape[0], size):
            part = x[start : start + size]
            pad = part.new_zeros((size - part.shape[0], *part.shape[1:]))
            outputs.append(self._forward(torch.cat([part, pad]))[: part.shape[0]])
        return torch.cat(outputs)

    def _forward(self, x: Tensor) -> Tensor:
        values: dict[str, Any] = dict(self.constants)
        values[self.graph.input_name] = x.to(self.dtype)
        self._batch = int(x.shape[0])
        self._run(self.graph.nodes, values)
        return values[self.graph.output_name]

    def _run(self, nodes: list[Node] | tuple[Node, ...], values: dict[str, Any]) -> None:
        for node in nodes:
            if node.body:
                self._run(node.body, values)
                continue
            args = [values[name] if name else None for name in node.inputs]
            results = self.run_node(node, args)
            for name, result in zip(node.outputs, results, strict=False):
                if name:
                    values[name] = result

    def run_node(self, node: Node, args: list[Any]) -> list[Tensor]:
        """The outputs of one node on the given input values (None for an absent input)."""
        return _OPS[node.op](node, args, self)

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The static shape of a tensor at the current batch size."""
        shape = self.graph.shape(name)
        return (self._batch, *shape[1:]) if shape else shape


# Cast targets the executor runs: FLOAT and DOUBLE (it computes in its own float dtype).
_FLOAT_TYPES = (1, 11)


def _check_semantics(node: Node, graph: Graph) -> None:
    """Refuse attribute values whose meaning the executor does not reproduce."""
    if node.op == "TopK" and not node.attr("sorted", 1):
        k_value = node.attr("k") if len(node.inputs) < 2 else graph.constants.get(node.inputs[1])
        if k_value is None or _ints(k_value)[0] > 1:
            raise refuse(node, "TopK with sorted=0 returns its values in an unspecified order")
    elif node.op == "BatchNormalization":
        if not node.attr("spatial", 1):
            raise refuse(node, "BatchNormalization with spatial=0 is not supported")
        if node.attr("training_mode", 0):
            raise refuse(node, "training-mode BatchNormalization uses batch statistics")
    elif node.op == "Cast" and int(node.attr("to", 0)) not in _FLOAT_TYPES:
        raise refuse(
            node, f"only casts to float32 or float64 are run, not to type {node.attr('to')}"
        )
    elif node.op == "Gelu" and node.attr("approximate", "none") not in ("none", "tanh"):
        raise refuse(node, f"unknown GELU approximation {node.attr('approximate')!r}")
    elif node.op == "Pad" and node.attr("mode", "constant") not in _PAD_MODES:
        raise refuse(node, f"unknown pad mode {node.attr('mode')!r}")
    elif node.op == "DepthToSpace" and node.attr("mode", "DCR") not in ("DCR", "CRD"):
        raise refuse(node, f"unknown DepthToSpace mode {node.attr('mode')!r}")
    elif node.op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
        training = graph.constants.get(node.inputs[2])
        if training is None or bool(np.asarray(training).any()):
            raise refuse(node, "Dropout in training mode is random")
    if node.op in ("Conv", "ConvTranspose") and len(graph.shape(node.inputs[0])) not in (3, 4, 5):
        raise refuse(node, "only 1-D, 2-D and 3-D convolutions are run")
    if node.op in ("Conv", "MaxPool", "AveragePool", "LpPool"):
        spatial = graph.shape(node.inputs[0])[2:]
        if node.op == "Conv":
            weight = graph.constants.get(node.inputs[1])
            kernel = () if weight is None else tuple(np.asarray(weight).shape[2:])
        else:
            kernel = tuple(int(k) for k in node.attr("kernel_shape", []))
        if kernel:
            win = window(node, spatial, kernel)
            check_window_output(node, win, spatial, graph.shape(node.outputs[0])[2:])
    if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        used = node.outputs[1] == graph.output_name or any(
            node.outputs[1] in other.inputs for other in _all_nodes(graph.nodes)
        )
        if used:
            raise refuse(node, "the indices output of MaxPool is not computed")


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _all_nodes(nodes: list[Node] | tuple[Node, ...]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.extend(_all_nodes(node.body) if node.body else [node])
    return found


def _to_tensor(value: np.ndarray, dtype: torch.dtype) -> Tensor:
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        return torch.as_tensor(array.astype(np.float64)).to(dtype)
    if array.dtype == np.bool_:
        return torch.as_tensor(array)
    return torch.as_tensor(array.astype(np.int64))


def _ints(value: Any) -> list[int]:
    if isinstance(value, Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(value).reshape(-1)]


# --- linear layers -------------------------------------------------------------------------


@_op("Gemm")
def _gemm(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    a, b = args[0], args[1]
    if node.attr("transA", 0):
        a = a.transpose(-1, -2)
    if node.attr("transB", 0):
        b = b.transpose(-1, -2)
    out = float(node.attr("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + float(node.attr("beta", 1.0)) * args[2]
    return [out]


@_op("MatMul")
def _matmul(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [torch.matmul(args[0], args[1])]


def _conv_padding(node: Node, x: Tensor, weight: Tensor) -> tuple[Tensor, Any]:
    win = window(node, tuple(x.shape[2:]), tuple(weight.shape[2:]))
    pad: list[int] = []
    for begin, end in zip(reversed(win.pads_begin), reversed(win.pads_end), strict=True):
        pad.extend([begin, end])
    if any(pad):
        x = F.pad(x, pad)
    return x, win


@_op("Conv")
def _conv(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    x, win = _conv_padding(node, x, weight)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
    groups = int(node.attr("group", 1))
    return [conv(x, weight, bias, stride=win.strides, dilation=win.dilations, groups=groups)]


@_op("ConvTranspose")
def _conv_transpose(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    out_shape = ex.shape_of(node.outputs[0])
    win = transpose_window(node, tuple(x.shape[2:]), tuple(out_shape[2:]), tuple(weight.shape[2:]))
    transpose = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[weight.dim()]
    groups = int(node.attr("group", 1))
    full = transpose(x, weight, None, stride=win.strides, dilation=win.dilations, groups=groups)
    index: list[slice] = [slice(None), slice(None)]
    pad: list[int] = []
    for axis, (begin, size) in enumerate(zip(win.pads_begin, out_shape[2:], strict=True)):
        available = full.shape[2 + axis] - begin
        index.append(slice(begin, begin + min(size, available)))
        pad.append(max(size - available, 0))
    out = full[tuple(index)]
    if any(pad):
        flat: list[int] = []
        for extra in reversed(pad):
            flat.extend([0, extra])
        out = F.pad(out, flat)
    if bias is not None:
        out = out + bias.reshape(1, -1, *([1] * (out.dim() - 2)))
    return [out]


@_op("BatchNormalization")
def _batch_norm(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x, scale, bias, mean, var = args[:5]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    eps = float(node.attr("epsilon", 1e-5))
    return [
        (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape)
        + bias.reshape(shape)
    ]


# --- element-wise --------------------------------------------------------------------------


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Identity": lambda t: t,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    # not F.softplus: it returns x itself above x = 20, off by up to e^-20 = 2e-9, far more
    # than the float64 roundings the rules allow (log(1 + e^x) = max(x, 0) + log1p(e^-|x|))
    "Softplus": lambda t: torch.logaddexp(t, torch.zeros_like(t)),
    "Softsign": F.softsign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Atan": torch.atan,
    "Asinh": torch.asinh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Sign": torch.sign,
    "Exp": torch.exp,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
}


@_op(*_UNARY)
def _unary(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [_UNARY[node.op](args[0])]


@_op("Gelu")
def _gelu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [F.gelu(args[0], approximate=str(node.attr("approximate", "none")))]


@_op("LeakyRelu")
def _leaky_relu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [F.leaky_relu(args[0], float(node.attr("alpha", 0.01)))]


@_op("PRelu")
def _prelu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x, slope = args
    return [torch.where(x >= 0, x, x * slope)]


@_op("Elu")
def _elu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [F.elu(args[0], float(node.attr("alpha", 1.0)))]


@_op("Celu")
def _celu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [F.celu(args[0], float(node.attr("alpha", 1.0)))]


@_op("Selu")
def _selu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    x = args[0]
    return [gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))]


@_op("HardSigmoid")
def _hard_sigmoid(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return [torch.clamp(alpha * args[0] + beta, 0.0, 1.0)]


@_op("Clip")
def _clip(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    low = args[1] if len(args) > 1 and args[1] is not None else node.attr("min")
    high = args[2] if len(args) > 2 and args[2] is not None else node.attr("max")
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype))
    return [x]


@_op("Shrink")
def _shrink(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    bias, lambd = float(node.attr("bias", 0.0)), float(node.attr("lambd", 0.5))
    return [
        torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))
    ]


@_op("SiLU")
def _silu(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [F.silu(args[0])]


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
}


@_op(*_BINARY)
def _binary(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    a, b = args
    if node.op == "Pow" and not b.is_floating_point():
        b = b.to(a.dtype)
    return [_BINARY[node.op](a, b)]


@_op("Sum", "Mean", "Max", "Min")
def _variadic(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    out = args[0]
    for other in args[1:]:
        if node.op in ("Sum", "Mean"):
            out = out + other
        elif node.op == "Max":
            out = torch.maximum(out, other)
        else:
            out = torch.minimum(out, other)
    if node.op == "Mean":
        out = out / len(args)
    return [out]


@_op("Cast")
def _cast(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    """To FLOAT or DOUBLE (other targets are refused): the executor's own float dtype."""
    return [args[0].to(ex.dtype)]


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    """From opset 13 along one axis (default -1); before, over the 2-D view that flattens the
    axes from `axis` (default 1) on into one."""
    x = args[0]
    function = torch.softmax if node.op == "Softmax" else torch.log_softmax
    if (in_force(node.op, ex.graph.opset) or 13) >= 13:
        return [function(x, dim=int(node.attr("axis", -1)))]
    axis = int(node.attr("axis", 1)) % max(x.dim(), 1)
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    return [function(flat, dim=1).reshape(x.shape)]


# --- structure -----------------------------------------------------------------------------


@_op("Reshape")
def _reshape(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    target = _ints(args[1])
    allow_zero = int(node.attr("allowzero", 0))
    shape = [x.shape[i] if (d == 0 and not allow_zero) else d for i, d in enumerate(target)]
    folded_batch = ex.graph.batch_size
    if (
        shape
        and shape[0] == folded_batch
        and x.shape[0] != folded_batch
        and ex.graph.shape(node.inputs[0])[0] == folded_batch
    ):
        shape[0] = int(x.shape[0])  # the target was folded at the probe's batch size
    return [x.reshape(shape)]


@_op("Flatten")
def _flatten(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    axis = int(node.attr("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis  # axis = rank is allowed: (all, 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))]


@_op("Transpose")
def _transpose(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    perm = node.attr("perm") or list(reversed(range(x.dim())))
    return [x.permute(*[int(p) for p in perm])]


def _axes(node: Node, args: list[Any]) -> list[int] | None:
    if len(args) > 1 and args[1] is not None:
        return _ints(args[1])
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


@_op("Squeeze")
def _squeeze(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    axes = _axes(node, args)
    if axes is None:
        return [x.reshape([d for i, d in enumerate(x.shape) if d != 1 or i == 0])]
    keep = [d for i, d in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


@_op("Unsqueeze")
def _unsqueeze(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    axes = _axes(node, args) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


@_op("Dropout")
def _dropout(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [args[0], torch.ones_like(args[0], dtype=torch.bool)]


@_op("Slice")
def _slice(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    if len(args) == 1:  # up to opset 9: starts, ends and axes are attributes
        starts, ends = _ints(node.attr("starts")), _ints(node.attr("ends"))
        axes = _ints(node.attr("axes", list(range(len(starts)))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(args[1]), _ints(args[2])
        given = len(args) > 3 and args[3] is not None
        axes = _ints(args[3]) if given else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = x.shape[axis % x.dim()]
        if step < 0:
            positions = list(range(size))[slice(start, end, step)]
            x = x.index_select(axis % x.dim(), torch.as_tensor(positions, dtype=torch.long))
            continue
        start, end = max(min(start, size), -size), max(min(end, size), -size - 1)
        index[axis % x.dim()] = slice(start, end, step)
    return [x[tuple(index)]]


@_op("Split")
def _split(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    axis = int(node.attr("axis", 0)) % x.dim()
    if len(args) > 1 and args[1] is not None:
        sizes = _ints(args[1])
    elif node.attr("split") is not None:
        sizes = [int(s) for s in node.attr("split")]
    else:
        sizes = [ex.graph.shape(name)[axis] for name in node.outputs]
    return list(torch.split(x, sizes, dim=axis))


@_op("Concat")
def _concat(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    axis = int(node.attr("axis", 0))
    batch = max(t.shape[0] for t in args if t.dim() > 0)
    parts = [
        t.expand(batch, *t.shape[1:])
        if t.dim() > 0 and t.shape[0] == 1 and axis % t.dim() != 0
        else t
        for t in args
    ]
    return [torch.cat(parts, dim=axis)]


@_op("Pad")
def _pad(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    if len(args) == 1:  # up to opset 10: the amounts and the fill value are attributes
        amounts = [int(p) for p in node.attr("pads", [])]
        value = float(node.attr("value", 0.0))
    else:
        amounts = _ints(args[1])
        given = len(args) > 2 and args[2] is not None and args[2].numel()
        value = float(args[2].reshape(-1)[0]) if given else 0.0
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(x.dim()))
    per_axis = [(0, 0)] * x.dim()
    for i, axis in enumerate(axes):
        per_axis[axis % x.dim()] = (amounts[i], amounts[i + len(axes)])
    mode = node.attr("mode", "constant")
    if mode == "constant":
        flat = [v for before, after in reversed(per_axis) for v in (before, after)]
        return [F.pad(x, flat, value=value)]
    for axis, (before, after) in enumerate(per_axis):
        if before or after:
            x = _index_pad(x, axis, before, after, mode)
    return [x]


def _index_pad(x: Tensor, axis: int, before: int, after: int, mode: str) -> Tensor:
    size = x.shape[axis]
    index = [pad_source_index(i, size, mode) for i in range(-before, size + after)]
    return x.index_select(axis, torch.as_tensor(index, dtype=torch.long))


@_op("Gather")
def _gather(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x, indices = args
    axis = int(node.attr("axis", 0)) % x.dim()
    flat = indices.reshape(-1).long() % x.shape[axis]
    out = x.index_select(axis, flat)
    shape = list(x.shape[:axis]) + list(indices.shape) + list(x.shape[axis + 1 :])
    return [out.reshape(shape)]


@_op("Expand")
def _expand(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    target = _ints(args[1])
    shape = list(torch.broadcast_shapes(tuple(x.shape), tuple(target)))
    if (
        shape
        and shape[0] == ex.graph.batch_size
        and x.shape[0] != shape[0]
        and len(target) == x.dim()
    ):
        shape[0] = int(x.shape[0])  # the target was folded at the probe's batch size
    return [x.expand(shape)]


@_op("Tile")
def _tile(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [args[0].repeat(*_ints(args[1]))]


@_op("DepthToSpace")
def _depth_to_space(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@_op("SpaceToDepth")
def _space_to_depth(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    b = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]


@_op("DFT")
def _dft(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    """ONNX DFT: the last axis holds (real) or (real, imaginary); output always the latter.

    Opset 17-19 read `axis` from the attribute, opset 20 from the third input. A onesided
    forward transform keeps bins 0 .. n // 2; a onesided inverse reads those bins as the half
    spectrum of a real signal of length n (irfft), written with one component.
    """
    from lipcert.graph.dft import dft_geometry

    x = args[0]
    length_arg = args[1] if len(args) > 1 else None
    axis_arg = args[2] if len(args) > 2 else None
    geometry = dft_geometry(
        node,
        tuple(x.shape),
        None if length_arg is None else _ints(length_arg)[0],
        None if axis_arg is None else _ints(axis_arg)[0],
    )
    signal = x[..., 0] if x.shape[-1] == 1 else torch.complex(x[..., 0], x[..., 1])
    n, axis = geometry.length, geometry.axis
    if not geometry.inverse:
        out = torch.fft.fft(signal, n=n, dim=axis)
        if geometry.onesided:
            out = out.narrow(axis, 0, n // 2 + 1)
    elif geometry.onesided:
        # A real signal: onnxruntime writes it with one component (last axis of size 1).
        return [torch.fft.irfft(signal, n=n, dim=axis).unsqueeze(-1).to(x.dtype)]
    else:
        out = torch.fft.ifft(signal, n=n, dim=axis)
    if not out.is_complex():
        out = torch.complex(out, torch.zeros_like(out))
    return [torch.stack([out.real, out.imag], dim=-1).to(x.dtype)]


@_op("TopK")
def _top_k(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    """Sorted values only: the executor refuses sorted=0 (any order) for k > 1."""
    x = args[0]
    k = int(node.attr("k")) if len(args) == 1 else _ints(args[1])[0]  # an attribute in opset 1
    axis = int(node.attr("axis", -1))
    values, indices = torch.topk(x, k, dim=axis, largest=bool(node.attr("largest", 1)), sorted=True)
    return [values, indices]


# --- reductions and pooling ----------------------------------------------------------------


def _reduce_dims(node: Node, args: list[Any], x: Tensor) -> list[int] | None:
    axes = _axes(node, args)
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else list(range(x.dim()))
    return sorted({a % x.dim() for a in axes})  # onnxruntime reduces a repeated axis once


@_op("ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceL1", "ReduceLogSumExp")
def _reduce(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    dims = _reduce_dims(node, args, x)
    if not dims:
        # No axes: no reduction, but the element-wise steps remain (the ONNX specification)
        return [torch.abs(x) if node.op in ("ReduceL1", "ReduceL2") else x]
    keep = bool(node.attr("keepdims", 1))
    if node.op == "ReduceMax":
        out = torch.amax(x, dim=dims, keepdim=keep)
    elif node.op == "ReduceMin":
        out = torch.amin(x, dim=dims, keepdim=keep)
    elif node.op == "ReduceMean":
        out = torch.mean(x, dim=dims, keepdim=keep)
    elif node.op == "ReduceSum":
        out = torch.sum(x, dim=dims, keepdim=keep)
    elif node.op == "ReduceL2":
        out = torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))
    elif node.op == "ReduceL1":
        out = torch.sum(torch.abs(x), dim=dims, keepdim=keep)
    else:
        out = torch.logsumexp(x, dim=dims, keepdim=keep)
    return [out]


def _pool_geometry(node: Node, x: Tensor) -> Any:
    kernel = tuple(int(k) for k in node.attr("kernel_shape"))
    return window(node, tuple(x.shape[2:]), kernel)


def _output_length(n: int, begin: int, end: int, k: int, s: int, d: int, ceil_mode: bool) -> int:
    span = n + begin + end - ((k - 1) * d + 1)
    count = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (count - 1) * s >= n + begin:
        count -= 1  # a last window starting in the end padding is dropped
    return count


def _windows(node: Node, x: Tensor, pad_fill: float, overhang_fill: float) -> Tensor:
    """All pooling windows as a trailing axis: (N, C, *out, window elements).

    `pad_fill` fills the explicit padding, `overhang_fill` the positions a ceil-mode window
    reaches beyond it.
    """
    win = _pool_geometry(node, x)
    spatial = x.dim() - 2
    pads: list[int] = []
    overhang: list[int] = []
    outs: list[int] = []
    for axis in reversed(range(spatial)):
        n = x.shape[2 + axis]
        begin, end = win.pads_begin[axis], win.pads_end[axis]
        k, s, d = win.kernel[axis], win.strides[axis], win.dilations[axis]
        out = _output_length(n, begin, end, k, s, d, win.ceil_mode)
        needed = (out - 1) * s + (k - 1) * d + 1
        pads.extend([begin, end])
        overhang.extend([0, max(needed - (n + begin + end), 0)])
        outs.insert(0, out)
    if min(outs) <= 0:  # no window fits: an empty output
        return x.new_zeros((*x.shape[:2], *(max(o, 0) for o in outs), 1))
    patches = F.pad(F.pad(x, pads, value=pad_fill), overhang, value=overhang_fill)
    for axis in range(spatial):
        extent = (win.kernel[axis] - 1) * win.dilations[axis] + 1
        patches = patches.unfold(2 + axis, extent, win.strides[axis])
        if win.dilations[axis] > 1:
            patches = patches[..., :: win.dilations[axis]]
    return patches.reshape(*patches.shape[: 2 + spatial], -1)


def _native_padding(node: Node, x: Tensor) -> tuple[int, ...] | None:
    """Symmetric padding torch's pooling functions accept, or None when they cannot be used."""
    win = _pool_geometry(node, x)
    if win.ceil_mode or win.pads_begin != win.pads_end or x.dim() != 4:
        return None
    if any(2 * p > k for p, k in zip(win.pads_begin, win.kernel, strict=True)):
        return None
    return win.pads_begin


@_op("MaxPool")
def _max_pool(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    padding = _native_padding(node, x)
    if padding is not None:
        win = _pool_geometry(node, x)
        out = F.max_pool2d(x, win.kernel, win.strides, padding, win.dilations)
        return [out, torch.zeros(1, dtype=torch.long)]
    patches = _windows(node, x, -math.inf, -math.inf)
    return [patches.amax(dim=-1), torch.zeros(1, dtype=torch.long)]


@_op("AveragePool")
def _average_pool(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    padding = _native_padding(node, x)
    if padding is not None:
        win = _pool_geometry(node, x)
        if all(d == 1 for d in win.dilations):
            include = bool(node.attr("count_include_pad", 0))
            return [F.avg_pool2d(x, win.kernel, win.strides, padding, count_include_pad=include)]
    total = _windows(node, x, 0.0, 0.0).sum(dim=-1)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    pad_fill = 1.0 if node.attr("count_include_pad", 0) else 0.0
    count = _windows(node, ones, pad_fill, 0.0).sum(dim=-1)
    return [total / count]


@_op("LpPool")
def _lp_pool(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    p = float(node.attr("p", 2))
    patches = _windows(node, args[0], 0.0, 0.0)
    return [patches.abs().pow(p).sum(dim=-1).pow(1.0 / p)]


@_op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    x = args[0]
    dims = list(range(2, x.dim()))
    if node.op == "GlobalAveragePool":
        return [x.mean(dim=dims, keepdim=True)]
    if node.op == "GlobalMaxPool":
        return [x.amax(dim=dims, keepdim=True)]
    p = float(node.attr("p", 2))
    return [x.abs().pow(p).sum(dim=dims, keepdim=True).pow(1.0 / p)]


# --- comparisons, selects and scatters (inside fused patterns: see select_patterns.py) ------

_COMPARISONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
}


@_op(*_COMPARISONS)
def _compare(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [_COMPARISONS[node.op](args[0], args[1])]


@_op("Where")
def _where(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    return [torch.where(args[0].to(torch.bool), args[1], args[2])]


@_op("ScatterND")
def _scatter_nd(node: Node, args: list[Any], ex: GraphExecutor) -> list[Tensor]:
    """ONNX ScatterND. A model with a dynamic batch was probed at batch 1, so a constant data
    tensor and indices folded then hold one sample: larger batches run sample by sample."""
    data, indices, updates = args[0], args[1].to(torch.long), args[2]
    batch = int(updates.shape[0]) if updates.dim() else 1
    if (
        ex.graph.batch_size == 1
        and batch > 1
        and data.shape[0] == 1
        and indices.shape[0] == 1
        and bool((indices[..., 0] == 0).all())
    ):
        return [
            torch.cat(
                [_scatter(node, data, indices, updates[b : b + 1]) for b in range(batch)], dim=0
            )
        ]
    return [_scatter(node, data, indices, updates)]


def _scatter(node: Node, data: Tensor, indices: Tensor, updates: Tensor) -> Tensor:
    depth = indices.shape[-1]
    flat_index = indices.reshape(-1, depth)
    expected = tuple(indices.shape[:-1]) + tuple(data.shape[depth:])
    if tuple(updates.shape) != expected:
        raise UnsupportedOpError(
            f"node {node.name!r} (ScatterND): updates of shape {tuple(updates.shape)} do not "
            f"match indices {tuple(indices.shape)} on data {tuple(data.shape)}"
        )
    out = data.clone().to(updates.dtype) if data.is_floating_point() else data.clone()
    slices = updates.reshape(flat_index.shape[0], *data.shape[depth:])
    position = tuple(flat_index[:, axis] for axis in range(depth))
    reduction = node.attr("reduction", "none")
    if reduction == "none":
        out[position] = slices
    elif reduction == "add":
        out[position] = out[position] + slices
    elif reduction == "mul":
        out[position] = out[position] * slices
    elif reduction == "max":
        out[position] = torch.maximum(out[position], slices)
    else:
        out[position] = torch.minimum(out[position], slices)
    return out


def supported_ops() -> list[str]:
    return sorted(_OPS)
