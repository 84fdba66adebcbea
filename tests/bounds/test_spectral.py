"""Reference tests of lipcert.bounds.spectral.

Every bound is checked against the exact norm of the explicit operator: the dense matrix of
the bias-free PyTorch (or onnxruntime) layer, built by applying it to every unit vector, and
its largest singular value by a float64 SVD. A bound must never be below that value, and must
equal it within EXACT where the method is exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcert.bounds import spectral
from lipcert.errors import ModelLoadError, ShapeError

SOUND = 1.0 - 1e-12  # bound >= exact * SOUND: room only for the reference SVD's own rounding
EXACT = 1e-6  # relative tolerance where a bound claims to be exact


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: these ops are tiny, and on a shared machine extra threads only
    wait for each other (seen to slow single tests from 20 ms to 16 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _exact_norm(matrix: np.ndarray) -> float:
    """Largest singular value of an explicit matrix (float64 SVD)."""
    if matrix.size == 0:
        return 0.0
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _dense(op: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear torch op on inputs of in_shape, from the op on every unit vector."""
    size = math.prod(in_shape)
    basis = torch.eye(size, dtype=torch.float64).reshape(size, *in_shape)
    return op(basis).reshape(size, -1).T.numpy()


def _torch_pads(begin: tuple[int, ...], end: tuple[int, ...]) -> list[int]:
    """F.pad's argument: (begin, end) pairs from the last axis to the first."""
    return [p for axis in reversed(range(len(begin))) for p in (begin[axis], end[axis])]


def _check_exact(bound: float, exact: float) -> None:
    assert bound >= exact * SOUND
    assert bound <= exact * (1 + EXACT) + 1e-300


# --- matrix_norm ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (5, 5), (30, 10), (10, 30)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_matrix_norm_is_exact(shape: tuple[int, int]) -> None:
    w = np.random.default_rng(0).standard_normal(shape)
    _check_exact(spectral.matrix_norm(w), _exact_norm(w))


@pytest.mark.parametrize("scale", [1e-300, 1e-5, 1.0, 1e5, 1e300], ids=lambda s: f"scale{s:g}")
def test_matrix_norm_of_scaled_orthogonal_matrix(scale: float) -> None:
    # A scaled orthogonal matrix has every singular value equal to the scale, however
    # extreme: the bound must neither underflow to zero nor overflow to infinity.
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((6, 6)))
    bound = spectral.matrix_norm(q * scale)
    assert scale <= bound <= scale * (1 + EXACT)


def test_matrix_norm_of_zero_and_empty_matrices() -> None:
    assert spectral.matrix_norm(np.zeros((3, 4))) == 0.0
    assert spectral.matrix_norm(np.zeros((0, 4))) == 0.0


def test_matrix_norm_accepts_float32_and_integers() -> None:
    w = np.array([[3, 0], [0, -4]])
    assert 4.0 <= spectral.matrix_norm(w) <= 4.0 * (1 + EXACT)
    assert 4.0 <= spectral.matrix_norm(w.astype(np.float32)) <= 4.0 * (1 + EXACT)


@pytest.mark.parametrize("shape", [(40, 25), (25, 40), (30, 30)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matrix_norm_gram_path_is_exact(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Gram path serves matrices whose smaller side exceeds 2048; lower the threshold to
    # test it on small ones. A rank-2 matrix has a well separated largest singular value.
    monkeypatch.setattr(spectral, "_GRAM_MIN_SIDE", 3)
    rng = np.random.default_rng(2)
    for w in (
        rng.standard_normal(shape),
        rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1])),
    ):
        _check_exact(spectral.matrix_norm(w), _exact_norm(w))


def test_matrix_norm_refuses_bad_input() -> None:
    with pytest.raises(ShapeError, match=r"expected a 2-D matrix but got shape \(2, 2, 2\)"):
        spectral.matrix_norm(np.zeros((2, 2, 2)))
    with pytest.raises(ModelLoadError, match="expected a finite matrix but found 1 NaN"):
        spectral.matrix_norm(np.array([[1.0, np.nan]]))
    with pytest.raises(ShapeError, match="expected a real matrix"):
        spectral.matrix_norm(np.eye(2) * 1j)


# --- convolutions --------------------------------------------------------------------------


class Conv(NamedTuple):
    """A convolution layer: weight shape, input size and ONNX attributes."""

    weight_shape: tuple[int, ...]  # (C_out, C_in / groups, *kernel)
    size: tuple[int, ...]
    strides: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    dilations: tuple[int, ...]
    groups: int

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1] * self.groups


class Case(NamedTuple):
    """A named layer and the largest bound / exact ratio allowed for it."""

    name: str
    layer: Conv
    max_gap: float


def _params(cases: list[Case]) -> list[pytest.ParameterSet]:
    return [pytest.param(case.layer, case.max_gap, id=case.name) for case in cases]


def conv(
    name: str,
    weight_shape: tuple[int, ...],
    size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    pads: int | tuple[tuple[int, ...], tuple[int, ...]] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    max_gap: float = 1.15,
) -> Case:
    """A test case; one integer stands for the same value on every axis."""
    n_axes = len(size)

    def per_axis(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return (value,) * n_axes if isinstance(value, int) else value

    begin, end = (per_axis(pads), per_axis(pads)) if isinstance(pads, int) else pads
    layer = Conv(weight_shape, size, per_axis(stride), begin, end, per_axis(dilation), groups)
    return Case(name, layer, max_gap)


def _weight(layer: Conv, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(layer.weight_shape)


def _conv_matrix(layer: Conv, weight: np.ndarray, circular: bool) -> np.ndarray:
    """Dense matrix of the bias-free conv, padded by F.pad (zeros or circular)."""
    conv_nd = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(layer.size)]

    def op(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(
            x,
            _torch_pads(layer.pads_begin, layer.pads_end),
            mode="circular" if circular else "constant",
        )
        return conv_nd(
            padded,
            torch.from_numpy(weight),
            stride=layer.strides,
            dilation=layer.dilations,
            groups=layer.groups,
        )

    return _dense(op, (layer.in_channels, *layer.size))


def _conv_norm(layer: Conv, weight: np.ndarray, circular: bool = False) -> float:
    return spectral.conv_norm(
        weight,
        layer.size,
        layer.strides,
        layer.pads_begin,
        layer.pads_end,
        layer.dilations,
        layer.groups,
        circular=circular,
    )


# max_gap is the largest bound / exact allowed; the gaps measured with these weights are in
# brackets. 3x3 kernels with "same" padding on 5x5 .. 8x8 maps stay within 15 % (worst 1.12,
# one channel, where no averaging over channels helps). Maps hardly larger than the kernel
# are looser: the circulant also couples positions across the wrapped-around border, which
# the zero-padded layer never does (worst 1.46, a stride-2 dilated depthwise conv on 7x7).
# When so few outputs remain that fewer patches overlap than in the interior, the patch
# bound takes over, exact with a single output.
ZERO_PADDED = [
    conv("conv3x3_stride1_dil1_groups1_pad1", (8, 4, 3, 3), (8, 8), pads=1),
    conv("conv3x3_stride1_pad1_1channel", (1, 1, 3, 3), (6, 6), pads=1),
    conv("conv3x3_stride1_pad1_16channels", (16, 16, 3, 3), (5, 5), pads=1),
    conv("conv3x3_valid_5x5", (4, 4, 3, 3), (5, 5), max_gap=1.25),  # [1.19]
    conv("conv7x7_valid_7x7_one_output", (4, 3, 7, 7), (7, 7), max_gap=1 + EXACT),
    conv("conv4x4_stride2_valid_4x4_one_output", (5, 2, 4, 4), (4, 4), stride=2, max_gap=1 + EXACT),
    conv("conv3x3_valid_4x4_two_outputs", (3, 3, 3, 3), (4, 4), max_gap=1.4),  # [1.36]
    conv("conv1x1_stride1", (6, 5, 1, 1), (5, 5)),
    conv("conv1x1_stride2_odd", (3, 5, 1, 1), (7, 7), stride=2),
    conv("conv2x2_stride2_pad0_odd", (4, 3, 2, 2), (7, 7), stride=2),
    conv("conv2x2_stride1_asympad", (3, 3, 2, 2), (6, 6), pads=((0, 1), (1, 0))),
    conv("conv3x3_stride2_dil1_groups2_pad1", (8, 2, 3, 3), (8, 8), stride=2, pads=1, groups=2),
    conv("conv3x3_stride2_pad1_odd", (4, 4, 3, 3), (7, 7), stride=2, pads=1),
    conv("conv3x3_stride3_asympad", (4, 4, 3, 3), (8, 8), stride=3, pads=((1, 0), (0, 1))),
    conv(
        "conv3x3_stride1_dil2_pad2", (3, 3, 3, 3), (8, 8), pads=2, dilation=2, max_gap=1.3
    ),  # [1.18]
    conv("conv3x3_depthwise_groups4", (4, 1, 3, 3), (6, 6), pads=1, groups=4),
    conv(
        "conv3x3_stride2_dil2_depthwise",
        (4, 1, 3, 3),
        (7, 7),
        stride=2,
        pads=1,
        dilation=2,
        groups=4,
        max_gap=1.5,  # [1.46]
    ),
    conv("conv3x3_stride2_dil2_groups4_pad2", (8, 2, 3, 3), (8, 8), 2, 2, 2, groups=4, max_gap=1.3),
    conv("conv5x5_stride1_pad2", (4, 4, 5, 5), (8, 8), pads=2, max_gap=1.3),  # [1.20]
    conv("conv5x5_stride3_pad2", (4, 2, 5, 5), (8, 8), stride=3, pads=2, max_gap=1.3),
    conv("conv2x3_rect_stride1x2", (3, 2, 2, 3), (5, 7), (1, 2), ((0, 1), (1, 1))),
    conv("conv3x3_stride2_input6x8", (3, 3, 3, 3), (6, 8), stride=2, pads=1),
    conv("conv3x3_stride2_1to16channels", (16, 1, 3, 3), (8, 8), stride=2, pads=1),
    conv("conv1d_k1_s1", (4, 3, 1), (9,)),
    conv("conv1d_k2_s2_odd", (4, 3, 2), (9,), stride=2),
    conv("conv1d_k3_s1_pad1", (5, 3, 3), (8,), pads=1),
    conv("conv1d_k3_s3_pad1", (3, 3, 3), (10,), stride=3, pads=1),
    conv("conv1d_k5_s2_dil2_pad4", (3, 2, 5), (12,), stride=2, pads=4, dilation=2, max_gap=1.3),
    conv("conv1d_k3_groups2_asympad", (4, 2, 3), (9,), pads=((2,), (0,)), groups=2),
    conv("conv1d_k3_depthwise_groups4", (4, 1, 3), (8,), pads=1, groups=4),
    conv("conv1d_k3_16channels", (16, 16, 3), (16,), pads=1),
]


@pytest.mark.parametrize(("layer", "max_gap"), _params(ZERO_PADDED))
def test_conv_norm_zero_padding_is_a_tight_upper_bound(layer: Conv, max_gap: float) -> None:
    weight = _weight(layer)
    exact = _exact_norm(_conv_matrix(layer, weight, circular=False))
    bound = _conv_norm(layer, weight)
    assert bound >= exact * SOUND
    assert bound <= exact * max_gap


@pytest.mark.parametrize(("layer", "max_gap"), _params(ZERO_PADDED))
def test_conv_norm_size_free_is_an_upper_bound(layer: Conv, max_gap: float) -> None:
    weight = _weight(layer)
    bound = spectral.conv_norm_size_free(weight, layer.strides, layer.dilations, layer.groups)
    assert bound >= _exact_norm(_conv_matrix(layer, weight, circular=False)) * SOUND
    assert bound >= _conv_norm(layer, weight) * SOUND  # never the tighter of the two


def _circular(
    name: str,
    weight_shape: tuple[int, ...],
    size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    pads: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    dilation: int = 1,
    groups: int = 1,
) -> Case:
    """A circular case: unless given, pads split the dilated kernel extent - 1 (more first)."""
    extra = [(k - 1) * dilation for k in weight_shape[2:]]
    if pads is None:
        pads = (tuple(e - e // 2 for e in extra), tuple(e // 2 for e in extra))
    return conv(name, weight_shape, size, stride, pads, dilation, groups, max_gap=1 + EXACT)


# Exact: the stride divides the size on every axis.
CIRCULAR_EXACT = [
    _circular("circ3x3_stride1", (4, 3, 3, 3), (6, 6)),
    _circular("circ3x3_stride2", (4, 3, 3, 3), (6, 6), stride=2),
    _circular("circ3x3_stride3_groups2", (4, 2, 3, 3), (6, 6), stride=3, groups=2),
    _circular("circ2x2_stride2_asympad", (3, 3, 2, 2), (4, 6), stride=2, pads=((0, 1), (1, 0))),
    _circular("circ5x5_on_3x3_wraps", (3, 3, 5, 5), (3, 3)),
    _circular("circ3x3_dil2_on_4x4_wraps", (3, 3, 3, 3), (4, 4), dilation=2),
    _circular("circ3x3_stride2_dil2", (4, 4, 3, 3), (8, 8), stride=2, dilation=2),
    _circular("circ3x3_depthwise_groups4", (4, 1, 3, 3), (6, 6), groups=4),
    _circular("circ3x3_16channels", (16, 16, 3, 3), (4, 4)),
    _circular("circ2x3_rect_stride2x3", (3, 2, 2, 3), (4, 6), stride=(2, 3)),
    _circular("circ1d_k5_on_2_wraps", (3, 2, 5), (2,)),
    _circular("circ1d_k3_s3", (3, 3, 3), (9,), stride=3),
    _circular("circ1d_k2_s2", (2, 3, 2), (6,), stride=2),
    _circular("circ1d_k3_dil2_groups2", (4, 2, 3), (8,), dilation=2, groups=2),
    _circular("circ1d_k1_16channels", (16, 16, 1), (5,)),
    _circular("circ3x3_stride2_1to16channels", (16, 1, 3, 3), (6, 6), stride=2),
    _circular("circ3d_2x2x3_stride2", (3, 2, 2, 2, 3), (4, 4, 3), stride=(2, 2, 1)),
]


@pytest.mark.parametrize(("layer", "max_gap"), _params(CIRCULAR_EXACT))
def test_conv_norm_circular_is_exact(layer: Conv, max_gap: float) -> None:
    weight = _weight(layer)
    exact = _exact_norm(_conv_matrix(layer, weight, circular=True))
    bound = _conv_norm(layer, weight, circular=True)
    assert bound >= exact * SOUND
    assert bound <= exact * max_gap


# Upper bounds only: the stride does not divide the size on some axis.
CIRCULAR_FALLBACK = [
    _circular("circ3x3_stride2_odd_7x7", (4, 3, 3, 3), (7, 7), stride=2),
    _circular("circ3x3_stride2_6x7", (4, 3, 3, 3), (6, 7), stride=2),
    _circular("circ1d_k3_s2_odd", (3, 3, 3), (5,), stride=2),
]


@pytest.mark.parametrize("layer", [pytest.param(c.layer, id=c.name) for c in CIRCULAR_FALLBACK])
def test_conv_norm_circular_stride_not_dividing_is_an_upper_bound(layer: Conv) -> None:
    weight = _weight(layer)
    bound = _conv_norm(layer, weight, circular=True)
    assert bound >= _exact_norm(_conv_matrix(layer, weight, circular=True)) * SOUND
    # Only the axes the stride does not divide fall back to stride 1.
    unit = layer._replace(
        strides=tuple(1 if n % s else s for n, s in zip(layer.size, layer.strides, strict=True))
    )
    assert bound == _conv_norm(unit, weight, circular=True)


@pytest.mark.parametrize(
    ("shape", "size", "circular"),
    [
        ((5, 5, 3, 3), (6, 6), False),
        ((5, 5, 3, 3), (6, 6), True),
        ((7, 7, 5), (9,), True),
        ((7, 7, 5), (2,), True),
    ],
    ids=["zero_pad_2d", "circular_2d", "circular_1d", "circular_1d_wraps"],
)
def test_conv_norm_of_identity_kernel_is_one(
    shape: tuple[int, ...], size: tuple[int, ...], circular: bool
) -> None:
    # Identity at the centre tap, zero elsewhere: the layer is the identity map, norm 1.
    weight = np.zeros(shape)
    centre = tuple(k // 2 for k in shape[2:])
    for c in range(shape[0]):
        tap = (c, c, *centre)
        weight[tap] = 1.0
    n_axes = len(size)
    pads = tuple(k // 2 for k in shape[2:])
    bound = spectral.conv_norm(weight, size, (1,) * n_axes, pads, pads, (1,) * n_axes, 1, circular)
    assert 1.0 <= bound <= 1.0 + 1e-9


def test_conv_norm_in_chunks_equals_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = ZERO_PADDED[0].layer
    weight = _weight(layer)
    whole = _conv_norm(layer, weight)
    monkeypatch.setattr(spectral, "_CHUNK_ENTRIES", 256)  # 8 of its 41 frequencies per chunk
    assert _conv_norm(layer, weight) == whole


def test_conv_norm_of_zero_weight_is_zero() -> None:
    assert (
        spectral.conv_norm(np.zeros((2, 2, 3, 3)), (4, 4), (1, 1), (1, 1), (1, 1), (1, 1), 1) == 0.0
    )


def test_conv_norm_is_unchanged_by_extreme_scales() -> None:
    layer = ZERO_PADDED[0].layer
    weight = _weight(layer)
    reference = _conv_norm(layer, weight)
    for scale in (2.0**-1000, 2.0**1000):
        assert _conv_norm(layer, weight * scale) == pytest.approx(reference * scale, rel=1e-12)


def test_conv_norm_refuses_bad_layers() -> None:
    w = np.ones((4, 2, 3, 3))
    args = ((6, 6), (1, 1), (1, 1), (1, 1), (1, 1))
    with pytest.raises(ShapeError, match="circular padding must add the dilated kernel extent"):
        spectral.conv_norm(w, (6, 6), (1, 1), (2, 2), (2, 2), (1, 1), 2, circular=True)
    with pytest.raises(ShapeError, match="expected groups >= 1 dividing the 4 output channels"):
        spectral.conv_norm(w, *args, 3)
    with pytest.raises(ShapeError, match=r"expected 2 strides each >= 1 but got \(1,\)"):
        spectral.conv_norm(w, (6, 6), (1,), (1, 1), (1, 1), (1, 1), 2)
    with pytest.raises(
        ShapeError, match=r"expected the padded input \(2\) to hold the dilated kernel \(3\)"
    ):
        spectral.conv_norm(w, (2, 6), (1, 1), (0, 0), (0, 0), (1, 1), 2)
    with pytest.raises(ModelLoadError, match="expected a finite convolution weight"):
        spectral.conv_norm(w * np.inf, *args, 2)


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation"),
    [
        pytest.param(k, s, d, id=f"k{k}_s{s}_d{d}")
        for k, s, d in itertools.product(range(1, 6), range(1, 5), range(1, 4))
    ],
)
def test_conv_norm_size_free_multiplicity_matches_enumeration(
    kernel: int, stride: int, dilation: int
) -> None:
    # With one channel of ones the reshaped kernel has norm sqrt(k), so the bound reveals m.
    bound = spectral.conv_norm_size_free(np.ones((1, 1, kernel)), (stride,), (dilation,), 1)
    m = round(bound**2 / kernel)
    # The most outputs o that read one position p through some tap t: o s + t d = p.
    hits = [
        sum(1 for o in range(200) for t in range(kernel) if o * stride + t * dilation == p)
        for p in range(100, 150)
    ]
    assert m == max(hits)
    assert m <= min(kernel, -(-((kernel - 1) * dilation + 1) // stride))


@st.composite
def conv_layers(draw: st.DrawFn) -> tuple[Conv, bool]:
    """A random small conv layer, zero-padded or circular (as F.pad accepts it)."""
    n_axes = draw(st.integers(1, 2))
    circular = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2]))
    out_per_group, in_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel, size, strides, begin, end, dilations = [], [], [], [], [], []
    for _ in range(n_axes):
        k, d = draw(st.integers(1, 4)), draw(st.integers(1, 2))
        extent = (k - 1) * d + 1
        if circular:
            # F.pad wraps at most once: each pad at most n.
            n = draw(st.integers(max(1, extent // 2), 7))
            pb = draw(st.integers(max(0, extent - 1 - n), min(n, extent - 1)))
            pe = extent - 1 - pb
        else:
            pb, pe = draw(st.integers(0, 2)), draw(st.integers(0, 2))
            n = draw(st.integers(max(1, extent - pb - pe), 7))
        kernel.append(k)
        size.append(n)
        strides.append(draw(st.integers(1, 3)))
        begin.append(pb)
        end.append(pe)
        dilations.append(d)
    layer = Conv(
        (groups * out_per_group, in_per_group, *kernel),
        tuple(size),
        tuple(strides),
        tuple(begin),
        tuple(end),
        tuple(dilations),
        groups,
    )
    return layer, circular


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_layers(), st.integers(0, 2**32 - 1))
def test_conv_norm_random_layers(case: tuple[Conv, bool], seed: int) -> None:
    layer, circular = case
    weight = _weight(layer, seed)
    exact = _exact_norm(_conv_matrix(layer, weight, circular))
    bound = _conv_norm(layer, weight, circular)
    assert bound >= exact * SOUND
    if circular and all(n % s == 0 for n, s in zip(layer.size, layer.strides, strict=True)):
        assert bound <= exact * (1 + EXACT)
    if not circular:
        size_free = spectral.conv_norm_size_free(
            weight, layer.strides, layer.dilations, layer.groups
        )
        assert size_free >= exact * SOUND


# --- transposed convolutions ---------------------------------------------------------------


class ConvTranspose(NamedTuple):
    """A ConvTranspose layer (torch arguments; ONNX pads are (padding, padding))."""

    weight_shape: tuple[int, ...]  # (C_in, C_out / groups, *kernel)
    in_size: tuple[int, ...]
    stride: int
    padding: int
    output_padding: int
    dilation: int
    groups: int


# (layer, max_gap): as for ZERO_PADDED, measured gaps in brackets.
CONV_TRANSPOSE = [
    pytest.param(
        ConvTranspose((4, 3, 3, 3), (4, 4), 2, 1, 1, 1, 1), 1.15, id="convT3x3_stride2_pad1_outpad1"
    ),
    pytest.param(
        ConvTranspose((4, 3, 4, 4), (4, 4), 2, 1, 0, 1, 1), 1.15, id="convT4x4_stride2_pad1"
    ),
    pytest.param(
        ConvTranspose((4, 2, 3, 3), (3, 3), 2, 1, 1, 2, 2),
        1.25,  # [1.18]
        id="convT3x3_stride2_dil2_groups2_outpad1",
    ),
    pytest.param(
        ConvTranspose((3, 3, 3, 3), (5, 5), 1, 0, 0, 1, 1), 1.15, id="convT3x3_stride1_pad0"
    ),
    pytest.param(
        ConvTranspose((3, 2, 3), (5,), 3, 1, 2, 1, 1), 1.15, id="convT1d_k3_stride3_outpad2"
    ),
    pytest.param(
        ConvTranspose((4, 1, 2), (6,), 2, 0, 1, 1, 4),
        1.15,
        id="convT1d_k2_stride2_depthwise_outpad1",
    ),
]


@pytest.mark.parametrize(("layer", "max_gap"), CONV_TRANSPOSE)
def test_conv_transpose_norm_is_a_tight_upper_bound(layer: ConvTranspose, max_gap: float) -> None:
    weight = np.random.default_rng(3).standard_normal(layer.weight_shape)
    n_axes = len(layer.in_size)
    conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[n_axes]

    def op(x: torch.Tensor) -> torch.Tensor:
        return conv_t(
            x,
            torch.from_numpy(weight),
            stride=layer.stride,
            padding=layer.padding,
            output_padding=layer.output_padding,
            groups=layer.groups,
            dilation=layer.dilation,
        )

    in_shape = (layer.weight_shape[0], *layer.in_size)
    output_size = tuple(op(torch.zeros(1, *in_shape, dtype=torch.float64)).shape[2:])
    exact = _exact_norm(_dense(op, in_shape))
    bound = spectral.conv_transpose_norm(
        weight,
        output_size,
        (layer.stride,) * n_axes,
        (layer.padding,) * n_axes,
        (layer.padding,) * n_axes,
        (layer.dilation,) * n_axes,
        layer.groups,
    )
    assert bound >= exact * SOUND
    assert bound <= exact * max_gap


# --- pooling -------------------------------------------------------------------------------


class Pool(NamedTuple):
    """A pooling layer with symmetric padding, as torch takes it."""

    size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    ceil_mode: bool


POOLS = [
    pytest.param(Pool((8, 8), (2, 2), (2, 2), (0, 0), False), id="pool2x2_stride2"),
    pytest.param(Pool((6, 6), (3, 3), (1, 1), (1, 1), False), id="pool3x3_stride1_pad1"),
    pytest.param(Pool((7, 7), (3, 3), (2, 2), (1, 1), True), id="pool3x3_stride2_pad1_ceil"),
    pytest.param(Pool((8, 8), (3, 3), (2, 2), (1, 1), True), id="pool3x3_stride2_pad1_ceil_even"),
    pytest.param(Pool((7, 7), (2, 2), (2, 2), (0, 0), True), id="pool2x2_stride2_ceil_partial"),
    pytest.param(
        Pool((5, 5), (2, 2), (2, 2), (1, 1), True), id="pool2x2_stride2_pad1_ceil_dropped"
    ),
    pytest.param(Pool((8, 7), (3, 3), (3, 3), (1, 1), True), id="pool3x3_stride3_pad1_ceil"),
    pytest.param(Pool((6, 5), (2, 3), (2, 1), (1, 1), False), id="pool2x3_rect_stride2x1"),
    pytest.param(Pool((9,), (3,), (2,), (1,), True), id="pool1d_k3_s2_pad1_ceil"),
    pytest.param(Pool((10,), (4,), (3,), (2,), False), id="pool1d_k4_s3_pad2"),
]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl", "excl"])
def test_avg_pool_norm_is_exact(pool: Pool, count_include_pad: bool) -> None:
    avg_pool = {1: F.avg_pool1d, 2: F.avg_pool2d}[len(pool.size)]

    def op(x: torch.Tensor) -> torch.Tensor:
        return avg_pool(
            x, pool.kernel, pool.stride, pool.padding, pool.ceil_mode, count_include_pad
        )

    exact = _exact_norm(_dense(op, (1, *pool.size)))
    bound = spectral.avg_pool_norm(
        pool.size,
        pool.kernel,
        pool.stride,
        pool.padding,
        pool.padding,
        pool.ceil_mode,
        count_include_pad,
    )
    _check_exact(bound, exact)


def test_avg_pool_norm_without_overlap() -> None:
    # Stride = kernel: each output averages its own k x k block, norm 1 / k.
    bound = spectral.avg_pool_norm((6, 6), (3, 3), (3, 3), (0, 0), (0, 0), False, True)
    assert 1 / 3 <= bound <= (1 / 3) * (1 + EXACT)


@pytest.mark.parametrize("dilation", [1, 2], ids=["dil1", "dil2"])
@pytest.mark.parametrize("pool", POOLS)
def test_window_multiplicity_gives_the_lipschitz_constant_of_max_pooling(
    pool: Pool, dilation: int
) -> None:
    if any(
        2 * p > k or (k - 1) * dilation + 1 > n + 2 * p
        for n, k, p in zip(pool.size, pool.kernel, pool.padding, strict=True)
    ):
        pytest.skip("torch refuses this padding or window")
    max_pool = {1: F.max_pool1d, 2: F.max_pool2d}[len(pool.size)]

    def op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return max_pool(
            x, pool.kernel, pool.stride, pool.padding, dilation, pool.ceil_mode, return_indices=True
        )

    # Max pooling is piecewise linear; where the maxima are unique its Jacobian is the
    # selection matrix of the argmax indices. A bump at input p on small noise is selected
    # by every window holding p, so the largest Jacobian norm over all p is the Lipschitz
    # constant, reached.
    n_inputs = math.prod(pool.size)
    bumps = np.random.default_rng(4).uniform(0, 1e-3, (n_inputs, n_inputs))
    bumps[np.arange(n_inputs), np.arange(n_inputs)] = 10.0
    _, indices = op(torch.tensor(bumps.reshape(n_inputs, 1, *pool.size)))
    jacobian_norms = []
    for p in range(n_inputs):
        selected = indices[p].reshape(-1).numpy()
        jacobian = np.zeros((selected.size, n_inputs))
        jacobian[np.arange(selected.size), selected] = 1.0
        jacobian_norms.append(_exact_norm(jacobian))
    m = spectral.window_multiplicity(
        pool.size,
        pool.kernel,
        pool.stride,
        pool.padding,
        pool.padding,
        (dilation,) * len(pool.size),
        pool.ceil_mode,
    )
    assert math.sqrt(m) == pytest.approx(max(jacobian_norms), rel=1e-12)


def test_window_multiplicity_without_overlap_is_one() -> None:
    assert spectral.window_multiplicity((8, 8), (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), False) == 1
    assert spectral.window_multiplicity((7, 7), (3, 3), (1, 1), (1, 1), (1, 1), (1, 1), False) == 9


def test_pooling_refuses_a_window_larger_than_the_padded_input() -> None:
    with pytest.raises(
        ShapeError, match=r"expected the padded input \(3\) to hold the pooling window \(4\)"
    ):
        spectral.avg_pool_norm((3,), (4,), (1,), (0,), (0,), False, True)
    with pytest.raises(ShapeError, match=r"expected 1 kernel each >= 1 but got \(0,\)"):
        spectral.window_multiplicity((3,), (0,), (1,), (0,), (0,), (1,), False)


def test_global_pool_size() -> None:
    assert spectral.global_pool_size((7, 5)) == 35
    assert spectral.global_pool_size((4,)) == 4


# onnxruntime is the runtime lipcert certifies ONNX models with; unlike torch it takes
# asymmetric pads. Its pooling semantics must be the ones the bounds assume.
ASYMMETRIC_POOLS = [
    (n, k, s, pb, pe, ceil)
    for n, k, s, pb, pe, ceil in itertools.product(
        (5, 6), (2, 3), (1, 2, 3), (0, 1, 2), (0, 1, 2), (False, True)
    )
    if pb < k and pe < k and pb != pe
]


def _onnx_pool(op_type: str, n: int, attributes: dict[str, Any], outputs: list[str]) -> Any:
    """An onnxruntime session running one 1-D pooling node on float inputs (N, 1, n)."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], outputs, **attributes)
    types = {"y": TensorProto.FLOAT, "indices": TensorProto.INT64}
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, n])],
        [helper.make_tensor_value_info(name, types[name], None) for name in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl", "excl"])
def test_avg_pool_norm_matches_onnxruntime_with_asymmetric_pads(count_include_pad: bool) -> None:
    for n, k, s, pb, pe, ceil in ASYMMETRIC_POOLS:
        attributes = {
            "kernel_shape": [k],
            "strides": [s],
            "pads": [pb, pe],
            "ceil_mode": int(ceil),
            "count_include_pad": int(count_include_pad),
        }
        session = _onnx_pool("AveragePool", n, attributes, ["y"])
        pooled = session.run(None, {"x": np.eye(n, dtype=np.float32).reshape(n, 1, n)})[0]
        # Entries are 1 / divisor in float32: recover the divisors to rebuild it in float64.
        entries = pooled[:, 0, :].T.astype(np.float64)
        divisors = np.round(1.0 / np.where(entries > 0, entries, np.inf))
        matrix = np.where(entries > 0, 1.0 / np.maximum(divisors, 1.0), 0.0)
        bound = spectral.avg_pool_norm((n,), (k,), (s,), (pb,), (pe,), ceil, count_include_pad)
        _check_exact(bound, _exact_norm(matrix))


def test_window_multiplicity_matches_onnxruntime_with_asymmetric_pads() -> None:
    rng = np.random.default_rng(5)
    for (n, k, s, pb, pe, ceil), dilation in itertools.product(ASYMMETRIC_POOLS, (1, 2)):
        if n + pb + pe < (k - 1) * dilation + 1:
            continue
        attributes = {
            "kernel_shape": [k],
            "strides": [s],
            "pads": [pb, pe],
            "ceil_mode": int(ceil),
            "dilations": [dilation],
        }
        session = _onnx_pool("MaxPool", n, attributes, ["y", "indices"])
        # A bump at p on small noise: the outputs that select p are the windows holding it.
        bumps = rng.uniform(0, 1e-3, (n, 1, n)).astype(np.float32)
        bumps[np.arange(n), 0, np.arange(n)] = 10.0
        # Indices count over the whole flattened (N, C, n) tensor: item p starts at p * n.
        indices = session.run(None, {"x": bumps})[1][:, 0, :] - n * np.arange(n)[:, np.newaxis]
        most = max(int(np.sum(indices[p] == p)) for p in range(n))
        assert (
            spectral.window_multiplicity((n,), (k,), (s,), (pb,), (pe,), (dilation,), ceil) == most
        )


def test_stride_beyond_the_padded_input_is_one_output_per_axis() -> None:
    """A huge stride (from a hostile file) computes the one output a stride of the padded size
    does: same bound, without grids that grow with the stride."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(3, 2, 3, 3))
    huge = spectral.conv_norm(weight, (8, 8), (2**31 - 1, 2**31 - 1), (1, 1), (1, 1), (1, 1), 1)
    padded = spectral.conv_norm(weight, (8, 8), (10, 10), (1, 1), (1, 1), (1, 1), 1)
    single_output = np.linalg.svd(weight.reshape(3, -1)[:, :], compute_uv=False)[0]
    assert huge == padded
    # the only output reads the top-left 3x3 window, which lies partly in the padding
    assert huge >= float(np.linalg.svd(weight[:, :, 1:, 1:].reshape(3, -1), compute_uv=False)[0])
    assert huge <= single_output * (1 + 1e-9)
