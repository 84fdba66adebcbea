"""The rounding gain of a convolution: the norm of the operator with |weight|.

A conv output's float rounding error is at most gamma_n times the same conv with |weight|
applied to |x|, so lipcert needs an upper bound of that operator's norm (`abs_conv_gain`).
Every bound here is checked against the dense matrix of the |weight| operator, built by
applying the PyTorch layer to every unit vector, and its largest singular value (float64
SVD). Look-alikes: formulas that look right but are too small (stride without the residue
classes, the residues of the undilated taps, the zero-padded formula on a circular grid),
each shown below the dense norm, so the tests can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.bounds.rules.linear import abs_conv_gain
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

SOUND = 1.0 - 1e-12  # gain >= dense norm * SOUND: room only for the reference SVD's rounding


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dense_norm(function: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> float:
    """Largest singular value of the linear map `function` on inputs of `shape`."""
    size = int(np.prod(shape))
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
    with torch.no_grad():
        columns = function(basis).reshape(size, -1).numpy().T
    return float(np.linalg.svd(columns, compute_uv=False)[0])


def conv_operator(
    weight: np.ndarray,
    stride: tuple[int, ...],
    pads: tuple[int, ...],  # begin..., end... as in ONNX
    dilation: tuple[int, ...],
    groups: int,
    circular: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> conv(pad(x), |weight|): the ONNX Conv semantics, zero or wrap padding."""
    kernel = torch.as_tensor(np.abs(weight))
    rank = weight.ndim - 2
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        torch_pads += [pads[axis], pads[rank + axis]]
    conv = F.conv1d if rank == 1 else F.conv2d

    def apply(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, torch_pads, mode="circular" if circular else "constant")
        return conv(padded, kernel, stride=stride, dilation=dilation, groups=groups)

    return apply


def old_gain(weight: np.ndarray, groups: int) -> float:
    """The stride-free bound (the norm of the sum of the taps), computed independently."""
    taps = np.abs(weight).sum(axis=tuple(range(2, weight.ndim)))
    return max(np.linalg.svd(b, compute_uv=False)[0] for b in np.split(taps, groups, axis=0))


CASES = [
    # (c_out, c_in/groups, kernel, groups, input, stride, pads, dilation)
    (4, 3, (3, 3), 1, (3, 9, 9), (2, 2), (1, 1, 1, 1), (1, 1)),
    (4, 3, (3, 3), 1, (3, 8, 8), (2, 2), (1, 1, 1, 1), (1, 1)),
    (4, 3, (3, 3), 1, (3, 8, 8), (2, 2), (0, 0, 0, 0), (1, 1)),
    (4, 3, (3, 3), 1, (3, 8, 9), (2, 3), (2, 0, 1, 1), (1, 1)),  # asymmetric pads
    (3, 2, (3, 3), 1, (2, 9, 9), (2, 2), (2, 2, 2, 2), (2, 2)),  # dilation = stride
    (3, 2, (3, 2), 1, (2, 10, 9), (3, 2), (1, 0, 1, 1), (2, 1)),
    (6, 2, (3, 3), 2, (4, 8, 8), (2, 2), (1, 1, 1, 1), (1, 1)),  # groups
    (6, 1, (3, 3), 6, (6, 7, 7), (2, 2), (1, 1, 1, 1), (1, 1)),  # depthwise
    (4, 3, (4, 4), 1, (3, 8, 8), (2, 2), (1, 1, 1, 1), (1, 1)),
    (4, 3, (5, 5), 1, (3, 9, 9), (4, 4), (2, 2, 2, 2), (1, 1)),  # stride beyond half kernel
    (4, 3, (2, 2), 1, (3, 8, 8), (3, 3), (0, 0, 0, 0), (1, 1)),  # stride beyond kernel
    (4, 3, (3, 3), 1, (3, 8, 8), (1, 1), (1, 1, 1, 1), (1, 1)),  # stride 1: the old bound
    (5, 3, (3,), 1, (3, 17), (2,), (1, 1), (1,)),  # 1-D
    (5, 3, (5,), 1, (3, 17), (3,), (3, 1), (2,)),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_zero_padded_gain_bounds_the_dense_operator(case: tuple) -> None:
    c_out, c_in, kernel, groups, shape, stride, pads, dilation = case
    rng = np.random.default_rng(len(str(case)))
    weight = rng.normal(size=(c_out, c_in, *kernel))
    gain = abs_conv_gain(weight, groups, stride, dilation)
    exact = dense_norm(conv_operator(weight, stride, pads, dilation, groups), shape)
    assert gain >= exact * SOUND
    # never looser than the stride-free bound it replaces; equal to it at stride 1
    assert gain <= old_gain(weight, groups) * (1 + 1e-12)
    if all(s == 1 for s in stride):
        assert gain == pytest.approx(old_gain(weight, groups), rel=1e-12)


def test_strided_gain_is_approached_on_a_large_map() -> None:
    """The bound is the norm of the infinite-grid operator: a large map nearly reaches it,
    and it is well below the stride-free bound for a 3x3 kernel at stride 2."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(2, 2, 3, 3))
    gain = abs_conv_gain(weight, 1, (2, 2), (1, 1))
    exact = dense_norm(conv_operator(weight, (2, 2), (1, 1, 1, 1), (1, 1), 1), (2, 24, 24))
    assert exact * SOUND <= gain <= exact * 1.1
    assert gain < 0.75 * old_gain(weight, 1)


def test_look_alike_stride_as_a_divisor_is_too_small() -> None:
    """Taps all in one residue class (the corners of a 3x3 kernel at stride 2): subsampling
    gains nothing. Dividing the stride-free bound by sqrt(prod(stride)) would be too small;
    the residue bound keeps every tap in one class, the stride-free value."""
    weight = np.zeros((2, 2, 3, 3))
    weight[:, :, ::2, ::2] = np.abs(np.random.default_rng(2).normal(size=(2, 2, 2, 2)))
    exact = dense_norm(conv_operator(weight, (2, 2), (1, 1, 1, 1), (1, 1), 1), (2, 16, 16))
    naive = old_gain(weight, 1) / 2
    assert naive < exact * 0.9
    gain = abs_conv_gain(weight, 1, (2, 2), (1, 1))
    assert gain >= exact * SOUND
    assert gain == pytest.approx(old_gain(weight, 1), rel=1e-12)


def test_look_alike_undilated_residues_are_too_small() -> None:
    """Dilation 2 at stride 2 puts every tap offset t * 2 in residue class 0: residues of t
    itself (ignoring the dilation) would split them and be too small."""
    weight = np.abs(np.random.default_rng(3).normal(size=(3, 3, 3, 3)))
    exact = dense_norm(conv_operator(weight, (2, 2), (2, 2, 2, 2), (2, 2), 1), (3, 14, 14))
    undilated = abs_conv_gain(weight, 1, (2, 2), (1, 1))
    assert undilated < exact * 0.9
    assert abs_conv_gain(weight, 1, (2, 2), (2, 2)) >= exact * SOUND


def test_look_alike_zero_padded_formula_on_a_circular_grid_is_too_small() -> None:
    """On a circular grid of 5 at stride 2, outputs 0, 2, 4 wrap onto 1 and 3: residues
    modulo 2 no longer separate the taps. The zero-padded formula is too small there; the
    circular one (residues modulo gcd(2, 5) = 1) is not."""
    rng = np.random.default_rng(4)
    found = False
    for _ in range(200):
        weight = np.abs(rng.normal(size=(2, 2, 3, 3))) * (rng.random((2, 2, 3, 3)) < 0.5)
        operator = conv_operator(weight, (2, 2), (1, 1, 1, 1), (1, 1), 1, circular=True)
        exact = dense_norm(operator, (2, 5, 5))
        assert abs_conv_gain(weight, 1, (2, 2), (1, 1), (5, 5)) >= exact * SOUND
        if abs_conv_gain(weight, 1, (2, 2), (1, 1)) < exact * (1 - 1e-6):
            found = True
            break
    assert found, "no kernel made the zero-padded formula fail on the circular grid"


@pytest.mark.parametrize(
    "size, stride, dilation",
    [
        ((8, 8), (2, 2), (1, 1)),
        ((6, 9), (2, 3), (1, 1)),
        ((8, 8), (2, 2), (2, 1)),
        ((7, 7), (3, 3), (1, 1)),
    ],
)
def test_circular_gain_bounds_the_dense_operator(
    size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> None:
    weight = np.random.default_rng(sum(size)).normal(size=(3, 2, 3, 3))
    extents = [2 * d for d in dilation]
    pads = (
        extents[0] // 2,
        extents[1] // 2,
        extents[0] - extents[0] // 2,
        extents[1] - extents[1] // 2,
    )
    operator = conv_operator(weight, stride, pads, dilation, 1, circular=True)
    exact = dense_norm(operator, (2, *size))
    assert abs_conv_gain(weight, 1, stride, dilation, size) >= exact * SOUND


@pytest.mark.parametrize(
    "stride, pads, output_padding, dilation, groups",
    [
        ((2, 2), (1, 1), (1, 1), (1, 1), 1),
        ((2, 2), (0, 0), (0, 0), (1, 1), 2),
        ((3, 2), (1, 0), (2, 1), (1, 2), 1),
        ((2, 2), (2, 2), (0, 0), (2, 2), 1),
    ],
)
def test_transposed_gain_bounds_the_dense_operator(
    stride: tuple[int, int],
    pads: tuple[int, int],
    output_padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> None:
    """ConvTranspose weight (C_in, C_out/groups, k...): the same function bounds it."""
    rng = np.random.default_rng(stride[0] * 7 + groups)
    weight = rng.normal(size=(4, 3, 3, 3))
    kernel = torch.as_tensor(np.abs(weight))

    def operator(x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(
            x,
            kernel,
            stride=stride,
            padding=pads,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
        )

    exact = dense_norm(operator, (4, 6, 6))
    assert abs_conv_gain(weight, groups, stride, dilation) >= exact * SOUND


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c_out=st.integers(1, 3),
    c_in=st.integers(1, 3),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    dh=st.integers(1, 3),
    dw=st.integers(1, 3),
    pad=st.integers(0, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    circular=st.booleans(),
    sparse=st.booleans(),
)
def test_random_convolutions(
    c_out: int,
    c_in: int,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    dh: int,
    dw: int,
    pad: int,
    h: int,
    w: int,
    seed: int,
    circular: bool,
    sparse: bool,
) -> None:
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(c_out, c_in, kh, kw))
    if sparse:  # a few taps: residue classes of very different weight
        weight = weight * (rng.random(weight.shape) < 0.3)
    if circular:
        eh, ew = (kh - 1) * dh, (kw - 1) * dw
        if eh >= h or ew >= w:  # torch wraps at most once
            return
        pads = (eh // 2, ew // 2, eh - eh // 2, ew - ew // 2)
    else:
        pads = (pad, pad, pad, pad)
        if h + 2 * pad < (kh - 1) * dh + 1 or w + 2 * pad < (kw - 1) * dw + 1:
            return
    operator = conv_operator(weight, (sh, sw), pads, (dh, dw), 1, circular=circular)
    exact = dense_norm(operator, (c_in, h, w))
    size = (h, w) if circular else None
    assert abs_conv_gain(weight, 1, (sh, sw), (dh, dw), size) >= exact * SOUND


# --- the rules use it --------------------------------------------------------------------


def _model(nodes: list, inits: list, in_shape: list, out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *out_shape])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _rounding_gain(model: onnx.ModelProto) -> float:
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    gains = [layer.rounding.input_gain for _, layer in analysis.node_bounds]
    return max(gains)


def test_conv_rule_uses_the_strided_gain() -> None:
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
        [numpy_helper.from_array(weight, "W")],
        [2, 10, 10],
        [4, 5, 5],
    )
    gain = _rounding_gain(model)
    w64 = weight.astype(np.float64)
    exact = dense_norm(conv_operator(w64, (2, 2), (1, 1, 1, 1), (1, 1), 1), (2, 10, 10))
    assert exact * SOUND <= gain < 0.8 * old_gain(w64, 1)


def test_folded_batchnorm_conv_rule_bounds_the_dense_operator() -> None:
    """Conv (stride 2) + BatchNorm folded: the rounding gain still covers the folded |W|."""
    rng = np.random.default_rng(6)
    weight = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 2.0, 4), rng.normal(size=4)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2.0, 4)
    arrays = {"W": weight, "s": scale, "b": bias, "m": mean, "v": var}
    model = _model(
        [
            helper.make_node("Conv", ["x", "W"], ["h"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y"]),
        ],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in arrays.items()],
        [2, 10, 10],
        [4, 5, 5],
    )
    gain = _rounding_gain(model)
    factor = (scale / np.sqrt(var + 1e-5)).astype(np.float32).astype(np.float64)
    folded = weight.astype(np.float64) * factor[:, None, None, None]
    exact = dense_norm(conv_operator(folded, (2, 2), (1, 1, 1, 1), (1, 1), 1), (2, 10, 10))
    assert gain >= exact * SOUND


def test_circular_conv_rule_bounds_the_dense_operator() -> None:
    """Pad(wrap) + Conv at stride 2 on a grid of 5 (odd: the stride does not divide it)."""
    rng = np.random.default_rng(7)
    for _ in range(200):  # a kernel for which the zero-padded formula would be too small
        weight = np.abs(rng.normal(size=(2, 2, 3, 3))) * (rng.random((2, 2, 3, 3)) < 0.5)
        operator = conv_operator(weight, (2, 2), (1, 1, 1, 1), (1, 1), 1, circular=True)
        exact = dense_norm(operator, (2, 5, 5))
        if abs_conv_gain(weight, 1, (2, 2), (1, 1)) < exact * (1 - 1e-6):
            break
    else:
        pytest.fail("no kernel made the zero-padded formula fail on the circular grid")
    weight32 = (weight * rng.choice([-1.0, 1.0], size=weight.shape)).astype(np.float32)
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    model = _model(
        [
            helper.make_node("Pad", ["x", "p"], ["padded"], mode="wrap"),
            helper.make_node("Conv", ["padded", "W"], ["y"], strides=[2, 2]),
        ],
        [numpy_helper.from_array(weight32, "W"), numpy_helper.from_array(pads, "p")],
        [2, 5, 5],
        [2, 3, 3],
    )
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    assert [node.op for node, _ in analysis.node_bounds] == ["CircularConv"]
    gain = analysis.node_bounds[0][1].rounding.input_gain
    exact32 = dense_norm(
        conv_operator(weight32.astype(np.float64), (2, 2), (1, 1, 1, 1), (1, 1), 1, circular=True),
        (2, 5, 5),
    )
    assert gain >= exact32 * SOUND


def test_conv_transpose_rule_bounds_the_dense_operator() -> None:
    rng = np.random.default_rng(8)
    weight = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    model = _model(
        [
            helper.make_node(
                "ConvTranspose",
                ["x", "W"],
                ["y"],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                output_padding=[1, 1],
            )
        ],
        [numpy_helper.from_array(weight, "W")],
        [3, 5, 5],
        [2, 10, 10],
    )
    gain = _rounding_gain(model)
    kernel = torch.as_tensor(np.abs(weight.astype(np.float64)))
    exact = dense_norm(
        lambda x: F.conv_transpose2d(x, kernel, stride=2, padding=1, output_padding=1), (3, 5, 5)
    )
    assert gain >= exact * SOUND
    assert gain < 0.8 * old_gain(weight.astype(np.float64), 1)
