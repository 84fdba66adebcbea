"""Cases for the reference test of the rule table: small ONNX models and their ground truth.

Each case is a model whose data path is input -> [the op under test] -> output (a few cases
add a helper node before it, named in the case), with constant weights as float32
initializers, and a torch reference of the same function written here, in float64, without
lipcert's code. The test first checks the reference against onnxruntime on random inputs;
then the reference gives the explicit operator matrix (linear ops) or the Jacobians at random
and at constructed points (non-linear ops) whose largest singular values are the ground truth.

Pooling, convolution and padding geometry (auto_pad, ceil mode, the divisor of average
pooling) is written here from the ONNX specification, independently of
lipcert.graph.geometry; the check against onnxruntime is what makes it trustworthy.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

Tensor = torch.Tensor
Reference = Callable[[Tensor], Tensor]

OPSET = 18
IR_VERSION = 10


@dataclass(frozen=True)
class RuleCase:
    """One model, the op whose rule it exercises, and what the rule should claim.

    `exact`: the rule is expected to say its bound is exact (and it must then be within a
    tight tolerance of the ground truth). `max_ratio`: for an upper bound, how loose it may
    be. `points`: builds the constructed inputs (one sample each) where the supremum of the
    Jacobian norm is reached, for non-linear ops (built when a test asks, not at collection).
    """

    id: str
    op: str
    model: onnx.ModelProto
    reference: Reference
    input_shape: tuple[int, ...]
    linear: bool
    exact: bool
    points: Callable[[], Sequence[np.ndarray]] = tuple
    max_ratio: float | None = None
    input_scale: float = 1.0


# --- building models -------------------------------------------------------------------------


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def make_model(
    nodes: Sequence[onnx.NodeProto],
    input_shape: Sequence[int | str],
    initializers: dict[str, np.ndarray] | None = None,
    *,
    opset: int = OPSET,
    output: str = "y",
    batch: int | str = "N",
) -> onnx.ModelProto:
    """A model with one float input `x` of shape (batch, *input_shape) and one output."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *input_shape])]
    outputs = [onnx.ValueInfoProto(name=output)]  # its type comes from shape inference
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "case", inputs, outputs, tensors)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    # Fill in the output's type from shape inference (the checker wants one).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def node(
    op: str, inputs: Sequence[str], outputs: Sequence[str] = ("y",), **attrs: object
) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_node", **attrs)


def f32(value: np.ndarray | Sequence[float] | float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def i64(value: Sequence[int] | int) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def t64(value: np.ndarray) -> Tensor:
    """A float32 weight as the float64 tensor the reference computes with."""
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


# --- geometry from the ONNX specification ----------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """Explicit per-axis window geometry (the reference's own reading of the attributes)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    ceil_mode: bool = False

    def extent(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1

    def output_length(self, axis: int, n: int) -> int:
        span = n + self.begin[axis] + self.end[axis] - self.extent(axis)
        s = self.strides[axis]
        if not self.ceil_mode:
            return span // s + 1
        count = -(-span // s) + 1
        # ONNX (and PyTorch): a last window that would start in the end padding is dropped.
        if (count - 1) * s >= n + self.begin[axis]:
            count -= 1
        return count


def geometry(
    spatial: Sequence[int],
    kernel: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
) -> Geometry:
    rank = len(kernel)
    strides = tuple(strides or [1] * rank)
    dilations = tuple(dilations or [1] * rank)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            extra = total % 2
            half = total // 2
            # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning.
            first, last = (half, half + extra) if auto_pad == "SAME_UPPER" else (half + extra, half)
            begin.append(first)
            end.append(last)
        return Geometry(
            tuple(kernel), strides, dilations, tuple(begin), tuple(end), bool(ceil_mode)
        )
    if auto_pad == "VALID" or pads is None:
        zeros = (0,) * rank
        return Geometry(tuple(kernel), strides, dilations, zeros, zeros, bool(ceil_mode))
    return Geometry(
        tuple(kernel), strides, dilations, tuple(pads[:rank]), tuple(pads[rank:]), bool(ceil_mode)
    )


def torch_pads(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """F.pad's argument: (begin, end) pairs from the last axis to the first."""
    return [p for axis in reversed(range(len(begin))) for p in (begin[axis], end[axis])]


def pool_reference(
    kind: str,
    kernel: Sequence[int],
    *,
    count_include_pad: int = 0,
    p: float = 2.0,
    **window: object,
) -> Reference:
    """MaxPool, AveragePool or LpPool by enumerating the windows of each output.

    Output o of an axis reads positions o * s - pad_begin + t * d, t < k. Positions outside
    the input are skipped; average pooling divides by the count of positions inside the
    input, or, with count_include_pad, inside the padded range [-pad_begin, n + pad_end).
    """

    def apply(x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        geo = geometry(spatial, kernel, **window)  # type: ignore[arg-type]
        rank = len(spatial)
        flat: Tensor | None = None
        valid: Tensor | None = None
        padded: Tensor | None = None
        for axis, n in enumerate(spatial):
            out = geo.output_length(axis, n)
            taps = torch.arange(geo.kernel[axis]) * geo.dilations[axis]
            positions = (torch.arange(out) * geo.strides[axis] - geo.begin[axis])[:, None] + taps
            # (out, k) of this axis, broadcast to (out_0, .., out_r, k_0, .., k_r)
            shape = [1] * (2 * rank)
            shape[axis], shape[rank + axis] = positions.shape
            index = positions.clamp(0, n - 1).reshape(shape)
            inside = ((positions >= 0) & (positions < n)).reshape(shape)
            in_pads = ((positions >= -geo.begin[axis]) & (positions < n + geo.end[axis])).reshape(
                shape
            )
            flat = index if flat is None else flat * n + index
            valid = inside if valid is None else valid & inside
            padded = in_pads if padded is None else padded & in_pads
        assert flat is not None and valid is not None and padded is not None
        flat, valid = torch.broadcast_tensors(flat, valid)
        padded = torch.broadcast_to(padded, flat.shape)
        outputs = flat.shape[:rank]
        values = x.flatten(2)[:, :, flat.reshape(-1)].reshape(*x.shape[:2], *outputs, -1)
        valid = valid.reshape(*outputs, -1)
        padded = padded.reshape(*outputs, -1)
        if kind == "max":
            return values.masked_fill(~valid, -math.inf).amax(dim=-1)
        zeroed = values.masked_fill(~valid, 0.0)
        if kind == "avg":
            divisor = (padded if count_include_pad else valid).sum(dim=-1).to(x.dtype)
            return zeroed.sum(dim=-1) / divisor
        return zeroed.abs().pow(p).sum(dim=-1).pow(1.0 / p)

    return apply


def conv_reference(
    weight: np.ndarray,
    bias: np.ndarray | None,
    *,
    group: int = 1,
    **window: object,
) -> Reference:
    """ONNX Conv: explicit (or auto) zero padding, then PyTorch's cross-correlation."""
    w = t64(weight)
    b = None if bias is None else t64(bias)
    conv = F.conv1d if w.dim() == 3 else F.conv2d

    def apply(x: Tensor) -> Tensor:
        geo = geometry(tuple(x.shape[2:]), tuple(w.shape[2:]), **window)  # type: ignore[arg-type]
        padded = F.pad(x, torch_pads(geo.begin, geo.end))
        return conv(padded, w, b, stride=geo.strides, dilation=geo.dilations, groups=group)

    return apply


def conv_transpose_reference(
    weight: np.ndarray,
    *,
    strides: Sequence[int],
    pads: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    group: int = 1,
    output_shape: Sequence[int] | None = None,
) -> Reference:
    """ONNX ConvTranspose: the full transposed convolution, then cropped by the pads.

    With `output_shape` and no pads, the specification derives the pads: total = full size -
    output_shape, begin = total - total // 2, end = total // 2.
    """
    w = t64(weight)
    rank = w.dim() - 2
    transpose = F.conv_transpose1d if rank == 1 else F.conv_transpose2d
    dil = tuple(dilations or [1] * rank)

    def apply(x: Tensor) -> Tensor:
        extra = tuple(output_padding or [0] * rank)
        full_sizes = [
            (n - 1) * s + (k - 1) * d + 1 + e
            for n, s, k, d, e in zip(x.shape[2:], strides, w.shape[2:], dil, extra, strict=True)
        ]
        if output_shape is not None:
            totals = [f - o for f, o in zip(full_sizes, output_shape, strict=True)]
            begin = [t - t // 2 for t in totals]
            end = [t // 2 for t in totals]
        else:
            explicit = list(pads or [0] * (2 * rank))
            begin, end = explicit[:rank], explicit[rank:]
        # torch's output_padding must be < stride or dilation: add it as zeros after instead.
        full = transpose(x, w, None, stride=tuple(strides), dilation=dil, groups=group)
        full = F.pad(full, torch_pads([0] * rank, list(extra)))
        index = [slice(None), slice(None)]
        for axis in range(rank):
            index.append(slice(begin[axis], full.shape[2 + axis] - end[axis]))
        return full[tuple(index)]

    return apply


# --- case families ---------------------------------------------------------------------------

_WINDOW_KEYS = ("strides", "dilations", "pads", "auto_pad", "ceil_mode")


def _window_attrs(attrs: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in attrs.items() if k in _WINDOW_KEYS}


def gemm_case(
    case_id: str, n_in: int, n_out: int, *, trans_b: int = 0, alpha: float = 1.0, beta: float = 1.0
) -> RuleCase:
    rng = rng_for(case_id)
    weight = f32(rng.standard_normal((n_out, n_in) if trans_b else (n_in, n_out)))
    bias = f32(rng.standard_normal(n_out))
    model = make_model(
        [node("Gemm", ["x", "w", "b"], transB=trans_b, alpha=alpha, beta=beta)],
        [n_in],
        {"w": weight, "b": bias},
    )
    matrix = t64(weight.T if trans_b else weight)
    # ONNX float attributes are float32.
    alpha32, beta32 = float(np.float32(alpha)), float(np.float32(beta))

    def reference(x: Tensor) -> Tensor:
        return alpha32 * (x @ matrix) + beta32 * t64(bias)

    return RuleCase(case_id, "Gemm", model, reference, (n_in,), linear=True, exact=True)


def matmul_case(
    case_id: str,
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    *,
    weight_left: bool = False,
) -> RuleCase:
    weight = f32(rng_for(case_id).standard_normal(weight_shape))
    inputs = ["w", "x"] if weight_left else ["x", "w"]
    model = make_model([node("MatMul", inputs)], list(input_shape), {"w": weight})
    w = t64(weight)

    def reference(x: Tensor) -> Tensor:
        return torch.matmul(w, x) if weight_left else torch.matmul(x, w)

    return RuleCase(case_id, "MatMul", model, reference, input_shape, linear=True, exact=True)


def conv_case(
    case_id: str,
    c_in: int,
    c_out: int,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    group: int = 1,
    max_ratio: float | None = 1.15,
    **attrs: object,
) -> RuleCase:
    rng = rng_for(case_id)
    weight = f32(rng.standard_normal((c_out, c_in // group, *kernel)))
    bias = f32(rng.standard_normal(c_out))
    model = make_model(
        [node("Conv", ["x", "w", "b"], group=group, **attrs)],
        [c_in, *spatial],
        {"w": weight, "b": bias},
    )
    reference = conv_reference(weight, bias, group=group, **attrs)
    return RuleCase(
        case_id,
        "Conv",
        model,
        reference,
        (c_in, *spatial),
        linear=True,
        exact=False,
        max_ratio=max_ratio,
    )


def conv_transpose_case(
    case_id: str,
    c_in: int,
    c_out: int,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    group: int = 1,
    **attrs: object,
) -> RuleCase:
    rng = rng_for(case_id)
    weight = f32(rng.standard_normal((c_in, c_out // group, *kernel)))
    model = make_model(
        [node("ConvTranspose", ["x", "w"], group=group, **attrs)], [c_in, *spatial], {"w": weight}
    )
    reference = conv_transpose_reference(weight, group=group, **attrs)  # type: ignore[arg-type]
    return RuleCase(
        case_id,
        "ConvTranspose",
        model,
        reference,
        (c_in, *spatial),
        linear=True,
        exact=False,
        max_ratio=1.15,
    )


def pool_case(
    case_id: str,
    op: str,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    channels: int = 2,
    exact: bool = True,
    **attrs: object,
) -> RuleCase:
    kind = {"AveragePool": "avg", "MaxPool": "max", "LpPool": "lp"}[op]
    model = make_model([node(op, ["x"], kernel_shape=list(kernel), **attrs)], [channels, *spatial])
    reference = pool_reference(
        kind,
        kernel,
        count_include_pad=int(attrs.get("count_include_pad", 0)),  # type: ignore[call-overload]
        p=float(attrs.get("p", 2)),  # type: ignore[arg-type]
        **_window_attrs(attrs),
    )
    shape = (channels, *spatial)
    linear = op == "AveragePool"
    return RuleCase(
        case_id,
        op,
        model,
        reference,
        shape,
        linear=linear,
        exact=exact,
        points=lambda: bump_points(reference, shape),
    )


def bump_points(
    reference: Reference, shape: tuple[int, ...], count: int = 2
) -> tuple[np.ndarray, ...]:
    """Inputs of small noise with one position raised to 1: those that move the outputs most.

    For max pooling, a bump at a position held by m windows moves m outputs by its full
    height: the Jacobian there has norm sqrt(m), the supremum. For norm pooling with gains
    a_o per window, the supremum is the largest sqrt(sum of a_o^2 over the windows holding
    one position), reached there too.
    """
    size = math.prod(shape)
    base = torch.as_tensor(rng_for(f"bump{shape}").uniform(-1e-5, 1e-5, shape))
    bumps = base + torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    with torch.no_grad():
        moved = (reference(bumps) - reference(base[None])).reshape(size, -1).norm(dim=1)
    order = torch.argsort(moved, descending=True, stable=True)
    return tuple(bumps[int(i)].numpy() for i in order[:count])


def derivative_argmax(function: Reference, lo: float = -40.0, hi: float = 40.0) -> float:
    """Where |function'| is largest on [lo, hi]: a dense grid, then a finer one around its best."""
    for _ in range(3):
        grid = torch.linspace(lo, hi, 4_001, dtype=torch.float64, requires_grad=True)
        (slope,) = torch.autograd.grad(function(grid).sum(), grid)
        best = float(grid[int(slope.abs().argmax())].detach())
        step = (hi - lo) / 4_000
        lo, hi = best - step, best + step
    return best


def unary_case(
    case_id: str,
    op: str,
    function: Reference,
    *,
    attrs: dict[str, object] | None = None,
    extra_inputs: dict[str, np.ndarray] | None = None,
    shape: tuple[int, ...] = (2, 3, 4),
    exact: bool = True,
    opset: int = OPSET,
    linear: bool = False,
    constructed: bool = True,
    input_scale: float = 2.0,
    not_last: bool = False,
) -> RuleCase:
    """An element-wise op; its constructed point puts every element where |f'| is largest.

    `not_last` puts an Identity after the op: ops that are dropped at a model's output
    (Sigmoid, like Softmax) are bounded only inside a model.
    """
    extra = extra_inputs or {}
    nodes = [node(op, ["x", *extra], ["h" if not_last else "y"], **(attrs or {}))]
    if not_last:
        nodes.append(node("Identity", ["h"]))
    model = make_model(nodes, list(shape), extra, opset=opset)

    def points() -> tuple[np.ndarray, ...]:
        if not constructed or linear:
            return ()
        return (np.full(shape, derivative_argmax(function)),)

    return RuleCase(
        case_id,
        op,
        model,
        function,
        shape,
        linear=linear,
        exact=exact,
        points=points,
        input_scale=input_scale,
    )


def graph_case(
    case_id: str,
    op: str,
    nodes: Sequence[onnx.NodeProto],
    reference: Reference,
    shape: tuple[int, ...],
    *,
    initializers: dict[str, np.ndarray] | None = None,
    linear: bool,
    exact: bool,
    points: Callable[[], Sequence[np.ndarray]] = tuple,
    opset: int = OPSET,
    input_scale: float = 1.0,
) -> RuleCase:
    model = make_model(nodes, list(shape), initializers, opset=opset)
    return RuleCase(
        case_id,
        op,
        model,
        reference,
        shape,
        linear=linear,
        exact=exact,
        points=points,
        input_scale=input_scale,
    )


# --- linear layers ---------------------------------------------------------------------------


def linear_cases() -> list[RuleCase]:
    rng = rng_for("batchnorm")
    gamma = f32([1.5, -2.0, 0.3, 0.7])
    beta, mean = f32(rng.standard_normal(4)), f32(rng.standard_normal(4))
    var = f32(rng.uniform(0.2, 2.0, 4))

    def batchnorm(x: Tensor) -> Tensor:
        view = (1, -1, 1, 1)
        scale = t64(gamma) / torch.sqrt(t64(var) + float(np.float32(1e-3)))  # a float32 attribute
        return (x - t64(mean).reshape(view)) * scale.reshape(view) + t64(beta).reshape(view)

    return [
        gemm_case("gemm_8x5", 8, 5),
        gemm_case("gemm_transB_alpha_beta", 7, 3, trans_b=1, alpha=-0.7, beta=0.5),
        gemm_case("gemm_4x12", 4, 12),
        matmul_case("matmul_x_at_w", (6,), (6, 4)),
        matmul_case("matmul_w_at_x", (3, 4), (5, 3), weight_left=True),
        matmul_case("matmul_stacked_w", (3, 2, 4), (3, 4, 5)),
        matmul_case("matmul_vector_w", (6,), (6,)),
        matmul_case("matmul_x_broadcast_over_stacked_w", (1, 2, 4), (3, 4, 5)),
        conv_case("conv1d_k3_pad1", 2, 3, (9,), (3,), pads=[1, 1]),
        conv_case(
            "conv1d_k5_stride3_dilation2_pads2_0",
            2,
            2,
            (12,),
            (5,),
            strides=[3],
            dilations=[2],
            pads=[2, 0],
            max_ratio=None,
        ),
        conv_case("conv3x3_pad1", 2, 3, (6, 6), (3, 3), pads=[1, 1, 1, 1]),
        conv_case(
            "conv3x3_stride2_groups2_pad1",
            4,
            4,
            (8, 8),
            (3, 3),
            strides=[2, 2],
            group=2,
            pads=[1, 1, 1, 1],
        ),
        conv_case(
            "conv3x3_stride3_pads_0_1_2_0", 2, 2, (7, 7), (3, 3), strides=[3, 3], pads=[0, 1, 2, 0]
        ),
        conv_case("conv2x3_dilation2x1", 2, 2, (7, 6), (2, 3), dilations=[2, 1], pads=[1, 1, 1, 1]),
        conv_case(
            "conv3x3_same_upper_stride2",
            2,
            3,
            (7, 7),
            (3, 3),
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        conv_case(
            "conv4x4_same_lower_stride2",
            2,
            2,
            (7, 7),
            (4, 4),
            strides=[2, 2],
            auto_pad="SAME_LOWER",
        ),
        conv_case("conv2x2_same_upper", 2, 2, (5, 5), (2, 2), auto_pad="SAME_UPPER"),
        conv_case("conv3x3_valid_stride2", 2, 3, (7, 7), (3, 3), strides=[2, 2], auto_pad="VALID"),
        conv_case("conv1x1", 4, 3, (5, 5), (1, 1)),
        conv_case(
            "conv3x3_depthwise_groups3_pad1", 3, 3, (6, 6), (3, 3), group=3, pads=[1, 1, 1, 1]
        ),
        conv_case("conv3x3_on_3x3_map", 3, 4, (3, 3), (3, 3)),
        conv_transpose_case("convT1d_k3_stride2", 2, 3, (5,), (3,), strides=[2]),
        conv_transpose_case(
            "convT3x3_stride2_pad1_outpad1",
            2,
            2,
            (4, 4),
            (3, 3),
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        ),
        conv_transpose_case(
            "convT2x2_groups2_dilation2",
            4,
            2,
            (4, 4),
            (2, 2),
            strides=[1, 1],
            dilations=[2, 2],
            group=2,
        ),
        conv_transpose_case(
            "convT3x3_stride3_pads_1_0_0_2", 2, 2, (3, 4), (3, 3), strides=[3, 3], pads=[1, 0, 0, 2]
        ),
        conv_transpose_case(
            "convT1d_k3_output_shape_3", 1, 1, (5,), (3,), strides=[1], output_shape=[3]
        ),
        graph_case(
            "batchnorm_4ch",
            "BatchNormalization",
            [node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3)],
            batchnorm,
            (4, 2, 3),
            initializers={"g": gamma, "b": beta, "m": mean, "v": var},
            linear=True,
            exact=True,
        ),
    ]


def pooling_cases() -> list[RuleCase]:
    def reduce(
        op: str,
        axes: list[int],
        shape: tuple[int, ...],
        function: Reference,
        *,
        keepdims: int = 1,
        linear: bool,
        exact: bool = True,
        points: Callable[[], Sequence[np.ndarray]] = tuple,
    ) -> RuleCase:
        case_id = f"{op.lower()}_axes{''.join(map(str, axes))}"
        return graph_case(
            case_id,
            op,
            [node(op, ["x", "axes"], keepdims=keepdims)],
            function,
            shape,
            initializers={"axes": i64(axes)},
            linear=linear,
            exact=exact,
            points=points,
        )

    dominant = np.zeros((3, 4))
    dominant[:, 0] = 30.0
    return [
        pool_case("avgpool2x2_stride2", "AveragePool", (6, 6), (2, 2), strides=[2, 2]),
        pool_case("avgpool3x3_pad1_exclude_pad", "AveragePool", (5, 5), (3, 3), pads=[1, 1, 1, 1]),
        pool_case(
            "avgpool3x3_pad1_count_include_pad",
            "AveragePool",
            (5, 5),
            (3, 3),
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        pool_case(
            "avgpool3x3_stride2_ceil", "AveragePool", (6, 6), (3, 3), strides=[2, 2], ceil_mode=1
        ),
        pool_case(
            "avgpool3x3_stride2_ceil_pad1_count_include_pad",
            "AveragePool",
            (6, 6),
            (3, 3),
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
            count_include_pad=1,
        ),
        pool_case(
            "avgpool1d_k2_stride2_ceil_last_window_dropped",
            "AveragePool",
            (4,),
            (2,),
            strides=[2],
            pads=[0, 1],
            ceil_mode=1,
        ),
        pool_case(
            "avgpool1d_k3_stride2_pads_2_0", "AveragePool", (7,), (3,), strides=[2], pads=[2, 0]
        ),
        pool_case(
            "avgpool3x3_same_upper_stride2",
            "AveragePool",
            (6, 6),
            (3, 3),
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        pool_case("avgpool2x2_same_lower", "AveragePool", (5, 5), (2, 2), auto_pad="SAME_LOWER"),
        pool_case(
            "avgpool2x3_stride3x1_valid",
            "AveragePool",
            (7, 6),
            (2, 3),
            strides=[3, 1],
            auto_pad="VALID",
        ),
        pool_case("maxpool2x2_stride2", "MaxPool", (6, 6), (2, 2), strides=[2, 2]),
        pool_case("maxpool3x3_stride1_pad1", "MaxPool", (5, 5), (3, 3), pads=[1, 1, 1, 1]),
        pool_case(
            "maxpool3x3_stride2_ceil", "MaxPool", (6, 6), (3, 3), strides=[2, 2], ceil_mode=1
        ),
        pool_case("maxpool2x2_dilation2", "MaxPool", (6, 6), (2, 2), dilations=[2, 2]),
        pool_case(
            "maxpool3x3_stride2_pads_0_1_2_0",
            "MaxPool",
            (6, 6),
            (3, 3),
            strides=[2, 2],
            pads=[0, 1, 2, 0],
        ),
        pool_case(
            "maxpool3x2_stride3_valid", "MaxPool", (7, 6), (3, 2), strides=[3, 3], auto_pad="VALID"
        ),
        pool_case("maxpool1d_k3_stride1", "MaxPool", (8,), (3,)),
        pool_case(
            "maxpool2x2_dilation2_stride2_ceil",
            "MaxPool",
            (6, 7),
            (2, 2),
            dilations=[2, 2],
            strides=[2, 2],
            ceil_mode=1,
        ),
        pool_case(
            "maxpool3x3_same_upper_stride2",
            "MaxPool",
            (6, 6),
            (3, 3),
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        pool_case(
            "maxpool2x2_same_lower_stride1", "MaxPool", (5, 5), (2, 2), auto_pad="SAME_LOWER"
        ),
        pool_case("lppool2_3x3_stride1", "LpPool", (5, 5), (3, 3), p=2),
        pool_case("lppool3_2x2_stride1_pad1", "LpPool", (4, 4), (2, 2), p=3, pads=[1, 1, 1, 1]),
        pool_case(
            "lppool1_2x2_stride2", "LpPool", (4, 4), (2, 2), p=1, strides=[2, 2], exact=False
        ),
        graph_case(
            "globalavgpool2d",
            "GlobalAveragePool",
            [node("GlobalAveragePool", ["x"])],
            lambda x: x.mean(dim=(2, 3), keepdim=True),
            (2, 3, 4),
            linear=True,
            exact=True,
        ),
        graph_case(
            "globalavgpool1d",
            "GlobalAveragePool",
            [node("GlobalAveragePool", ["x"])],
            lambda x: x.mean(dim=2, keepdim=True),
            (3, 5),
            linear=True,
            exact=True,
        ),
        graph_case(
            "globalmaxpool",
            "GlobalMaxPool",
            [node("GlobalMaxPool", ["x"])],
            lambda x: x.amax(dim=(2, 3), keepdim=True),
            (2, 3, 4),
            linear=False,
            exact=True,
        ),
        graph_case(
            "globallppool2",
            "GlobalLpPool",
            [node("GlobalLpPool", ["x"], p=2)],
            lambda x: x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt(),
            (2, 3, 4),
            linear=False,
            exact=True,
        ),
        graph_case(
            "globallppool1",
            "GlobalLpPool",
            [node("GlobalLpPool", ["x"], p=1)],
            lambda x: x.abs().sum(dim=(2, 3), keepdim=True),
            (2, 3, 4),
            linear=False,
            exact=True,
        ),
        reduce(
            "ReduceMean", [2, 3], (2, 3, 4), lambda x: x.mean(dim=(2, 3), keepdim=True), linear=True
        ),
        reduce("ReduceSum", [1], (3, 4), lambda x: x.sum(dim=1, keepdim=True), linear=True),
        reduce("ReduceMax", [2], (3, 4), lambda x: x.amax(dim=2, keepdim=True), linear=False),
        reduce(
            "ReduceMin", [1, 2], (3, 4), lambda x: x.amin(dim=(1, 2), keepdim=True), linear=False
        ),
        reduce(
            "ReduceL2",
            [2],
            (3, 4),
            lambda x: x.pow(2).sum(dim=2, keepdim=True).sqrt(),
            linear=False,
        ),
        reduce("ReduceL1", [1], (3, 4), lambda x: x.abs().sum(dim=1), keepdims=0, linear=False),
        reduce(
            "ReduceLogSumExp",
            [2],
            (3, 4),
            lambda x: torch.logsumexp(x, dim=2, keepdim=True),
            linear=False,
            exact=False,
            points=lambda: (dominant,),
        ),
    ]


# --- element-wise ----------------------------------------------------------------------------

_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _softplus(x: Tensor) -> Tensor:
    return torch.logaddexp(x, torch.zeros_like(x))


def activation_cases() -> list[RuleCase]:
    slope = f32([0.1, -1.5, 3.0]).reshape(3, 1)
    low, high = f32(-0.5), f32(0.75)
    sqrt_2_over_pi = math.sqrt(2.0 / math.pi)
    return [
        unary_case("relu", "Relu", torch.relu),
        unary_case("abs", "Abs", torch.abs),
        unary_case("neg", "Neg", torch.neg, linear=True),
        unary_case("tanh", "Tanh", torch.tanh),
        unary_case("softplus", "Softplus", _softplus),
        unary_case("softsign", "Softsign", lambda x: x / (1 + x.abs())),
        unary_case("sigmoid", "Sigmoid", lambda x: 1 / (1 + torch.exp(-x)), not_last=True),
        unary_case("sin", "Sin", torch.sin),
        unary_case("cos", "Cos", torch.cos),
        unary_case("atan", "Atan", torch.atan),
        unary_case("asinh", "Asinh", torch.asinh),
        unary_case("erf", "Erf", torch.erf),
        unary_case(
            "gelu", "Gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0))), opset=20
        ),
        unary_case(
            "gelu_tanh",
            "Gelu",
            lambda x: 0.5 * x * (1 + torch.tanh(sqrt_2_over_pi * (x + 0.044715 * x**3))),
            attrs={"approximate": "tanh"},
            opset=20,
        ),
        unary_case("hardswish", "HardSwish", lambda x: x * torch.clamp(x / 6 + 0.5, 0, 1)),
        unary_case("mish", "Mish", lambda x: x * torch.tanh(_softplus(x))),
        unary_case(
            "leakyrelu_alpha0.1",
            "LeakyRelu",
            lambda x: torch.where(x >= 0, x, 0.1 * x),
            attrs={"alpha": 0.1},
        ),
        unary_case(
            "leakyrelu_alpha2.5",
            "LeakyRelu",
            lambda x: torch.where(x >= 0, x, 2.5 * x),
            attrs={"alpha": 2.5},
        ),
        unary_case(
            "prelu_per_channel",
            "PRelu",
            lambda x: torch.where(x >= 0, x, t64(slope) * x),
            extra_inputs={"slope": slope},
            constructed=False,
        ),
        unary_case(
            "elu_alpha1.5",
            "Elu",
            lambda x: torch.where(x > 0, x, 1.5 * torch.expm1(x)),
            attrs={"alpha": 1.5},
        ),
        unary_case(
            "elu_alpha0.5",
            "Elu",
            lambda x: torch.where(x > 0, x, 0.5 * torch.expm1(x)),
            attrs={"alpha": 0.5},
        ),
        unary_case(
            "celu_alpha2",
            "Celu",
            lambda x: torch.clamp_min(x, 0) + torch.clamp_max(2.0 * torch.expm1(x / 2.0), 0),
            attrs={"alpha": 2.0},
        ),
        unary_case(
            "selu",
            "Selu",
            lambda x: _SELU_GAMMA * torch.where(x > 0, x, _SELU_ALPHA * torch.expm1(x)),
        ),
        unary_case(
            "hardsigmoid_alpha0.2",
            "HardSigmoid",
            lambda x: torch.clamp(0.2 * x + 0.5, 0, 1),
            attrs={"alpha": 0.2, "beta": 0.5},
        ),
        unary_case(
            "hardsigmoid_alpha3",
            "HardSigmoid",
            lambda x: torch.clamp(3.0 * x - 1.0, 0, 1),
            attrs={"alpha": 3.0, "beta": -1.0},
        ),
        unary_case(
            "clip_min_max",
            "Clip",
            lambda x: torch.clamp(x, -0.5, 0.75),
            extra_inputs={"low": low, "high": high},
            input_scale=0.5,
        ),
        unary_case(
            "clip_min_only",
            "Clip",
            lambda x: torch.clamp_min(x, -0.5),
            extra_inputs={"low": low},
            input_scale=0.5,
        ),
        unary_case(
            "shrink_soft",
            "Shrink",
            lambda x: torch.where(x < -0.5, x + 0.5, torch.where(x > 0.5, x - 0.5, 0 * x)),
            attrs={"bias": 0.5, "lambd": 0.5},
        ),
        unary_case(
            "cast_to_float", "Cast", lambda x: x, attrs={"to": TensorProto.FLOAT}, linear=True
        ),
    ]


def arithmetic_cases() -> list[RuleCase]:
    rng = rng_for("arithmetic")
    per_channel = f32(rng.uniform(-3, 3, (3, 1, 1)))
    column = f32(rng.uniform(-2, 2, (3, 1)))
    divisor = f32([[0.5], [-4.0], [2.0]])
    offset = f32(rng.standard_normal((3, 4)))
    shape = (3, 2, 4)
    narrow = (1, 4)

    def data(
        op: str,
        case_id: str,
        inputs: list[str],
        function: Reference,
        *,
        input_shape: tuple[int, ...] = shape,
        linear: bool = True,
        exact: bool,
        constants: dict[str, np.ndarray] | None = None,
        before: Sequence[onnx.NodeProto] = (),
    ) -> RuleCase:
        nodes = [*before, node(op, inputs)]
        return graph_case(
            case_id,
            op,
            nodes,
            function,
            input_shape,
            initializers=constants,
            linear=linear,
            exact=exact,
        )

    neg = node("Neg", ["x"], ["minus_x"])
    return [
        data(
            "Mul",
            "mul_per_channel",
            ["x", "c"],
            lambda x: x * t64(per_channel),
            exact=True,
            constants={"c": per_channel},
        ),
        data(
            "Mul",
            "mul_broadcast_copies",
            ["c", "x"],
            lambda x: t64(column) * x,
            exact=True,
            input_shape=narrow,
            constants={"c": column},
        ),
        data(
            "Div",
            "div_per_row",
            ["x", "c"],
            lambda x: x / t64(divisor),
            exact=True,
            input_shape=narrow,
            constants={"c": divisor},
        ),
        data(
            "Add",
            "add_constant_broadcast_copies",
            ["x", "c"],
            lambda x: x + t64(offset),
            exact=True,
            input_shape=narrow,
            constants={"c": offset},
        ),
        data(
            "Sub",
            "sub_constant_minus_x",
            ["c", "x"],
            lambda x: t64(offset) - x,
            exact=True,
            input_shape=(3, 4),
            constants={"c": offset},
        ),
        data(
            "Sum",
            "sum_x_and_constant",
            ["x", "c"],
            lambda x: x + t64(offset),
            exact=True,
            input_shape=(3, 4),
            constants={"c": offset},
        ),
        data("Add", "add_x_x", ["x", "x"], lambda x: 2 * x, exact=False),
        data("Add", "add_x_neg_x", ["x", "minus_x"], lambda x: 0 * x, exact=False, before=[neg]),
        data("Sub", "sub_x_neg_x", ["x", "minus_x"], lambda x: 2 * x, exact=False, before=[neg]),
        data("Sum", "sum_x_x_x", ["x", "x", "x"], lambda x: 3 * x, exact=False),
        data("Mean", "mean_x_x", ["x", "x"], lambda x: x, exact=False),
        data(
            "Max",
            "max_x_constant",
            ["x", "c"],
            lambda x: torch.maximum(x, t64(offset)),
            input_shape=(3, 4),
            linear=False,
            exact=True,
            constants={"c": offset},
        ),
        data(
            "Min",
            "min_x_constant",
            ["c", "x"],
            lambda x: torch.minimum(x, t64(offset)),
            input_shape=(3, 4),
            linear=False,
            exact=True,
            constants={"c": offset},
        ),
        data(
            "Max",
            "max_x_neg_x",
            ["x", "minus_x"],
            torch.abs,
            linear=False,
            exact=False,
            before=[neg],
        ),
        data("Min", "min_x_x", ["x", "x"], lambda x: x, linear=False, exact=False),
    ]


# --- structure -------------------------------------------------------------------------------


def _source_index(i: int, n: int, mode: str) -> int:
    """The input position an ONNX Pad of this mode reads at output position i (-pad <= i)."""
    if 0 <= i < n:
        return i
    if mode == "edge":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect, the edge element not repeated
    j = i % period
    return j if j < n else period - j


def index_pad(pads: Sequence[tuple[int, int]], mode: str) -> Reference:
    def apply(x: Tensor) -> Tensor:
        for axis, (before, after) in enumerate(pads, start=1):
            n = x.shape[axis]
            index = torch.as_tensor([_source_index(i, n, mode) for i in range(-before, n + after)])
            x = x.index_select(axis, index)
        return x

    return apply


def structure_cases() -> list[RuleCase]:
    shape = (2, 3, 4)

    def case(
        case_id: str,
        op: str,
        function: Reference,
        *,
        input_shape: tuple[int, ...] = shape,
        attrs: dict[str, object] | None = None,
        constants: dict[str, np.ndarray] | None = None,
        outputs: Sequence[str] = ("y",),
        linear: bool = True,
        exact: bool = True,
        opset: int = OPSET,
    ) -> RuleCase:
        nodes = [node(op, ["x", *(constants or {})], outputs, **(attrs or {}))]
        return graph_case(
            case_id,
            op,
            nodes,
            function,
            input_shape,
            initializers=constants,
            linear=linear,
            exact=exact,
            opset=opset,
        )

    constant = f32(rng_for("concat").standard_normal((1, 3, 4)))
    # Concat does not broadcast: exporters expand a constant to the batch from Shape(x), which
    # the front-end folds at batch 1.
    concat_constant_nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Slice", ["x_shape", "zero", "one"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "tail"], ["target"], name="target", axis=0),
        helper.make_node("Expand", ["c", "target"], ["c_batch"], name="expand"),
        node("Concat", ["x", "c_batch"], axis=1),
    ]
    pads = [0, 1, 2, 0, 2, 1]  # (channel, row, column) begin, then end, batch axis excluded
    onnx_pads = i64([0, *pads[:3], 0, *pads[3:]])
    per_axis = list(zip(pads[:3], pads[3:], strict=True))
    return [
        case(
            "reshape_zero_minus1",
            "Reshape",
            lambda x: x.reshape(x.shape[0], 3, -1, 2),
            constants={"shape": i64([0, 3, -1, 2])},
        ),
        case("flatten_axis1", "Flatten", lambda x: x.reshape(x.shape[0], -1), attrs={"axis": 1}),
        case(
            "squeeze_axis2",
            "Squeeze",
            lambda x: x[:, :, 0],
            input_shape=(3, 1, 4),
            constants={"axes": i64([2])},
        ),
        case(
            "unsqueeze_axes1_last",
            "Unsqueeze",
            lambda x: x[:, None, ..., None],
            constants={"axes": i64([1, -1])},
        ),
        case(
            "transpose_0231",
            "Transpose",
            lambda x: x.permute(0, 2, 3, 1),
            attrs={"perm": [0, 2, 3, 1]},
        ),
        case(
            "depthtospace_dcr",
            "DepthToSpace",
            lambda x: x.reshape(-1, 2, 2, 2, 2, 3).permute(0, 3, 4, 1, 5, 2).reshape(-1, 2, 4, 6),
            input_shape=(8, 2, 3),
            attrs={"blocksize": 2, "mode": "DCR"},
        ),
        case(
            "depthtospace_crd",
            "DepthToSpace",
            lambda x: x.reshape(-1, 2, 2, 2, 2, 3).permute(0, 1, 4, 2, 5, 3).reshape(-1, 2, 4, 6),
            input_shape=(8, 2, 3),
            attrs={"blocksize": 2, "mode": "CRD"},
        ),
        case(
            "spacetodepth",
            "SpaceToDepth",
            lambda x: x.reshape(-1, 2, 2, 2, 3, 2).permute(0, 3, 5, 1, 2, 4).reshape(-1, 8, 2, 3),
            input_shape=(2, 4, 6),
            attrs={"blocksize": 2},
        ),
        case("identity", "Identity", lambda x: x),
        case("cast_to_double", "Cast", lambda x: x, attrs={"to": TensorProto.DOUBLE}),
        case("dropout_inference", "Dropout", lambda x: x, constants={"ratio": f32(0.3)}),
        case(
            "slice_steps_2_3",
            "Slice",
            lambda x: x[:, :, 1:3:2, ::3],
            constants={
                "starts": i64([1, 0]),
                "ends": i64([3, 100]),
                "axes": i64([2, 3]),
                "steps": i64([2, 3]),
            },
        ),
        case(
            "slice_negative_step",
            "Slice",
            lambda x: x[:, :, :, [3, 1]],
            constants={
                "starts": i64([-1]),
                "ends": i64([-100]),
                "axes": i64([-1]),
                "steps": i64([-2]),
            },
        ),
        case(
            "split_second_part",
            "Split",
            lambda x: x[:, :, 1:],
            input_shape=(2, 3),
            constants={"split": i64([1, 2])},
            attrs={"axis": 2},
            outputs=("first", "y"),
        ),
        case(
            "split_num_outputs_uneven",
            "Split",
            lambda x: x[:, 3:],
            input_shape=(5, 2),
            attrs={"axis": 1, "num_outputs": 2},
            outputs=("first", "y"),
        ),
        graph_case(
            "concat_x_constant_expanded_to_batch",
            "Concat",
            concat_constant_nodes,
            lambda x: torch.cat([x, t64(constant).expand(x.shape[0], 3, 4)], 1),
            (3, 4),
            initializers={"c": constant, "zero": i64([0]), "one": i64([1]), "tail": i64([3, 4])},
            linear=True,
            exact=True,
        ),
        graph_case(
            "concat_x_x",
            "Concat",
            [node("Concat", ["x", "x"], axis=2)],
            lambda x: torch.cat([x, x], 2),
            shape,
            linear=True,
            exact=False,
        ),
        case(
            "pad_constant",
            "Pad",
            lambda x: F.pad(x, torch_pads(pads[:3], pads[3:]), value=0.5),
            constants={"pads": onnx_pads, "value": f32(0.5)},
        ),
        case(
            "pad_constant_negative_crop",
            "Pad",
            lambda x: x[:, :, 1:, :-2],
            constants={"pads": i64([0, 0, -1, 0, 0, 0, 0, -2])},
        ),
        case(
            "pad_reflect",
            "Pad",
            index_pad(per_axis, "reflect"),
            input_shape=(3, 4, 5),
            attrs={"mode": "reflect"},
            constants={"pads": onnx_pads},
        ),
        case(
            "pad_edge",
            "Pad",
            index_pad(per_axis, "edge"),
            input_shape=(3, 4, 5),
            attrs={"mode": "edge"},
            constants={"pads": onnx_pads},
        ),
        case(
            "pad_wrap",
            "Pad",
            index_pad(per_axis, "wrap"),
            input_shape=(3, 4, 5),
            attrs={"mode": "wrap"},
            constants={"pads": onnx_pads},
            opset=19,
        ),
        case(
            "pad_edge_axes_input",
            "Pad",
            index_pad([(0, 0), (3, 1)], "edge"),
            input_shape=(2, 3),
            attrs={"mode": "edge"},
            constants={"pads": i64([3, 1]), "value": f32(0.0), "axes": i64([-1])},
        ),
        case(
            "gather_axis1_repeats",
            "Gather",
            lambda x: x[:, :, [0, 2, 2, 3, 2]],
            input_shape=(4, 4),
            constants={"indices": i64([0, 2, 2, -1, 2])},
            attrs={"axis": 2},
        ),
        case(
            "gather_scalar_index_axis2",
            "Gather",
            lambda x: x[:, :, 1],
            input_shape=(3, 4),
            constants={"indices": i64(1)},
            attrs={"axis": 2},
        ),
        case(
            "gather_2d_indices_axis1",
            "Gather",
            lambda x: x[:, [[0, 1], [1, 1]]],
            input_shape=(3, 2),
            constants={"indices": i64([[0, 1], [1, 1]])},
            attrs={"axis": 1},
        ),
        case(
            "expand_copies",
            "Expand",
            lambda x: x.expand(x.shape[0], 3, 4),
            input_shape=(1, 4),
            constants={"shape": i64([1, 3, 4])},
        ),
        case(
            "tile_2x3",
            "Tile",
            lambda x: x.repeat(1, 2, 3),
            input_shape=(2, 3),
            constants={"repeats": i64([1, 2, 3])},
        ),
        case(
            "topk_largest3",
            "TopK",
            lambda x: torch.topk(x, 3, dim=1).values,
            input_shape=(6,),
            constants={"k": i64([3])},
            attrs={"axis": 1},
            outputs=("y", "indices"),
            linear=False,
        ),
        case(
            "topk_smallest2_last_axis",
            "TopK",
            lambda x: torch.topk(x, 2, dim=-1, largest=False).values,
            input_shape=(2, 5),
            constants={"k": i64([2])},
            attrs={"axis": -1, "largest": 0},
            outputs=("y", "indices"),
            linear=False,
        ),
    ]


# --- fused patterns --------------------------------------------------------------------------


def group_sort_nodes(axis: int, *, source: str = "x") -> list[onnx.NodeProto]:
    """Concat(ReduceMin(x), ReduceMax(x)) over one axis: deel-torchlip's GroupSort export."""
    return [
        helper.make_node("ReduceMin", [source, "axis"], ["low"], name="reduce_min", keepdims=1),
        helper.make_node("ReduceMax", [source, "axis"], ["high"], name="reduce_max", keepdims=1),
        helper.make_node("Concat", ["low", "high"], ["y"], name="group_sort", axis=axis),
    ]


def group_sort_reference(axis: int) -> Reference:
    def apply(x: Tensor) -> Tensor:
        return torch.cat([x.amin(dim=axis, keepdim=True), x.amax(dim=axis, keepdim=True)], axis)

    return apply


def sorted_pairs_nodes(first: tuple[int, int], second: tuple[int, int]) -> list[onnx.NodeProto]:
    """Max and Min of two slices x[:, first] and x[:, second] along axis 1, concatenated."""
    return [
        helper.make_node("Slice", ["x", "a_start", "a_end", "one"], ["a"], name="slice_a"),
        helper.make_node("Slice", ["x", "b_start", "b_end", "one"], ["b"], name="slice_b"),
        helper.make_node("Max", ["a", "b"], ["high"], name="pair_max"),
        helper.make_node("Min", ["a", "b"], ["low"], name="pair_min"),
        helper.make_node("Concat", ["high", "low"], ["y"], name="sorted_pairs", axis=1),
    ]


def sorted_pairs_constants(
    first: tuple[int, int], second: tuple[int, int]
) -> dict[str, np.ndarray]:
    return {
        "a_start": i64([first[0]]),
        "a_end": i64([first[1]]),
        "b_start": i64([second[0]]),
        "b_end": i64([second[1]]),
        "one": i64([1]),
    }


def sorted_pairs_reference(first: tuple[int, int], second: tuple[int, int]) -> Reference:
    def apply(x: Tensor) -> Tensor:
        a, b = x[:, first[0] : first[1]], x[:, second[0] : second[1]]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1)

    return apply


def l2_pool_nodes(
    kernel: Sequence[int], *, scale: float | None, **attrs: object
) -> list[onnx.NodeProto]:
    """Pow 2 -> AveragePool -> [Mul c] -> Sqrt: L2-norm pooling as written by hand."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["square"], name="square"),
        helper.make_node(
            "AveragePool", ["square"], ["mean"], name="pool", kernel_shape=list(kernel), **attrs
        ),
    ]
    if scale is None:
        nodes.append(helper.make_node("Sqrt", ["mean"], ["y"], name="root"))
    else:
        nodes.append(helper.make_node("Mul", ["mean", "scale"], ["scaled"], name="scale"))
        nodes.append(helper.make_node("Sqrt", ["scaled"], ["y"], name="root"))
    return nodes


def l2_pool_case(
    case_id: str,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    scale: float | None = None,
    exact: bool = True,
    **attrs: object,
) -> RuleCase:
    constants = {"two": f32(2.0)}
    if scale is not None:
        constants["scale"] = f32(scale)
    average = pool_reference(
        "avg",
        kernel,
        count_include_pad=int(attrs.get("count_include_pad", 0)),  # type: ignore[call-overload]
        **_window_attrs(attrs),
    )

    def reference(x: Tensor) -> Tensor:
        return torch.sqrt(average(x * x) * (1.0 if scale is None else scale))

    shape = (2, *spatial)
    return graph_case(
        case_id,
        "L2NormPool",
        l2_pool_nodes(kernel, scale=scale, **attrs),
        reference,
        shape,
        initializers=constants,
        linear=False,
        exact=exact,
        points=lambda: bump_points(reference, shape),
    )


def circular_conv_case(
    case_id: str,
    c_in: int,
    c_out: int,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    *,
    exact: bool = True,
    group: int = 1,
    **attrs: object,
) -> RuleCase:
    rng = rng_for(case_id)
    weight = f32(rng.standard_normal((c_out, c_in // group, *kernel)))
    rank = len(spatial)
    dilations = list(attrs.get("dilations", [1] * rank))  # type: ignore[call-overload]
    extents = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    begin = [e // 2 for e in extents]
    end = [e - e // 2 for e in extents]
    pads = i64([0, 0, *begin, 0, 0, *end])
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["wrapped"], name="wrap", mode="wrap"),
        helper.make_node("Conv", ["wrapped", "w"], ["y"], name="conv", group=group, **attrs),
    ]
    conv = F.conv1d if rank == 1 else F.conv2d
    w = t64(weight)

    def reference(x: Tensor) -> Tensor:
        wrapped = F.pad(x, torch_pads(begin, end), mode="circular")
        return conv(
            wrapped,
            w,
            stride=attrs.get("strides", 1),
            dilation=dilations,  # type: ignore[arg-type]
            groups=group,
        )

    return graph_case(
        case_id,
        "CircularConv",
        nodes,
        reference,
        (c_in, *spatial),
        initializers={"pads": pads, "w": weight},
        linear=True,
        exact=exact,
        opset=19,
    )


def folded_batchnorm_case(case_id: str, layer: str) -> RuleCase:
    rng = rng_for(case_id)
    channels = 3
    gamma = f32([2.0, -0.5, 1.2])
    beta, mean = f32(rng.standard_normal(channels)), f32(rng.standard_normal(channels))
    var = f32(rng.uniform(0.3, 2.0, channels))
    bn_inputs = {"g": gamma, "beta": beta, "mean": mean, "var": var}
    scale = t64(gamma) / torch.sqrt(t64(var) + 1e-5)
    if layer == "Conv":
        weight = f32(rng.standard_normal((channels, 2, 3, 3)))
        bias = f32(rng.standard_normal(channels))
        first = helper.make_node("Conv", ["x", "w", "b"], ["z"], name="conv", pads=[1, 1, 1, 1])
        shape: tuple[int, ...] = (2, 5, 5)
        view: tuple[int, ...] = (1, -1, 1, 1)

        def layer_fn(x: Tensor) -> Tensor:
            return F.conv2d(x, t64(weight), t64(bias), padding=1)
    else:
        # transB and alpha: the fold scales the rows of the stored weight, then alpha.
        weight = f32(rng.standard_normal((channels, 5)))
        bias = f32(rng.standard_normal(channels))
        first = helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="gemm", transB=1, alpha=-1.5)
        shape, view = (5,), (1, -1)

        def layer_fn(x: Tensor) -> Tensor:
            return -1.5 * (x @ t64(weight).T) + t64(bias)

    bn = helper.make_node("BatchNormalization", ["z", "g", "beta", "mean", "var"], ["y"], name="bn")

    def reference(x: Tensor) -> Tensor:
        z = layer_fn(x)
        return (z - t64(mean).reshape(view)) * scale.reshape(view) + t64(beta).reshape(view)

    case = graph_case(
        case_id,
        layer,
        [first, bn],
        reference,
        shape,
        initializers={"w": weight, "b": bias, **bn_inputs},
        linear=True,
        exact=layer == "Gemm",
    )
    return case if layer == "Gemm" else dataclasses.replace(case, max_ratio=1.15)


def pattern_cases() -> list[RuleCase]:
    silu_nodes = [
        helper.make_node("Sigmoid", ["x"], ["gate"], name="gate"),
        helper.make_node("Mul", ["x", "gate"], ["y"], name="silu"),
    ]
    max_min_nodes = [
        helper.make_node("Relu", ["x"], ["positive"], name="relu_pos"),
        helper.make_node("Neg", ["x"], ["minus_x"], name="neg"),
        helper.make_node("Relu", ["minus_x"], ["negative"], name="relu_neg"),
        helper.make_node("Concat", ["positive", "negative"], ["y"], name="max_min", axis=1),
    ]
    split_nodes = [
        helper.make_node("Split", ["x", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Max", ["a", "b"], ["high"], name="pair_max"),
        helper.make_node("Min", ["a", "b"], ["low"], name="pair_min"),
        helper.make_node("Concat", ["low", "high"], ["y"], name="sorted_pairs", axis=1),
    ]

    def split_reference(x: Tensor) -> Tensor:
        a, b = x[:, :2], x[:, 2:]
        return torch.cat([torch.minimum(a, b), torch.maximum(a, b)], 1)

    def silu(x: Tensor) -> Tensor:
        return x / (1 + torch.exp(-x))

    return [
        graph_case(
            "groupsort_pairs_axis1",
            "GroupSort",
            group_sort_nodes(1),
            group_sort_reference(1),
            (2, 3),
            initializers={"axis": i64([1])},
            linear=False,
            exact=True,
            input_scale=2.0,
        ),
        graph_case(
            "groupsort_groups_of_3_axis2",
            "GroupSort",
            group_sort_nodes(2),
            group_sort_reference(2),
            (4, 3),
            initializers={"axis": i64([2])},
            linear=False,
            exact=True,
            input_scale=2.0,
        ),
        # Min and max over a group of one element copy it: not fused, bounded by the
        # Concat of two 1-Lipschitz branches (sqrt(2)), which is exact here.
        graph_case(
            "groupsort_group_of_one",
            "Concat",
            group_sort_nodes(1),
            group_sort_reference(1),
            (1, 4),
            initializers={"axis": i64([1])},
            linear=False,
            exact=False,
        ),
        graph_case(
            "groupsort_disjoint_slices",
            "GroupSort",
            sorted_pairs_nodes((0, 2), (2, 4)),
            sorted_pairs_reference((0, 2), (2, 4)),
            (4, 3),
            initializers=sorted_pairs_constants((0, 2), (2, 4)),
            linear=False,
            exact=True,
        ),
        graph_case(
            "groupsort_split_halves",
            "GroupSort",
            split_nodes,
            split_reference,
            (4, 3),
            initializers={"halves": i64([2, 2])},
            linear=False,
            exact=True,
        ),
        graph_case(
            "maxmin_relu_neg",
            "MaxMin",
            max_min_nodes,
            lambda x: torch.cat([torch.relu(x), torch.relu(-x)], 1),
            (3, 4),
            linear=False,
            exact=True,
        ),
        graph_case(
            "silu_x_sigmoid_x",
            "SiLU",
            silu_nodes,
            silu,
            (2, 3),
            linear=False,
            exact=True,
            points=lambda: (np.full((2, 3), derivative_argmax(silu)),),
        ),
        l2_pool_case("l2pool2x2_stride2_scaled", (6, 6), (2, 2), strides=[2, 2], scale=4.0),
        l2_pool_case("l2pool2x2_stride2", (6, 6), (2, 2), strides=[2, 2]),
        l2_pool_case("l2pool3x3_stride1_overlap", (5, 5), (3, 3), scale=9.0),
        l2_pool_case(
            "l2pool3x3_pad1_count_include_pad",
            (5, 5),
            (3, 3),
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        # Windows with fewer elements than the kernel: an upper bound, not exact.
        l2_pool_case(
            "l2pool3x3_pad1_exclude_pad", (5, 5), (3, 3), pads=[1, 1, 1, 1], scale=9.0, exact=False
        ),
        l2_pool_case(
            "l2pool3x3_stride2_ceil", (6, 6), (3, 3), strides=[2, 2], ceil_mode=1, exact=False
        ),
        circular_conv_case("circular_conv3x3", 2, 3, (5, 5), (3, 3)),
        circular_conv_case("circular_conv3x3_stride2", 2, 2, (6, 6), (3, 3), strides=[2, 2]),
        circular_conv_case("circular_conv3x3_stride3", 2, 2, (6, 6), (3, 3), strides=[3, 3]),
        circular_conv_case(
            "circular_conv3x3_stride2_odd_map", 2, 2, (7, 6), (3, 3), strides=[2, 2], exact=False
        ),
        circular_conv_case("circular_conv1d_k3_dilation2", 2, 2, (8,), (3,), dilations=[2]),
        circular_conv_case(
            "circular_conv2x2_asymmetric_wrap_groups2", 4, 2, (5, 4), (2, 2), group=2
        ),
        folded_batchnorm_case("conv_batchnorm_folded", "Conv"),
        folded_batchnorm_case("gemm_batchnorm_folded", "Gemm"),
    ]


def affine_block_cases() -> list[RuleCase]:
    """AffineBlock (lipcert.graph.affine_blocks), DFT, and the TorchScript circular padding."""
    rng = rng_for("affine_blocks")
    w = f32(rng.standard_normal((3, 3, 3, 3)) * 0.3)
    w64 = t64(w)
    residual = graph_case(
        "affine_block_residual_conv",
        "AffineBlock",
        [
            helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["x", "h"], ["y"], name="add"),
        ],
        lambda x: x + F.conv2d(x, w64, padding=1),
        (3, 5, 5),
        initializers={"w": w},
        linear=True,
        exact=True,
    )
    forward = graph_case(
        "dft_onesided_forward",
        "DFT",
        [node("DFT", ["x"], axis=2, onesided=1)],
        lambda x: torch.view_as_real(torch.fft.rfft(x[..., 0], dim=2)),
        (2, 7, 1),
        linear=True,
        exact=True,
        opset=18,
    )
    inverse = graph_case(
        "dft_inverse_complex",
        "DFT",
        [node("DFT", ["x"], axis=1, inverse=1)],
        lambda x: torch.view_as_real(torch.fft.ifft(torch.view_as_complex(x), dim=1)),
        (6, 3, 2),
        linear=True,
        exact=True,
        opset=18,
    )
    irfft = graph_case(
        "dft_inverse_onesided_length6",
        "DFT",
        [node("DFT", ["x", "n"], axis=2, inverse=1, onesided=1)],
        lambda x: torch.fft.irfft(torch.view_as_complex(x), n=6, dim=2)[..., None],
        (2, 4, 2),
        initializers={"n": i64(6)},
        linear=True,
        exact=True,
        opset=18,
    )
    # torch.onnx.export (TorchScript) writes circular padding as Slice + Concat per axis.
    kernel = f32(rng.standard_normal((2, 2, 3, 3)))
    sliced = [
        helper.make_node("Slice", ["x", "m1", "big", "a2"], ["top"], name="top"),
        helper.make_node("Slice", ["x", "zero", "one", "a2"], ["bottom"], name="bottom"),
        helper.make_node("Concat", ["top", "x", "bottom"], ["rows"], name="rows", axis=2),
        helper.make_node("Slice", ["rows", "m1", "big", "a3"], ["left"], name="left"),
        helper.make_node("Slice", ["rows", "zero", "one", "a3"], ["right"], name="right"),
        helper.make_node("Concat", ["left", "rows", "right"], ["wrapped"], name="cols", axis=3),
        helper.make_node("Conv", ["wrapped", "k"], ["y"], name="conv"),
    ]
    k64 = t64(kernel)
    circular = graph_case(
        "circular_conv_sliced_padding",
        "CircularConv",
        sliced,
        lambda x: F.conv2d(F.pad(x, [1, 1, 1, 1], mode="circular"), k64),
        (2, 5, 4),
        initializers={
            "k": kernel,
            "m1": i64([-1]),
            "big": i64([2**62]),
            "zero": i64([0]),
            "one": i64([1]),
            "a2": i64([2]),
            "a3": i64([3]),
        },
        linear=True,
        exact=True,
    )
    return [residual, forward, inverse, irfft, circular]


def all_cases() -> list[RuleCase]:
    return [
        *linear_cases(),
        *pooling_cases(),
        *activation_cases(),
        *arithmetic_cases(),
        *structure_cases(),
        *pattern_cases(),
        *affine_block_cases(),
        *fourier_sandwich_cases(),
        *nonlinear_block_cases(),
    ]


# --- blocks that are Lipschitz as a whole (lipcert.graph.residual_blocks, select_patterns) ----


def fourier_sandwich_cases() -> list[RuleCase]:
    """FourierSandwich (lipcert.graph.fourier_sandwich): LBDN's conv Sandwich in 1-D, written
    as ONNX ops: rfft, one complex matrix per bin on (real, imaginary) pairs, irfft, a bias,
    ReLU, and the same again; the matrices from a Cayley transform per bin (real on the
    self-conjugate bins 0 and n / 2), W1 = sqrt2 Psi^-1 B, W2 = sqrt2 A^H Psi."""
    rng = rng_for("fourier_sandwich")
    channels, n = 2, 6
    bins = n // 2 + 1
    psi = rng.standard_normal(channels) * 0.3
    first = np.zeros((bins, channels, channels), complex)
    second = np.zeros((bins, channels, channels), complex)
    for k in range(bins):
        tall = rng.standard_normal((2 * channels, channels)) * 0.5
        if 0 < k < n / 2:
            tall = tall + 1j * rng.standard_normal((2 * channels, channels)) * 0.5
        u, v = tall[:channels], tall[channels:]
        a = u - u.conj().T + v.conj().T @ v
        inverse = np.linalg.inv(np.eye(channels) + a)
        q = np.concatenate([inverse @ (np.eye(channels) - a), -2 * v @ inverse]).T
        first[k] = np.sqrt(2) * np.exp(-psi)[:, None] * q[:, channels:]
        second[k] = np.sqrt(2) * q[:, :channels].conj().T * np.exp(psi)[None, :]
    bias = f32(rng.standard_normal((channels, 1)) * 0.1)

    def real_form(symbol: np.ndarray) -> np.ndarray:
        """Per bin, the transpose of [[Re Q, -Im Q], [Im Q, Re Q]] (a row vector times it)."""
        re, im = symbol.real, symbol.imag
        full = np.concatenate(
            [np.concatenate([re, -im], axis=2), np.concatenate([im, re], axis=2)], axis=1
        )
        return f32(np.swapaxes(full, 1, 2))

    def half(tag: str, source: str, target: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Unsqueeze", [source, "last"], [f"{tag}u"], name=f"{tag}u"),
            helper.make_node(
                "DFT", [f"{tag}u", "n"], [f"{tag}s"], name=f"{tag}f", axis=2, onesided=1
            ),
            helper.make_node(
                "Transpose", [f"{tag}s"], [f"{tag}t"], name=f"{tag}t", perm=[2, 0, 3, 1]
            ),
            helper.make_node("Reshape", [f"{tag}t", "flat"], [f"{tag}r"], name=f"{tag}r"),
            helper.make_node("MatMul", [f"{tag}r", f"{tag}m"], [f"{tag}p"], name=f"{tag}p"),
            helper.make_node("Reshape", [f"{tag}p", "split"], [f"{tag}q"], name=f"{tag}q"),
            helper.make_node(
                "Transpose", [f"{tag}q"], [f"{tag}b"], name=f"{tag}b", perm=[1, 3, 0, 2]
            ),
            helper.make_node(
                "DFT", [f"{tag}b", "n"], [f"{tag}i"], name=f"{tag}i", axis=2, inverse=1, onesided=1
            ),
            helper.make_node("Squeeze", [f"{tag}i", "last"], [target], name=f"{tag}z"),
        ]

    nodes = [
        *half("a", "x", "h0"),
        helper.make_node("Add", ["h0", "bias"], ["h1"], name="bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        *half("b", "h2", "y"),
    ]

    def reference(x: Tensor) -> Tensor:
        def apply(symbol: np.ndarray, signal: Tensor) -> Tensor:
            spectrum = torch.fft.rfft(signal, dim=2)
            w = torch.as_tensor(real_form(symbol).astype(np.float64))  # (bins, 2C, 2C)
            pairs = torch.cat([spectrum.real, spectrum.imag], dim=1)  # (B, 2C, bins)
            mixed = torch.einsum("bjk,kjo->bok", pairs, w)
            out = torch.complex(mixed[:, :channels], mixed[:, channels:])
            return torch.fft.irfft(out, n=n, dim=2)

        hidden = torch.relu(apply(first, x) + t64(bias))
        return apply(second, hidden)

    return [
        graph_case(
            "fourier_sandwich_lbdn_1d",
            "FourierSandwich",
            nodes,
            reference,
            (channels, n),
            initializers={
                "last": i64([-1]),
                "n": i64(n),
                "flat": i64([bins, -1, 2 * channels]),
                "split": i64([bins, -1, 2, channels]),
                "am": real_form(first),
                "bm": real_form(second),
                "bias": bias,
            },
            linear=False,
            exact=False,
            opset=18,
        )
    ]


def nonlinear_block_cases() -> list[RuleCase]:
    """SLL blocks (dense, conv), a Sandwich, ScatterND, Where selects and a piecewise select."""
    rng = np.random.default_rng(10)
    w = f32(rng.normal(size=(6, 5)) / 2)
    t = f32(rng.uniform(0.1, 0.5, size=6))
    sll_dense = [
        helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="first", transB=1),
        helper.make_node("Relu", ["z"], ["r"], name="act"),
        helper.make_node("Mul", ["r", "t"], ["h"], name="scale"),
        helper.make_node("Gemm", ["h", "w"], ["back"], name="second"),
        helper.make_node("Mul", ["back", "two"], ["branch"], name="twice"),
        helper.make_node("Sub", ["x", "branch"], ["y"], name="sll"),
    ]
    b = f32(rng.normal(size=6) / 4)
    wt, tt, bt = (torch.as_tensor(v, dtype=torch.float64) for v in (w, t, b))

    def sll_dense_reference(x: Tensor) -> Tensor:
        return x - 2 * (torch.relu(x @ wt.T + bt) * tt) @ wt

    k = f32(rng.normal(size=(3, 2, 3, 3)) / 3)
    tc = f32(rng.uniform(0.05, 0.3, size=(1, 3, 1, 1)))
    sll_conv = [
        helper.make_node("Conv", ["x", "k"], ["z"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["z"], ["r"], name="act"),
        helper.make_node("Mul", ["tc", "r"], ["h"], name="scale"),
        helper.make_node("ConvTranspose", ["h", "k"], ["back"], name="second", pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["x", "back"], ["y"], name="sll"),
    ]
    kt, tct = (torch.as_tensor(v, dtype=torch.float64) for v in (k, tc))

    def sll_conv_reference(x: Tensor) -> Tensor:
        h = torch.relu(F.conv2d(x, kt, padding=1)) * tct
        return x - F.conv_transpose2d(h, kt, padding=1)

    w1, w2 = f32(rng.normal(size=(4, 5))), f32(rng.normal(size=(3, 4)))
    pre, post = f32(rng.uniform(0.5, 2, size=4)), f32(rng.uniform(0.5, 2, size=4))
    sandwich = [
        helper.make_node("Gemm", ["x", "w1"], ["z"], name="first", transB=1),
        helper.make_node("Mul", ["z", "pre"], ["zs"], name="pre_scale"),
        helper.make_node("Tanh", ["zs"], ["a"], name="act"),
        helper.make_node("Mul", ["a", "post"], ["h"], name="post_scale"),
        helper.make_node("MatMul", ["h", "w2t"], ["y"], name="second"),
    ]
    w1t, w2tt, pret, postt = (torch.as_tensor(v, dtype=torch.float64) for v in (w1, w2, pre, post))

    def sandwich_reference(x: Tensor) -> Tensor:
        return (torch.tanh((x @ w1t.T) * pret) * postt) @ w2tt.T

    scatter = [
        helper.make_node("Transpose", ["x"], ["rows"], name="rows", perm=[1, 0, 2]),
        helper.make_node("Slice", ["rows", "s0", "s1", "s_axis"], ["head"], name="head"),
        helper.make_node("Neg", ["head"], ["updates"], name="negate"),
        helper.make_node("ScatterND", ["rows", "idx", "updates"], ["written"], name="scatter"),
        helper.make_node("Transpose", ["written"], ["y"], name="back", perm=[1, 0, 2]),
    ]

    def scatter_reference(x: Tensor) -> Tensor:
        out = x.clone()
        out[:, 1], out[:, 3] = -x[:, 0], -x[:, 1]
        return out

    where_max = [
        helper.make_node("Greater", ["x", "c"], ["above"], name="above"),
        helper.make_node("Where", ["above", "x", "c"], ["y"], name="where_max"),
    ]
    where_min = [
        helper.make_node("LessOrEqual", ["c", "x"], ["below"], name="below"),
        helper.make_node("Where", ["below", "c", "x"], ["y"], name="where_min"),
    ]
    theta = f32(np.sort(rng.normal(size=(2, 4)), axis=0))
    n_activation = [
        helper.make_node("Less", ["x", "t0"], ["below"], name="below"),
        helper.make_node("Sub", ["x", "two_t0"], ["line1"], name="line1"),
        helper.make_node("Neg", ["x"], ["line2"], name="line2"),
        helper.make_node("Where", ["below", "line1", "line2"], ["piece"], name="piece"),
        helper.make_node("GreaterOrEqual", ["x", "t1"], ["upper"], name="upper"),
        helper.make_node("Sub", ["x", "two_t1"], ["line3"], name="line3"),
        helper.make_node("Where", ["upper", "line3", "piece"], ["y"], name="n_activation"),
    ]
    t0, t1 = (torch.as_tensor(v, dtype=torch.float64) for v in theta)

    def n_reference(x: Tensor) -> Tensor:
        piece = torch.where(x < t0, x - 2 * t0, -x)
        return torch.where(x >= t1, x - 2 * t1, piece)

    # The Householder activation as torch exports it (lipcert.graph.householder): pairs
    # (x_i, y_i) of the two halves, kept where x sin(t/2) - y cos(t/2) <= 0, else reflected.
    angle = rng.uniform(0, 2 * np.pi, size=(1, 3))
    hh_init = {
        "hs": f32(np.sin(angle / 2)),
        "hc": f32(np.cos(angle / 2)),
        "rc": f32(np.cos(angle)),
        "rs": f32(np.sin(angle)),
        "zero": f32(0.0),
    }
    householder = [
        helper.make_node("Split", ["x"], ["hx", "hy"], name="halves", axis=1, num_outputs=2),
        helper.make_node("Mul", ["hx", "hs"], ["s1"], name="s1"),
        helper.make_node("Mul", ["hy", "hc"], ["s2"], name="s2"),
        helper.make_node("Sub", ["s1", "s2"], ["sel"], name="selector"),
        helper.make_node("Mul", ["hx", "rc"], ["a1"], name="a1"),
        helper.make_node("Mul", ["hy", "rs"], ["a2"], name="a2"),
        helper.make_node("Add", ["a1", "a2"], ["ra"], name="ra"),
        helper.make_node("Mul", ["hx", "rs"], ["b1"], name="b1"),
        helper.make_node("Mul", ["hy", "rc"], ["b2"], name="b2"),
        helper.make_node("Sub", ["b1", "b2"], ["rb"], name="rb"),
        helper.make_node("LessOrEqual", ["sel", "zero"], ["le"], name="le"),
        helper.make_node("Greater", ["sel", "zero"], ["gt"], name="gt"),
        helper.make_node("Cast", ["le"], ["keep"], name="keep", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["gt"], ["turn"], name="turn", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["hx", "keep"], ["ka"], name="ka"),
        helper.make_node("Mul", ["ra", "turn"], ["ta"], name="ta"),
        helper.make_node("Add", ["ka", "ta"], ["oa"], name="oa"),
        helper.make_node("Mul", ["hy", "keep"], ["kb"], name="kb"),
        helper.make_node("Mul", ["rb", "turn"], ["tb"], name="tb"),
        helper.make_node("Add", ["kb", "tb"], ["ob"], name="ob"),
        helper.make_node("Concat", ["oa", "ob"], ["y"], name="householder", axis=1),
    ]
    hw = torch.as_tensor(np.stack([hh_init["hs"][0], -hh_init["hc"][0]]), dtype=torch.float64)

    def householder_reference(x: Tensor) -> Tensor:
        """The exact reflection across each pair's selector line (what lipcert certifies)."""
        hx, hy = x[:, :3], x[:, 3:]
        dot = hx * hw[0] + hy * hw[1]
        norm = hw[0] ** 2 + hw[1] ** 2
        turn = dot > 0
        ox = torch.where(turn, hx - 2 * dot * hw[0] / norm, hx)
        oy = torch.where(turn, hy - 2 * dot * hw[1] / norm, hy)
        return torch.cat([ox, oy], dim=1)

    return [
        graph_case(
            "sll_dense_block",
            "SLLBlock",
            sll_dense,
            sll_dense_reference,
            (5,),
            initializers={"w": w, "b": b, "t": t, "two": f32(2.0)},
            linear=False,
            exact=False,
        ),
        graph_case(
            "sll_conv_block",
            "SLLBlock",
            sll_conv,
            sll_conv_reference,
            (2, 4, 4),
            initializers={"k": k, "tc": tc},
            linear=False,
            exact=False,
        ),
        graph_case(
            "sandwich_dense_tanh",
            "SandwichBlock",
            sandwich,
            sandwich_reference,
            (5,),
            initializers={"w1": w1, "pre": pre, "post": post, "w2t": f32(w2.T)},
            linear=False,
            exact=False,
        ),
        graph_case(
            "scatter_rows_of_data",
            "ScatterND",
            scatter,
            scatter_reference,
            (4, 3),
            initializers={
                "s0": i64([0]),
                "s1": i64([2]),
                "s_axis": i64([0]),
                "idx": i64([[1], [3]]),
            },
            linear=True,
            exact=False,
        ),
        graph_case(
            "where_greater_is_max",
            "Max",
            where_max,
            lambda x: torch.clamp(x, min=0.25),
            (3, 4),
            initializers={"c": f32(0.25)},
            linear=False,
            exact=True,
        ),
        graph_case(
            "where_less_or_equal_is_min",
            "Min",
            where_min,
            lambda x: torch.clamp(x, max=-0.5),
            (3, 4),
            initializers={"c": f32(-0.5)},
            linear=False,
            exact=True,
        ),
        graph_case(
            "householder_activation",
            "Householder",
            householder,
            householder_reference,
            (6,),
            initializers=hh_init,
            linear=False,
            exact=True,
        ),
        graph_case(
            "n_activation_select",
            "PiecewiseLinear",
            n_activation,
            n_reference,
            (3, 4),
            initializers={
                "t0": theta[0],
                "t1": theta[1],
                "two_t0": f32(2 * theta[0]),
                "two_t1": f32(2 * theta[1]),
            },
            linear=False,
            exact=True,
            input_scale=2.0,
        ),
    ]


# --- ground truth ----------------------------------------------------------------------------


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output on x, by onnxruntime without graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0])


def random_inputs(case: RuleCase, batch: int, seed: str = "inputs") -> np.ndarray:
    rng = rng_for(f"{seed}/{case.id}")
    return (rng.standard_normal((batch, *case.input_shape)) * case.input_scale).astype(np.float32)


def assert_close_to_onnxruntime(
    actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5
) -> None:
    """Equal within rtol relative to the output's scale (float32 sums round at ~1e-7)."""
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def check_reference(case: RuleCase, batch: int = 3) -> None:
    """The torch reference computes what onnxruntime computes, on a random batch."""
    x = random_inputs(case, batch, "reference")
    expected = run_onnxruntime(case.model, x)
    with torch.no_grad():
        actual = case.reference(torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert_close_to_onnxruntime(actual, expected)


def dense_matrix(reference: Reference, input_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of an affine reference without its offset: f(e_i) - f(0) for every i."""
    size = math.prod(input_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *input_shape)
    with torch.no_grad():
        columns = reference(basis) - reference(torch.zeros(1, *input_shape, dtype=torch.float64))
    return columns.reshape(size, -1).T.numpy()


def largest_singular_value(matrix: np.ndarray) -> float:
    if matrix.size == 0:
        return 0.0
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def jacobian(reference: Reference, point: np.ndarray) -> np.ndarray:
    """The Jacobian of a reference at one sample, in float64 by reverse mode."""
    x = torch.as_tensor(np.asarray(point, dtype=np.float64))

    def per_sample(v: Tensor) -> Tensor:
        return reference(v.unsqueeze(0)).reshape(-1)

    matrix = torch.autograd.functional.jacobian(per_sample, x, vectorize=True)
    return matrix.reshape(-1, x.numel()).numpy()


def jacobian_norms(case: RuleCase, random_points: int = 6) -> list[float]:
    """Largest singular values of the Jacobian at random points, then at the constructed ones."""
    rng = rng_for(f"points/{case.id}")
    points = [
        rng.standard_normal(case.input_shape) * case.input_scale for _ in range(random_points)
    ]
    return [largest_singular_value(jacobian(case.reference, p)) for p in [*points, *case.points()]]


def exact_lipschitz(case: RuleCase) -> float:
    """The ground truth: the operator norm (linear) or the largest Jacobian norm found."""
    check_reference(case)
    if case.linear:
        return largest_singular_value(dense_matrix(case.reference, case.input_shape))
    return max(jacobian_norms(case))
