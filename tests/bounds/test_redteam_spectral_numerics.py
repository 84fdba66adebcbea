"""Red-team tests of the numerics under the operator-norm bounds (numeric.py, spectral.py).

Ground truth is computed independently at 60 digits with mpmath from the float weights taken
as exact: sums of squares, and dense operator matrices whose largest singular value is found
in mpmath. Every case is built so that a plausible rounding shortcut would make lipcert's
bound fall below the exact value.
"""

from __future__ import annotations

import mpmath
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds import numeric, spectral
from lipcert.bounds.compose import analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

mpmath.mp.dps = 60

# A float64 whose square is 0.49 times the smallest subnormal: it rounds to zero.
_VANISHING = float(mpmath.sqrt(mpmath.mpf("0.49") * mpmath.mpf(2.0**-1074)))


def _exact_norm(values: np.ndarray) -> mpmath.mpf:
    return mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(v)) ** 2 for v in np.ravel(values)))


def test_sum_of_squares_covers_squares_that_underflow_to_zero() -> None:
    # 1000 squares each just under half the smallest subnormal round to 0; one ulp above the
    # computed 0 was the bound: sqrt(2^-1074) = 2.2e-162 against the exact 4.9e-161.
    values = np.full(1000, _VANISHING)
    assert numeric.norm_up(values) >= _exact_norm(values)
    rows = numeric.sum_of_squares_up(values.reshape(4, 250), axis=1)
    exact_row = mpmath.fsum(mpmath.mpf(_VANISHING) ** 2 for _ in range(250))
    assert all(mpmath.mpf(float(r)) >= exact_row for r in rows)


def test_sum_of_squares_stays_tight_on_ordinary_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(4096)
    exact = _exact_norm(values)
    bound = numeric.norm_up(values)
    assert exact <= bound <= exact * (1 + 1e-10)


def _double_mul_model(constant: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "c"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, list(constant.shape))],
        [numpy_helper.from_array(constant, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_broadcast_mul_by_tiny_float64_constant_is_not_under_bounded() -> None:
    # x (1 x 1) * c (1 x 1000): the gain is ||c||_2 = 4.9e-161; the sum of squares of c
    # underflowed to zero and the composed bound was 3.1e-162, 15x too small.
    constant = np.full((1, 1000), _VANISHING)
    graph = load_from_proto(
        _double_mul_model(constant), LoadOptions(), source="test", fmt="onnx"
    ).graph
    bound = analyse(graph).tensor_bounds[graph.output_name]
    assert bound >= _exact_norm(constant)


def _sandwich_truth(first: np.ndarray, second: np.ndarray) -> mpmath.mpf:
    """max over slopes L in {0, 1}^h of ||W2 L W1|| (the supremum over the box [0, 1]^h of
    a convex function is at a vertex), at 60 digits."""
    hidden = first.shape[0]
    best = mpmath.mpf(0)
    for mask in range(1, 2**hidden):
        keep = [i for i in range(hidden) if mask >> i & 1]
        product = mpmath.matrix(second[:, keep].tolist()) * mpmath.matrix(first[keep].tolist())
        gram = product.T * product
        best = max(best, mpmath.sqrt(max(mpmath.eigsy(gram, eigvals_only=True))))
    return best


def test_lipsdp_on_float64_weights_out_of_squaring_range_does_not_crash() -> None:
    # Weights of 1e-160 (or 1e150) in a float64 model: the Gram products of the LipSDP search
    # underflow (overflow), eigvalsh raised LinAlgError 'Eigenvalues did not converge' out of
    # the rule. Now no certificate from that T (the product of norms still bounds) or a sound one.
    from lipcert.bounds.rules.blocks import lipsdp_bound

    rng = np.random.default_rng(0)
    for scale in (1e-160, 1e150):
        first = rng.standard_normal((3, 3)) * scale
        second = rng.standard_normal((3, 3)) * scale
        with np.errstate(all="ignore"):
            found = lipsdp_bound(first, second)
        if found is not None:
            assert found[0] >= _sandwich_truth(first, second)


# --- operator norms against 40-digit SVDs of the dense operator ------------------------------


def _exact_sigma(matrix: np.ndarray) -> mpmath.mpf:
    """Largest singular value of the float64 matrix taken as exact (eigenvalues of its
    smaller Gram matrix formed and diagonalised in mpmath)."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape[0] < a.shape[1]:
        a = a.T
    exact = mpmath.matrix(a.tolist())
    with mpmath.workdps(40):
        return mpmath.sqrt(max(mpmath.eigsy(exact.T * exact, eigvals_only=True)))


def _adversarial_matrix(kind: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind == "orthogonal":  # every singular value 1: LAPACK's result lands either side
        return np.linalg.qr(rng.standard_normal((24, 24)))[0]
    if kind == "clustered":  # singular values 1 + O(1e-15)
        u = np.linalg.qr(rng.standard_normal((20, 20)))[0]
        v = np.linalg.qr(rng.standard_normal((20, 20)))[0]
        return (u * (1 + 1e-15 * rng.standard_normal(20))) @ v.T
    if kind == "graded rows":  # rows from 1e-150 to 1
        return rng.standard_normal((16, 16)) * np.logspace(-150, 0, 16)[:, None]
    if kind == "graded columns":  # columns from 1e-30 to 1e30 (_scale_to_unit)
        return rng.standard_normal((16, 16)) * np.logspace(-30, 30, 16)[None, :]
    if kind == "mixed 1e30 and 1":
        m = rng.standard_normal((12, 12))
        m[rng.random((12, 12)) < 0.5] *= 1e-30
        return m * 1e30
    if kind == "subnormal":
        return rng.standard_normal((10, 10)) * 1e-310
    if kind == "hilbert":
        index = np.arange(30)
        return 1.0 / (index[:, None] + index[None, :] + 1)
    if kind == "rank one float32":
        return np.outer(rng.standard_normal(20), rng.standard_normal(30)).astype(np.float32)
    raise AssertionError(kind)


# With the SVD's allowance and the ulp of the unscaling removed (sigma returned as
# computed), the orthogonal, clustered, graded-columns, mixed, subnormal and Hilbert
# matrices fell below their exact norm (by 4e-17 to 1.1e-15 relative).
@pytest.mark.parametrize(
    "kind",
    [
        "orthogonal",
        "clustered",
        "graded rows",
        "graded columns",
        "mixed 1e30 and 1",
        "subnormal",
        "hilbert",
        "rank one float32",
    ],
)
def test_matrix_norm_holds_and_stays_tight_on_adversarial_spectra(kind: str) -> None:
    matrix = _adversarial_matrix(kind)
    exact = _exact_sigma(matrix)
    bound = spectral.matrix_norm(matrix)
    assert exact <= bound <= exact * (1 + 1e-10)


def test_gram_path_above_2048_holds_on_clustered_singular_values() -> None:
    # 65 copies of a 32 x 32 matrix with singular values 1 + O(1e-13) on the diagonal: the
    # smaller side 2080 takes the Gram path; the exact norm is the block's.
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.standard_normal((32, 32)))[0]
    block = (q * (1 + 1e-13 * rng.standard_normal(32))) @ q.T
    exact = _exact_sigma(block)
    bound = spectral.matrix_norm(np.kron(np.eye(65), block))
    assert exact <= bound <= exact * (1 + 1e-8)


def _paraunitary(channels: int, taps: int, rng: np.random.Generator) -> np.ndarray:
    """A kernel (C, C, taps) whose symbol is unitary at every frequency up to rounding
    (products of I - P + P z, P a rank-one projection): all singular values of all
    frequencies cluster at 1, the norm is attained (nearly) everywhere."""
    w = np.linalg.qr(rng.standard_normal((channels, channels)))[0][:, :, None]
    for _ in range(taps - 1):
        v = rng.standard_normal((channels, 1))
        v /= np.linalg.norm(v)
        p = v @ v.T
        grown = np.zeros((channels, channels, w.shape[2] + 1))
        for t in range(w.shape[2]):
            grown[:, :, t] += (np.eye(channels) - p) @ w[:, :, t]
            grown[:, :, t + 1] += p @ w[:, :, t]
        w = grown
    return w


def _dense_circular_conv1d(w: np.ndarray, n: int, pads: tuple[int, int]) -> np.ndarray:
    c_in = w.shape[1]
    eye = torch.eye(c_in * n, dtype=torch.float64).reshape(c_in * n, c_in, n)
    out = F.conv1d(F.pad(eye, pads, mode="circular"), torch.tensor(w))
    return out.reshape(c_in * n, -1).T.numpy()


# Seeds whose bound fell below the exact norm (by 5e-18 to 1.1e-16) with every allowance of
# the symbol path removed (no SVD/eigenvalue margin, no Gram or symbol error, no ulp steps).
@pytest.mark.parametrize(
    ("seed", "kind"),
    [
        (16, "float32 paraunitary"),
        (4, "float32 paraunitary"),
        (1, "float32 paraunitary"),
        (29, "alternating 1e4"),
        (8, "alternating 1e4"),
        (41, "alternating 1e4"),
    ],
)
def test_circular_conv_holds_on_clustered_and_cancelling_kernels(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    channels, taps = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    n = min(int(rng.choice([5, 7, 11, 13])), 56 // channels)
    if kind == "float32 paraunitary":
        w = _paraunitary(channels, taps, rng).astype(np.float32).astype(np.float64)
    else:  # large taps of alternating sign: the symbol cancels at low frequencies
        w = rng.standard_normal((channels, channels, taps)) * 1e4
        w[:, :, 1::2] *= -1
        w[:, :, 0] += 1e-4
    taps = w.shape[2]
    begin = (taps - 1) // 2
    pads = (begin, taps - 1 - begin)
    exact = _exact_sigma(_dense_circular_conv1d(w, n, pads))
    bound = spectral.conv_norm(w, (n,), (1,), pads[:1], pads[1:], (1,), 1, circular=True)
    assert exact <= bound <= exact * (1 + 1e-10)


# --- a block whose norm cancels: I + C2 C1 with C2 nearly -C1^-1 ---------------------------


def _dense_circular_conv2d(w: np.ndarray, n: int) -> np.ndarray:
    c_in = w.shape[1]
    eye = torch.eye(c_in * n * n, dtype=torch.float64).reshape(c_in * n * n, c_in, n, n)
    out = F.conv2d(F.pad(eye, (1, 1, 1, 1), mode="circular"), torch.tensor(w))
    return out.reshape(c_in * n * n, -1).T.numpy()


def _cancelling_block(w1: np.ndarray, w2: np.ndarray, n: int) -> onnx.ModelProto:
    c = w1.shape[0]
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    nodes = [
        helper.make_node("Pad", ["x", "p"], ["xp"], mode="wrap", name="pad1"),
        helper.make_node("Conv", ["xp", "w1"], ["h"], name="conv1"),
        helper.make_node("Pad", ["h", "p"], ["hp"], mode="wrap", name="pad2"),
        helper.make_node("Conv", ["hp", "w2"], ["z"], name="conv2"),
        helper.make_node("Add", ["x", "z"], ["y"], name="add"),
    ]
    float32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", float32, [1, c, n, n])],
        [helper.make_tensor_value_info("y", float32, [1, c, n, n])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(pads, "p"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    return model


# x + conv2(conv1(x)) with conv2's centre tap -A^-1 and conv1's A plus taps of 1e-6: the
# block's norm is about 1e-5 while its factors' are about cond(A). With the symbol path's
# error slack removed (affine_operator: add_up(largest, 0 * slack)) the cond = 1 blocks fell
# below their exact norm (by 5e-13 and 6e-12 relative).
@pytest.mark.parametrize(("seed", "cond"), [(0, 1.0), (1, 1.0), (0, 1e5)])
def test_block_whose_norm_cancels_is_not_under_bounded(seed: int, cond: float) -> None:
    rng = np.random.default_rng(seed)
    c, n = 3, 5
    u = np.linalg.qr(rng.standard_normal((c, c)))[0]
    v = np.linalg.qr(rng.standard_normal((c, c)))[0]
    a = (u * np.logspace(0, np.log10(cond), c)) @ v.T
    w1 = np.zeros((c, c, 3, 3))
    w1[:, :, 1, 1] = a
    w1 += 1e-6 * rng.standard_normal(w1.shape)
    w2 = np.zeros((c, c, 3, 3))
    w2[:, :, 1, 1] = -np.linalg.inv(a)
    w1, w2 = w1.astype(np.float32), w2.astype(np.float32)
    graph = load_from_proto(
        _cancelling_block(w1, w2, n), LoadOptions(), source="test", fmt="onnx"
    ).graph
    bound = analyse(graph).tensor_bounds[graph.output_name]
    one = _dense_circular_conv2d(w1.astype(np.float64), n)
    two = _dense_circular_conv2d(w2.astype(np.float64), n)
    with mpmath.workdps(40):
        block = mpmath.matrix(two.tolist()) * mpmath.matrix(one.tolist()) + mpmath.eye(c * n * n)
        exact = mpmath.sqrt(max(mpmath.eigsy(block.T * block, eigvals_only=True)))
    assert exact <= bound <= exact * (1 + 1e-4)


@pytest.mark.parametrize("chunk_entries", [1, 4 * 12, 4 * 12 + 11, 1 << 20])
def test_frequency_chunks_of_any_size_keep_the_bound(
    chunk_entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A strided circular conv (2 residues, 2 x 3 channels: 12 entries per frequency) on a
    # grid of 22: 6 frequencies kept (0 .. 5 of the prime 11), in chunks of one, of four and
    # a remainder of two, or all at once. Its third tap is about minus its first, so the
    # norm is reached at the last frequency, in the remainder chunk.
    monkeypatch.setattr(spectral, "_CHUNK_ENTRIES", chunk_entries)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 3, 3))
    w[:, :, 2] = -w[:, :, 0] + 0.01 * rng.standard_normal((2, 3))
    w = w.astype(np.float32).astype(np.float64)
    n = 22
    eye = torch.eye(3 * n, dtype=torch.float64).reshape(3 * n, 3, n)
    dense = F.conv1d(F.pad(eye, (1, 1), mode="circular"), torch.tensor(w), stride=2)
    exact = _exact_sigma(dense.reshape(3 * n, -1).T.numpy())
    bound = spectral.conv_norm(w, (n,), (2,), (1,), (1,), (1,), 1, circular=True)
    assert exact <= bound <= exact * (1 + 1e-10)


# --- norms beyond float64 ------------------------------------------------------------------


def test_norm_beyond_float64_is_infinite_not_a_crash() -> None:
    # ||1.7e308 * ones(4, 4)|| = 6.8e308: math.ldexp in the unscaling raised OverflowError.
    assert spectral.matrix_norm(np.full((4, 4), 1.7e308)) == np.inf
    weight = np.full((2, 2, 3, 3), 1.7e308)
    assert spectral.conv_norm(weight, (4, 4), (1, 1), (1, 1), (1, 1), (1, 1), 1) == np.inf
    assert spectral.matrix_norm(np.full((4, 4), 1e307)) >= 4e307


def test_float64_gemm_whose_norm_overflows_is_refused_naming_the_node() -> None:
    # Was OverflowError 'math range error' (then ValueError from the rounding terms) out of
    # analyse; now one line naming the node.
    graph_proto = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="huge_gemm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 4])],
        [numpy_helper.from_array(np.full((4, 4), 1.7e308), "w")],
    )
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    graph = load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph
    with pytest.raises(UnsupportedOpError, match="huge_gemm"):
        analyse(graph)
