"""Differential test of the float64 executor against onnxruntime, fuzzed over ops, attributes
and opset versions.

For every op of lipcert.graph.opsets that the executor runs (the fused-pattern ops aside) and
every version of it that lipcert implements, seeded random models of that op alone (random
shapes and attribute values, constants on either side) are built at an opset where that
version is in force. Each runs on a batch of several samples, in onnxruntime (float32, on the
file) and in GraphExecutor (float64, on the graph lipcert loaded). Ops exact in floating point
must agree exactly; the others within lipcert's own worst-case rounding allowance of the
float32 run (where the op has a rule) or a relative 1e-5 of the output's scale.

A version onnxruntime cannot run cannot be loaded by lipcert either (its probe fails); such
configurations are counted and must stay a small minority.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.errors import LipcertError, UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.graph.execute import supported_ops as executor_ops
from lipcert.graph.opsets import MIN_OPSET, SUPPORT
from lipcert.model import LoadOptions

BATCH = 3
CONFIGS = 6  # random configurations per op version

EXACT_OPS = frozenset(
    {
        "Relu", "Abs", "Neg", "Identity", "Sign", "Max", "Min", "Clip", "MaxPool",
        "GlobalMaxPool", "ReduceMax", "ReduceMin", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
        "Transpose", "DepthToSpace", "SpaceToDepth", "Dropout", "Slice", "Split", "Concat",
        "Pad", "Gather", "Expand", "Tile", "TopK", "Cast",
    }
)  # fmt: skip


@dataclass
class Spec:
    """One random model: its nodes, the input's sample shape, constants, and input range."""

    nodes: list[onnx.NodeProto]
    shape: tuple[int, ...]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    positive: bool = False  # feed inputs in (0.1, 2) (Sqrt, Pow)
    batch: int = BATCH  # 1 where the op merges the batch axis with others (run per sample)


Generator = Callable[[np.random.Generator, str, int], Spec]


def f32(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def i64(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _shape(rng: np.random.Generator, rank: int, low: int = 1, high: int = 5) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(low, high + 1, rank))


def _signed(rng: np.random.Generator, axis: int, rank: int, version: int) -> int:
    """The axis, sometimes counted from the end (which ONNX allows from version 11)."""
    return axis - rank if version >= 11 and rng.random() < 0.3 else axis


def _node(
    op: str, inputs: list[str], outputs: tuple[str, ...] = ("y",), **attrs: Any
) -> onnx.NodeProto:
    return helper.make_node(op, inputs, list(outputs), name=f"{op.lower()}_under_test", **attrs)


# --- generators ----------------------------------------------------------------------------


def gen_unary(rng: np.random.Generator, op: str, version: int) -> Spec:
    attrs: dict[str, object] = {}
    if op == "Gelu":
        attrs["approximate"] = str(rng.choice(["none", "tanh"]))
    elif op in ("LeakyRelu", "Elu", "Celu"):
        attrs["alpha"] = float(rng.uniform(0.05, 2.0))
    elif op == "Selu":
        attrs |= {"alpha": float(rng.uniform(0.5, 2)), "gamma": float(rng.uniform(0.5, 2))}
    elif op == "HardSigmoid":
        attrs |= {"alpha": float(rng.uniform(0.05, 1)), "beta": float(rng.uniform(-1, 1))}
    elif op == "Shrink":
        lambd = float(rng.uniform(0, 1))
        attrs |= {"lambd": lambd, "bias": lambd}
    if attrs and rng.random() < 0.25:
        attrs = {}  # the defaults
    shape = _shape(rng, int(rng.integers(1, 4)))
    if op == "Sigmoid":  # not at the output, where lipcert drops (or refuses) it: a Neg after it
        nodes = [_node(op, ["x"], ("s",)), helper.make_node("Neg", ["s"], ["y"], name="neg")]
        return Spec(nodes, shape)
    return Spec([_node(op, ["x"], **attrs)], shape, positive=op == "Sqrt")


def gen_clip(rng: np.random.Generator, op: str, version: int) -> Spec:
    low, high = sorted(rng.uniform(-1, 1, 2).tolist())
    use_low, use_high = rng.random() < 0.7, rng.random() < 0.7
    if version < 11:
        attrs = {**({"min": low} if use_low else {}), **({"max": high} if use_high else {})}
        return Spec([_node(op, ["x"], **attrs)], _shape(rng, 2))
    inputs = ["x", "lo" if use_low else "", "hi" if use_high else ""]
    constants = {"lo": f32(low), "hi": f32(high)}
    while inputs[-1] == "":
        inputs.pop()
    return Spec(
        [_node(op, inputs)], _shape(rng, 2), {k: v for k, v in constants.items() if k in inputs}
    )


def gen_prelu(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3)
    slope_shape = (shape[0], 1, 1) if rng.random() < 0.5 else shape[-1:]
    return Spec([_node(op, ["x", "s"])], shape, {"s": f32(rng.uniform(-2, 2, slope_shape))})


def _broadcastable(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int, ...]:
    tail = shape[len(shape) - int(rng.integers(0, len(shape) + 1)) :]
    return tuple(1 if rng.random() < 0.3 else d for d in tail)


def gen_binary(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, int(rng.integers(1, 4)))
    other = _broadcastable(rng, shape)
    value = rng.uniform(0.5, 2.0, other) * rng.choice([-1, 1], other)
    if op == "Pow":
        value = rng.choice([0.5, 2.0, 3.0, 1.5], other)
        return Spec([_node(op, ["x", "c"])], shape, {"c": f32(value)}, positive=True)
    if rng.random() < 0.3 and op != "Div":
        return Spec([_node(op, ["x", "x"])], shape)
    inputs = ["x", "c"] if rng.random() < 0.6 or op == "Div" else ["c", "x"]
    return Spec([_node(op, inputs)], shape, {"c": f32(value)})


def gen_variadic(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 2)
    inputs, constants = [], {}
    for i in range(int(rng.integers(1, 5))):
        if rng.random() < 0.6 or version < 8:
            inputs.append("x")
        else:
            constants[f"c{i}"] = f32(rng.normal(size=_broadcastable(rng, shape)))
            inputs.append(f"c{i}")
    if "x" not in inputs:
        inputs.append("x")
    return Spec([_node(op, inputs)], shape, constants)


def gen_cast(rng: np.random.Generator, op: str, version: int) -> Spec:
    return Spec(
        [_node(op, ["x"], to=int(rng.choice([TensorProto.FLOAT, TensorProto.DOUBLE])))],
        _shape(rng, 2),
    )


def gen_softmax(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(2, 5))
    shape = _shape(rng, rank - 1)
    attrs = (
        {}
        if rng.random() < 0.3
        else {"axis": _signed(rng, int(rng.integers(0, rank)), rank, version)}
    )
    # Not at the output, where lipcert drops (or refuses) it: a Neg after it
    nodes = [_node(op, ["x"], ("s",), **attrs), helper.make_node("Neg", ["s"], ["y"], name="neg")]
    return Spec(nodes, shape)


def gen_gemm(rng: np.random.Generator, op: str, version: int) -> Spec:
    m, n = (int(v) for v in rng.integers(1, 7, 2))
    trans_b = int(rng.integers(0, 2))
    attrs: dict[str, object] = {"transB": trans_b}
    if rng.random() < 0.5:
        attrs |= {"alpha": float(rng.uniform(-2, 2)), "beta": float(rng.uniform(-2, 2))}
    weight = rng.normal(size=(n, m) if trans_b else (m, n))
    inputs, constants = ["x", "w"], {"w": f32(weight)}
    if rng.random() < 0.7 or version < 11:  # C is required before opset 11
        inputs.append("b")
        constants["b"] = f32(rng.normal(size=(n,) if rng.random() < 0.7 else (1, n)))
    return Spec([_node(op, inputs, **attrs)], (m,), constants)


def gen_matmul(rng: np.random.Generator, op: str, version: int) -> Spec:
    k, n = (int(v) for v in rng.integers(1, 6, 2))
    stack = tuple(int(v) for v in rng.integers(1, 4, int(rng.integers(0, 2))))
    if rng.random() < 0.5:
        return Spec([_node(op, ["x", "w"])], (*stack, 2, k), {"w": f32(rng.normal(size=(k, n)))})
    return Spec([_node(op, ["w", "x"])], (*stack, k, 2), {"w": f32(rng.normal(size=(n, k)))})


def _window_attrs(
    rng: np.random.Generator,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    ceil: bool,
    dilate: bool,
) -> dict[str, object]:
    rank = len(kernel)
    attrs: dict[str, object] = {"kernel_shape": list(kernel)}
    if rng.random() < 0.6:
        attrs["strides"] = [int(s) for s in rng.integers(1, 3, rank)]
    if dilate and rng.random() < 0.4:
        attrs["dilations"] = [int(d) for d in rng.integers(1, 3, rank)]
    mode = rng.choice(["NOTSET", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"])
    if mode == "NOTSET":
        if rng.random() < 0.7:
            attrs["pads"] = [int(rng.integers(0, k)) for k in kernel for _ in (0,)] + [
                int(rng.integers(0, k)) for k in kernel
            ]
    else:
        attrs["auto_pad"] = str(mode)
    if ceil and rng.random() < 0.4:
        attrs["ceil_mode"] = 1
    return attrs


def gen_conv(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(1, 4))  # 1-D to 3-D
    groups = int(rng.choice([1, 1, 2]))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kernel = _shape(rng, rank, 1, 3)
    spatial = _shape(rng, rank, 3, 6 if rank < 3 else 4)
    attrs = _window_attrs(rng, spatial, kernel, ceil=False, dilate=True)
    if groups > 1:
        attrs["group"] = groups
    inputs, constants = ["x", "w"], {}
    if op == "Conv":
        constants["w"] = f32(rng.normal(size=(c_out, c_in // groups, *kernel)))
    else:
        constants["w"] = f32(rng.normal(size=(c_in, c_out // groups, *kernel)))
        strides = attrs.get("strides", [1] * rank)
        if rng.random() < 0.3:
            attrs["output_padding"] = [int(rng.integers(0, s)) for s in strides]  # type: ignore[attr-defined]
        if rng.random() < 0.2:
            attrs.pop("pads", None)
            attrs.pop("auto_pad", None)
            attrs["output_shape"] = [int(s * n) for s, n in zip(strides, spatial, strict=True)]  # type: ignore[call-overload]
    if rng.random() < 0.6:
        inputs.append("b")
        constants["b"] = f32(rng.normal(size=(c_out,)))
    return Spec([_node(op, inputs, **attrs)], (c_in, *spatial), constants)


def gen_batchnorm(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = (int(rng.integers(1, 4)), *_shape(rng, int(rng.integers(0, 3))))
    c = shape[0]
    constants = {
        "s": f32(rng.normal(size=c)),
        "b": f32(rng.normal(size=c)),
        "m": f32(rng.normal(size=c)),
        "v": f32(rng.uniform(0.1, 2, c)),
    }
    attrs = {"epsilon": float(rng.uniform(1e-5, 1e-2))} if rng.random() < 0.5 else {}
    return Spec([_node(op, ["x", "s", "b", "m", "v"], **attrs)], shape, constants)


def gen_pool(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(1, 4))  # 1-D to 3-D
    kernel = _shape(rng, rank, 1, 3)
    spatial = _shape(rng, rank, 3, 7 if rank < 3 else 4)
    dilate = (
        (op == "MaxPool" and version >= 10)
        or (op == "AveragePool" and version >= 19)
        or (op == "LpPool" and version >= 18)
    )
    ceil = (op in ("MaxPool", "AveragePool") and version >= 10) or (
        op == "LpPool" and version >= 18
    )
    attrs = _window_attrs(rng, spatial, kernel, ceil=ceil, dilate=dilate)
    pads = list(attrs.get("pads", []))  # type: ignore[call-overload]
    for axis, k in enumerate(kernel):  # pooling pads must be smaller than the kernel
        if pads:
            pads[axis] = min(pads[axis], k - 1)
            pads[axis + rank] = min(pads[axis + rank], k - 1)
    if pads:
        attrs["pads"] = pads
    if op == "AveragePool" and rng.random() < 0.5:
        attrs["count_include_pad"] = 1
    if op == "MaxPool" and version >= 8 and rng.random() < 0.3:
        attrs["storage_order"] = 1
    if op == "LpPool" and rng.random() < 0.7:
        attrs["p"] = int(rng.choice([1, 2, 3]))
    return Spec([_node(op, ["x"], **attrs)], (int(rng.integers(1, 3)), *spatial))


def gen_global_pool(rng: np.random.Generator, op: str, version: int) -> Spec:
    attrs = {"p": int(rng.choice([1, 2, 3]))} if op == "GlobalLpPool" and rng.random() < 0.7 else {}
    return Spec([_node(op, ["x"], **attrs)], (2, *_shape(rng, int(rng.integers(1, 3)), 1, 5)))


def gen_reduce(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(2, 5))
    shape = _shape(rng, rank - 1)
    attrs: dict[str, object] = {}
    if rng.random() < 0.5:
        attrs["keepdims"] = int(rng.integers(0, 2))
    axes_as_input = version >= (13 if op == "ReduceSum" else 18)
    choice = rng.random()
    axes = sorted(set(int(a) for a in rng.integers(1, rank, int(rng.integers(1, rank)))))
    axes = [_signed(rng, a, rank, version) for a in axes]
    inputs, constants = ["x"], {}
    if axes_as_input and rng.random() < 0.3:
        attrs["noop_with_empty_axes"] = 1
        if choice < 0.5:
            return Spec([_node(op, inputs, **attrs)], shape, positive=op == "ReduceLogSumExp")
    if axes_as_input:
        inputs.append("axes")
        constants["axes"] = i64(axes)
    else:
        attrs["axes"] = axes
    return Spec([_node(op, inputs, **attrs)], shape, constants)


def gen_reshape(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3)
    options = [
        [0, -1],
        [0, int(np.prod(shape))],
        [-1, *shape[::-1]],
        [0, shape[0], -1],
        [0, 0, 0, 1, shape[2]],
    ]
    target = options[int(rng.integers(len(options)))]
    attrs = {"allowzero": 0} if version >= 14 and rng.random() < 0.3 else {}
    return Spec([_node(op, ["x", "t"], **attrs)], shape, {"t": i64(target)})


def gen_flatten(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(2, 5))
    axis = int(rng.integers(1, rank + 1))
    spec = Spec([_node(op, ["x"], axis=axis)], _shape(rng, rank - 1))
    spec.batch = BATCH if axis == 1 else 1
    return spec


def gen_squeeze(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = tuple(1 if rng.random() < 0.5 else d for d in _shape(rng, 3, 2, 4))
    rank = len(shape) + 1
    if op == "Squeeze":
        shape = (1, *shape[1:])
        ones = [i + 1 for i, d in enumerate(shape) if d == 1]
        # Without axes every axis of size 1 goes, the batch's too at batch 1: not fuzzed.
        axes = [_signed(rng, a, rank, version) for a in ones if rng.random() < 0.7] or [1]
    else:
        added = int(rng.integers(1, 3))
        out_rank = rank + added
        axes = sorted(int(a) for a in rng.choice(np.arange(1, out_rank), added, replace=False))
        axes = [_signed(rng, a, out_rank, version) for a in axes]
    if version >= 13:
        return Spec([_node(op, ["x", "axes"])], shape, {"axes": i64(axes)})
    return Spec([_node(op, ["x"], axes=axes)], shape)


def gen_transpose(rng: np.random.Generator, op: str, version: int) -> Spec:
    rank = int(rng.integers(2, 5))
    perm = [0, *(int(p) + 1 for p in rng.permutation(rank - 1))]
    return Spec([_node(op, ["x"], perm=perm)], _shape(rng, rank - 1))


def gen_depth(rng: np.random.Generator, op: str, version: int) -> Spec:
    b = int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(1, 3, 2))
    if op == "DepthToSpace":
        attrs: dict[str, object] = {"blocksize": b}
        if version >= 11 and rng.random() < 0.6:
            attrs["mode"] = str(rng.choice(["DCR", "CRD"]))
        return Spec([_node(op, ["x"], **attrs)], (b * b * int(rng.integers(1, 3)), h, w))
    return Spec([_node(op, ["x"], blocksize=b)], (int(rng.integers(1, 3)), h * b, w * b))


def gen_dropout(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 2)
    if version < 12:
        return Spec([_node(op, ["x"], ratio=float(rng.uniform(0, 0.9)))], shape)
    if rng.random() < 0.5:
        return Spec(
            [_node(op, ["x", "r", "t"], seed=3)], shape, {"r": f32(0.5), "t": np.array(False)}
        )
    return Spec([_node(op, ["x"])], shape)


def gen_slice(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3, 2, 6)
    rank = len(shape) + 1
    axes = sorted(set(int(a) for a in rng.integers(1, rank, int(rng.integers(1, rank)))))
    starts, ends, steps = [], [], []
    for axis in axes:
        n = shape[axis - 1]
        step = int(rng.choice([1, 1, 2, -1, -2])) if version >= 10 else 1
        start = int(rng.integers(-n - 1, n + 2))
        end = int(rng.choice([int(rng.integers(-n - 1, n + 2)), 2**62, -(2**62)]))
        starts.append(start)
        ends.append(end)
        steps.append(step)
    signed = [_signed(rng, a, rank, version) for a in axes]
    if version < 10:
        attrs: dict[str, object] = {"starts": starts, "ends": ends}
        if rng.random() < 0.8 or axes != list(range(1, len(axes) + 1)):
            attrs["axes"] = signed
        else:  # no axes: starts and ends from axis 0 on
            attrs = {"starts": [0, *starts], "ends": [2**62, *ends]}
        return Spec([_node(op, ["x"], **attrs)], shape)
    inputs = ["x", "s", "e", "a", "p"]
    constants = {"s": i64(starts), "e": i64(ends), "a": i64(signed), "p": i64(steps)}
    if all(s == 1 for s in steps) and rng.random() < 0.5:
        inputs.pop()
        del constants["p"]
    return Spec([_node(op, inputs)], shape, constants)


def gen_split(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 2, 2, 6)
    axis = int(rng.integers(1, 3))
    n = shape[axis - 1]
    parts = int(rng.integers(1, min(n, 3) + 1))
    cuts = (
        sorted(int(c) for c in rng.choice(np.arange(1, n), parts - 1, replace=False))
        if parts > 1
        else []
    )
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    outputs = tuple(f"part{i}" for i in range(len(sizes)))
    attrs: dict[str, object] = {"axis": _signed(rng, axis, 3, version)}
    inputs, constants = ["x"], {}
    if version >= 18 and rng.random() < 0.5:
        attrs["num_outputs"] = len(sizes)
    elif version >= 13:
        inputs.append("sizes")
        constants["sizes"] = i64(sizes)
    else:
        attrs["split"] = sizes
    if "num_outputs" in attrs:  # equal parts, the last smaller
        size = -(-n // len(sizes))
        sizes = [min(size, n - i * size) for i in range(len(sizes))]
        if min(sizes) <= 0:
            attrs["num_outputs"] = 1
            outputs = ("part0",)
    nodes = [_node(op, inputs, outputs, **attrs)]
    nodes.append(helper.make_node("Concat", list(reversed(outputs)), ["y"], name="join", axis=axis))
    return Spec(nodes, shape, constants)


def gen_concat(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3)
    axis = int(rng.integers(1, 4))
    inputs = ["x"] * int(rng.integers(1, 4))
    return Spec([_node(op, inputs, axis=_signed(rng, axis, 4, version))], shape)


def gen_pad(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3, 2, 5)
    rank = len(shape) + 1
    modes = ["constant", "reflect", "edge"] + (["wrap"] if version >= 19 else [])
    mode = str(rng.choice(modes))
    amounts = [0] + [int(rng.integers(0, shape[a] if mode == "reflect" else 3)) for a in range(3)]
    after = [0] + [int(rng.integers(0, shape[a] if mode == "reflect" else 3)) for a in range(3)]
    if mode == "constant" and rng.random() < 0.3:
        amounts[1] = -min(1, shape[0] - 1)  # cropping
    value = float(rng.uniform(-3, 3))
    attrs: dict[str, object] = {} if mode == "constant" and rng.random() < 0.3 else {"mode": mode}
    if version < 11:
        attrs["pads"] = amounts + after
        if mode == "constant" and rng.random() < 0.8:
            attrs["value"] = value
        return Spec([_node(op, ["x"], **attrs)], shape)
    inputs = ["x", "p"]
    constants: dict[str, np.ndarray] = {"p": i64(amounts + after)}
    if mode == "constant" and rng.random() < 0.8:
        inputs.append("v")
        constants["v"] = f32(value)
    if version >= 18 and rng.random() < 0.5:
        axes = [a for a in range(1, rank) if amounts[a] or after[a]] or [1]
        constants["p"] = i64([amounts[a] for a in axes] + [after[a] for a in axes])
        constants["a"] = i64([_signed(rng, a, rank, version) for a in axes])
        inputs += [""] * (3 - len(inputs)) + ["a"]
    return Spec([_node(op, inputs, **attrs)], shape, constants)


def gen_gather(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 3, 2, 5)
    axis = int(rng.integers(1, 4))
    n = shape[axis - 1]
    low = -n if version >= 11 else 0
    indices = rng.integers(low, n, _shape(rng, int(rng.integers(0, 3)), 1, 3))
    return Spec(
        [_node(op, ["x", "i"], axis=_signed(rng, axis, 4, version))],
        shape,
        {"i": i64(indices)},
    )


def gen_expand_tile(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = tuple(1 if rng.random() < 0.5 else d for d in _shape(rng, 2, 2, 3))
    if op == "Expand":
        target = [1, *(int(rng.integers(2, 4)) if d == 1 else d for d in shape)]
        if rng.random() < 0.3:
            target = [int(rng.integers(1, 3)), *target]
            return Spec([_node(op, ["x", "t"])], shape, {"t": i64(target[1:])})
        return Spec([_node(op, ["x", "t"])], shape, {"t": i64(target)})
    repeats = [1, *(int(r) for r in rng.integers(1, 4, len(shape)))]
    return Spec([_node(op, ["x", "r"])], shape, {"r": i64(repeats)})


def gen_topk(rng: np.random.Generator, op: str, version: int) -> Spec:
    shape = _shape(rng, 2, 2, 6)
    axis = int(rng.integers(1, 3))
    k = int(rng.integers(1, shape[axis - 1] + 1))
    attrs: dict[str, object] = {"axis": _signed(rng, axis, 3, version)}
    if version >= 11:
        if rng.random() < 0.5:
            attrs["largest"] = int(rng.integers(0, 2))
        if rng.random() < 0.3:
            attrs["sorted"] = 1
    if version < 10:
        return Spec([_node(op, ["x"], ("y", "i"), k=k, **attrs)], shape)
    return Spec([_node(op, ["x", "k"], ("y", "i"), **attrs)], shape, {"k": i64([k])})


GENERATORS: dict[str, Generator] = {
    **dict.fromkeys(
        [
            "Relu", "Abs", "Neg", "Tanh", "Sigmoid", "Exp", "Sqrt", "Softplus", "Softsign", "Sin",
            "Cos", "Atan", "Asinh", "Erf", "Sign", "HardSwish", "Mish", "Identity", "Gelu",
            "LeakyRelu", "Elu", "Celu", "Selu", "HardSigmoid", "Shrink",
        ],
        gen_unary,
    ),
    "Clip": gen_clip,
    "PRelu": gen_prelu,
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Pow"], gen_binary),
    **dict.fromkeys(["Sum", "Mean", "Max", "Min"], gen_variadic),
    "Cast": gen_cast,
    "Softmax": gen_softmax,
    "LogSoftmax": gen_softmax,
    "Gemm": gen_gemm,
    "MatMul": gen_matmul,
    "Conv": gen_conv,
    "ConvTranspose": gen_conv,
    "BatchNormalization": gen_batchnorm,
    **dict.fromkeys(["AveragePool", "MaxPool", "LpPool"], gen_pool),
    **dict.fromkeys(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"], gen_global_pool),
    **dict.fromkeys(
        [
            "ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2",
            "ReduceLogSumExp",
        ],
        gen_reduce,
    ),
    "Reshape": gen_reshape,
    "Flatten": gen_flatten,
    "Squeeze": gen_squeeze,
    "Unsqueeze": gen_squeeze,
    "Transpose": gen_transpose,
    "DepthToSpace": gen_depth,
    "SpaceToDepth": gen_depth,
    "Dropout": gen_dropout,
    "Slice": gen_slice,
    "Split": gen_split,
    "Concat": gen_concat,
    "Pad": gen_pad,
    "Gather": gen_gather,
    "Expand": gen_expand_tile,
    "Tile": gen_expand_tile,
    "TopK": gen_topk,
}  # fmt: skip


def _opset_for(op: str, version: int) -> int:
    return max(version, MIN_OPSET, 7)


def _model(spec: Spec, opset: int) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *spec.shape])]
    outputs = [onnx.ValueInfoProto(name="y")]
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in spec.constants.items()]
    graph = helper.make_graph(spec.nodes, "fuzz", inputs, outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def _onnxruntime(model: onnx.ModelProto, x: np.ndarray, output: str = "y") -> np.ndarray:
    import onnxruntime as ort

    if output != "y":  # the front-end stepped over an output activation: compare its input
        model = onnx.ModelProto.FromString(model.SerializeToString())
        del model.graph.output[:]
        model.graph.output.append(onnx.ValueInfoProto(name=output))

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run([output], {"x": x})[0])


CASES = [
    pytest.param(op, version, id=f"{op}-{version}")
    for op in sorted(set(GENERATORS) & set(SUPPORT))
    for version in sorted(SUPPORT[op].versions)
    if _opset_for(op, version) >= version
]


def test_every_executor_op_is_fuzzed() -> None:
    from lipcert.graph.opsets import is_lipcert_op

    onnx_ops = {op for op in executor_ops() if not is_lipcert_op(op)}
    others = {"DFT", "Where", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal",
              "ScatterND", "And", "Or", "Xor", "Not"}  # fmt: skip
    assert onnx_ops - others <= set(GENERATORS), sorted(onnx_ops - others - set(GENERATORS))


@pytest.mark.parametrize(("op", "version"), CASES)
def test_executor_equals_onnxruntime(op: str, version: int) -> None:
    opset = _opset_for(op, version)
    compared, skipped = 0, []
    for index in range(CONFIGS):
        rng = np.random.default_rng(zlib.crc32(f"{op}-{version}-{index}".encode()))
        spec = GENERATORS[op](rng, op, version)
        model = _model(spec, opset)
        onnx.checker.check_model(model, full_check=True)
        if spec.positive:
            x = rng.uniform(0.1, 2.0, (spec.batch, *spec.shape)).astype(np.float32)
        else:
            x = rng.normal(size=(spec.batch, *spec.shape)).astype(np.float32)
        try:
            expected = _onnxruntime(model, x)
        except Exception as exc:  # onnxruntime has no kernel: lipcert's probe refuses it too
            skipped.append(f"onnxruntime: {str(exc).splitlines()[0][:100]}")
            continue
        try:
            loaded = load_from_proto(model, LoadOptions(), source="fuzz", fmt="onnx")
            executor = GraphExecutor(loaded.graph)
        except UnsupportedOpError as exc:
            skipped.append(f"refused: {exc}")  # one line, nothing is computed
            continue
        if loaded.graph.output_name != "y":
            expected = _onnxruntime(model, x, loaded.graph.output_name)
        with torch.no_grad():
            actual = executor(torch.as_tensor(x)).numpy()
        context = f"{op}-{version} config {index}: {spec.nodes[0]}"
        assert actual.shape == expected.shape, context
        compared += 1
        if op in EXACT_OPS:
            np.testing.assert_array_equal(actual.astype(expected.dtype), expected, err_msg=context)
            continue
        _assert_within_allowance(loaded.graph, x, actual, expected, context)
    # Most random configurations must really be compared, not refused or unrunnable.
    assert compared >= CONFIGS // 2, skipped
    if skipped:
        SKIPPED[f"{op}-{version}"] = skipped


SKIPPED: dict[str, list[str]] = {}


def _assert_within_allowance(graph, x, actual, expected, context: str) -> None:
    batch = x.shape[0]
    difference = np.linalg.norm((actual - expected.astype(np.float64)).reshape(batch, -1), axis=1)
    try:
        analysis = analyse(graph)
    except LipcertError:
        scale = max(float(np.abs(actual).max(initial=0.0)), 1.0)
        assert np.all(difference <= 1e-5 * scale * np.sqrt(actual[0].size)), (context, difference)
        return
    norms = np.linalg.norm(x.astype(np.float64).reshape(batch, -1), axis=1)
    allowance = analysis.spec_for_precision(FLOAT32_UNIT_ROUNDOFF).fp_allowance(norms)
    allowance = allowance + analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF).fp_allowance(norms)
    assert np.all(difference <= allowance), (context, difference, allowance)


# --- the rules on the same random models ---------------------------------------------------

RULE_POINTS = 2  # random points per configuration where the Jacobian is taken


@pytest.mark.parametrize(("op", "version"), CASES)
def test_rule_bound_holds_on_fuzzed_models(op: str, version: int) -> None:
    """Where lipcert bounds a random model, the bound is at least the norm of the Jacobian of
    the model (run by the executor, which the test above checks against onnxruntime) at
    random points: the exact norm for linear ops. Every attribute value the generators draw
    must be honoured by the rule as well as by the executor."""
    from lipcert.bounds.registry import supported_ops as rule_ops

    opset = _opset_for(op, version)
    bounded = 0
    for index in range(CONFIGS):
        rng = np.random.default_rng(zlib.crc32(f"{op}-{version}-{index}".encode()))
        spec = GENERATORS[op](rng, op, version)
        model = _model(spec, opset)
        try:
            graph = load_from_proto(model, LoadOptions(), source="fuzz", fmt="onnx").graph
            bound = analyse(graph).tensor_bounds[graph.output_name]
            executor = GraphExecutor(graph)
        except LipcertError:
            continue  # refused, naming the node
        bounded += 1
        low, high = (0.1, 2.0) if spec.positive else (-2.0, 2.0)
        for _ in range(RULE_POINTS):
            point = torch.as_tensor(rng.uniform(low, high, int(np.prod(spec.shape))))

            def per_sample(
                v: torch.Tensor, run: GraphExecutor = executor, s: Spec = spec
            ) -> torch.Tensor:
                return run(v.reshape(1, *s.shape)).reshape(-1)

            matrix = torch.autograd.functional.jacobian(per_sample, point, vectorize=True)
            values = np.linalg.svd(matrix.numpy(), compute_uv=False) if matrix.numel() else [0.0]
            assert values[0] <= bound * (1 + 1e-9), (
                f"{op}-{version} config {index}",
                values[0],
                bound,
            )
    if op in rule_ops():
        assert bounded > 0, f"no random {op}-{version} model was bounded"
