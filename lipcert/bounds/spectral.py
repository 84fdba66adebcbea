"""Operator norms of linear layers: guaranteed upper bounds of the largest singular value.

Every function returns an upper bound of an L2 operator norm (the largest singular value of
the layer as a linear map), computed in float64 and rounded up so that no floating-point error
can make it too small. Where the docstring says *exact*, the bound exceeds the true norm only
by that rounding allowance (about 1e-11 relative or less for realistic layers).

Pure numpy: the bounds must not depend on the framework that runs the model.

Convolutions follow ONNX Conv semantics: cross-correlation, weight of shape
(C_out, C_in / groups, *kernel), spatial input of size n, zero padding (pads_begin, pads_end),
strides and dilations per axis. Output position o of a 1-D conv reads the padded input at
o * s + t * d for the taps t = 0 .. k - 1.
"""

from __future__ import annotations

import math

import numpy as np

from lipcert.bounds import numeric
from lipcert.errors import ModelLoadError, ShapeError

_EPS = numeric.FLOAT64_EPS

# Above this smaller side, a dense SVD costs minutes; the eigenvalues of the smaller Gram
# matrix cost a fraction of that and, with the allowance of _gram_norm_up, stay sound.
_GRAM_MIN_SIDE = 2048

# Upper limit on the complex entries of one batch of frequency matrices (16 bytes each, so
# 16 MiB): large layers are processed in chunks of frequencies. Measured 20-40 % faster than
# chunks 4x larger on CIFAR-sized layers, and memory stays bounded on large ones.
_CHUNK_ENTRIES = 1 << 20


def matrix_norm(w: np.ndarray) -> float:
    """Guaranteed upper bound of the largest singular value of a real 2-D matrix; exact.

    float64 SVD rounded up by LAPACK's backward-error allowance. When the smaller side exceeds
    2048, the largest eigenvalue of the smaller Gram matrix is used instead, with an allowance
    for the rounding of the Gram product itself (see _gram_norm_up).
    """
    a = _finite_float64(w, "matrix")
    if a.ndim != 2:
        raise ShapeError(f"expected a 2-D matrix but got shape {a.shape!r}")
    a, exponent = _scale_to_unit(a)
    if exponent is None:
        return 0.0
    if min(a.shape) > _GRAM_MIN_SIDE:
        bound = _gram_norm_up(a[np.newaxis, np.newaxis])
    else:
        sigma = float(np.linalg.svd(a, compute_uv=False)[0])
        bound = numeric.singular_value_up(sigma, max(a.shape))
    return _unscale(bound, exponent)


def conv_norm(
    weight: np.ndarray,
    input_size: tuple[int, ...],
    strides: tuple[int, ...],
    pads_begin: tuple[int, ...],
    pads_end: tuple[int, ...],
    dilations: tuple[int, ...],
    groups: int,
    circular: bool = False,
) -> float:
    """Guaranteed upper bound of the L2 operator norm of an N-d convolution (no bias).

    The convolution maps inputs of shape (C_in, *input_size). Zero padding (circular=False):
    the bound is the norm of a circular convolution on a grid of n + max(pads_begin, pads_end)
    (or more, up to a multiple of the stride), which contains the zero-padded operator: an
    upper bound, typically a few percent above the exact norm with a 3x3 kernel and tighter
    on large maps, but looser for large or dilated kernels on small maps (see the tests).
    Where the map is so small that fewer patches overlap than in its interior, the patch
    bound of conv_norm_size_free with that smaller overlap is used if it is lower.
    circular=True (PyTorch padding_mode='circular'): pads must sum to the dilated kernel
    extent - 1 on every axis, and the bound is exact, except on an axis whose size the stride
    does not divide, where the stride-1 norm of that axis is used (an upper bound).

    Method (Sedghi et al. 2019, with polyphase regrouping for strides): the operator is
    unitarily equivalent to a block-diagonal matrix with one C_out x (C_in * prod(s)) block per
    frequency of the grid; the norm is the largest of their largest singular values.
    """
    w = _conv_weight(weight, groups)
    n_axes = w.ndim - 2
    size = _axis_values("input_size", input_size, n_axes, minimum=1)
    stride = _axis_values("strides", strides, n_axes, minimum=1)
    begin = _axis_values("pads_begin", pads_begin, n_axes, minimum=0)
    end = _axis_values("pads_end", pads_end, n_axes, minimum=0)
    dilation = _axis_values("dilations", dilations, n_axes, minimum=1)
    if not circular:
        # A stride beyond the padded size leaves one output per axis, as that size does:
        # the same operator, without grids (and memory) that grow with the stride.
        stride = tuple(
            min(s, n + b + e) for s, n, b, e in zip(stride, size, begin, end, strict=True)
        )
    kernel = w.shape[2:]
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True))

    grid: list[int] = []
    phase_stride: list[int] = []
    for axis in range(n_axes):
        n, s, e = size[axis], stride[axis], extent[axis]
        padded = n + begin[axis] + end[axis]
        if circular:
            if begin[axis] + end[axis] != e - 1:
                raise ShapeError(
                    f"circular padding must add the dilated kernel extent - 1 = {e - 1} on axis "
                    f"{axis} but pads are ({begin[axis]}, {end[axis]})"
                )
            # Output o reads x[(o * s - pads_begin + t * d) mod n]: up to a cyclic shift of
            # the input (a permutation) this is the circular convolution on the n grid. When
            # s does not divide n, its rows are a subset of the stride-1 operator's rows.
            grid.append(n)
            phase_stride.append(s if n % s == 0 else 1)
        else:
            if padded < e:
                raise ShapeError(
                    f"expected the padded input ({padded}) to hold the dilated kernel ({e}) on "
                    f"axis {axis}"
                )
            # Zero padding: place x at 0 .. n-1 of a circular grid of size G, the other G - n
            # entries zero. Output o reads x at p = o * s - pb + t * d, -pb <= p < n + pe. If
            # G >= n + max(pb, pe), p mod G is p itself when p falls inside x and lands on a
            # zero otherwise (p < 0: G + p >= G - pb >= n; p >= n: p < n + pe <= G). With G a
            # multiple of s holding all the outputs, the zero-padded conv is thus the strided
            # circular conv on G (outputs at o * s - pb: a cyclic shift) restricted to the
            # embedded inputs and to some of its outputs, so its norm is no larger. The least
            # such G is at most the padded size n + pb + pe rounded up to a multiple of s:
            # fewer frequencies, and on average a little tighter than the padded size.
            outputs = (padded - e) // s + 1
            grid.append(s * max(-(-(n + max(begin[axis], end[axis])) // s), outputs))
            phase_stride.append(s)
    bound = _circular_conv_norm_up(w, groups, tuple(grid), tuple(phase_stride), dilation)
    if not circular:
        # Near the borders fewer patches overlap. On maps hardly larger than the kernel the
        # patch bound can then be the tighter one: exact with a single output (a final conv
        # that reduces the map to 1x1 is a dense layer), where the circulant sees the whole
        # kernel's spectrum.
        covering = window_multiplicity(size, kernel, stride, begin, end, dilation, False)
        if covering < _interior_multiplicity(kernel, stride, dilation):
            bound = min(bound, _patch_bound(w, groups, covering))
    return bound


def conv_norm_size_free(
    weight: np.ndarray, strides: tuple[int, ...], dilations: tuple[int, ...], groups: int
) -> float:
    """Upper bound of the L2 operator norm of a zero-padded convolution, for any input size.

    sqrt(m) * ||W_g reshaped to (C_out/groups, C_in/groups * prod(kernel))||_2, maximised over
    the groups g, where m is the largest number of output positions whose receptive field
    holds one input position: ||conv(x)||^2 is the sum over outputs of ||W_g patch||^2 and
    each input entry appears in at most m patches. Sound for every input size and any zero
    padding, not for circular padding; loose (about 2x), for when the input size is unknown.

    m is the product over axes of ceil(k / (s / gcd(d, s))) (see _interior_multiplicity),
    at most the textbook min(k, ceil(((k - 1) * d + 1) / s)) and sometimes smaller.
    """
    w = _conv_weight(weight, groups)
    n_axes = w.ndim - 2
    stride = _axis_values("strides", strides, n_axes, minimum=1)
    dilation = _axis_values("dilations", dilations, n_axes, minimum=1)
    return _patch_bound(w, groups, _interior_multiplicity(w.shape[2:], stride, dilation))


def conv_transpose_norm(
    weight: np.ndarray,
    output_size: tuple[int, ...],
    strides: tuple[int, ...],
    pads_begin: tuple[int, ...],
    pads_end: tuple[int, ...],
    dilations: tuple[int, ...],
    groups: int,
) -> float:
    """Guaranteed upper bound of the L2 operator norm of an ONNX ConvTranspose (no bias).

    ConvTranspose with weight (C_in, C_out/groups, *kernel) is the adjoint of the Conv with
    the same weight tensor read as (C_out=C_in, C_in/groups=C_out/groups, *kernel), the same
    strides, pads, dilations and groups, acting on inputs of spatial size output_size (the
    transposed conv's output size, output_padding included). An operator and its adjoint have
    the same norm, so this is conv_norm of that Conv: upper bound, tight as conv_norm is.
    """
    return conv_norm(weight, output_size, strides, pads_begin, pads_end, dilations, groups)


def avg_pool_norm(
    input_size: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads_begin: tuple[int, ...],
    pads_end: tuple[int, ...],
    ceil_mode: bool,
    count_include_pad: bool,
) -> float:
    """Exact L2 operator norm (rounded up) of ONNX AveragePool on one channel.

    Channels are pooled independently, so this is also the norm of the whole layer. The 2-D
    operator is the Kronecker product of 1-D averaging matrices (the window and its divisor
    factor over the axes), and the norm of a Kronecker product is the product of the norms.
    Semantics are those of PyTorch and onnxruntime: see _pool_windows.
    """
    n_axes = len(input_size)
    size = _axis_values("input_size", input_size, n_axes, minimum=1)
    kernels = _axis_values("kernel", kernel, n_axes, minimum=1)
    stride = _axis_values("strides", strides, n_axes, minimum=1)
    begin = _axis_values("pads_begin", pads_begin, n_axes, minimum=0)
    end = _axis_values("pads_end", pads_end, n_axes, minimum=0)
    norms = []
    for axis in range(n_axes):
        rows = []
        for start, stop in _pool_windows(
            size[axis], kernels[axis], stride[axis], begin[axis], end[axis], 1, ceil_mode, axis
        ):
            row = np.zeros(size[axis])
            lo, hi = max(start, 0), min(stop, size[axis])
            # The divisor counts the window clipped to the padded range [-pb, n + pe), which
            # is the kernel size except for a ceil-mode window running past the end padding.
            divisor = min(stop, size[axis] + end[axis]) - start if count_include_pad else hi - lo
            if hi > lo:
                row[lo:hi] = 1.0 / divisor
            rows.append(row)
        norms.append(matrix_norm(np.array(rows)))
    return numeric.mul_up(*norms)


def window_multiplicity(
    input_size: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads_begin: tuple[int, ...],
    pads_end: tuple[int, ...],
    dilations: tuple[int, ...],
    ceil_mode: bool,
) -> int:
    """The largest number of pooling windows that hold one input position (exact).

    MaxPool and Lp pooling are sqrt(m)-Lipschitz in L2 with m this number, and no better: a
    bump at a position covered by m windows moves m outputs by its full height. m is the
    product over axes of the 1-D maxima, found by enumerating the windows.
    """
    n_axes = len(input_size)
    size = _axis_values("input_size", input_size, n_axes, minimum=1)
    kernels = _axis_values("kernel", kernel, n_axes, minimum=1)
    stride = _axis_values("strides", strides, n_axes, minimum=1)
    begin = _axis_values("pads_begin", pads_begin, n_axes, minimum=0)
    end = _axis_values("pads_end", pads_end, n_axes, minimum=0)
    dilation = _axis_values("dilations", dilations, n_axes, minimum=1)
    multiplicity = 1
    for axis in range(n_axes):
        n, d = size[axis], dilation[axis]
        counts = np.zeros(n, dtype=np.int64)
        for start, _ in _pool_windows(
            n, kernels[axis], stride[axis], begin[axis], end[axis], d, ceil_mode, axis
        ):
            taps = np.arange(start, start + kernels[axis] * d, d)
            counts[taps[(taps >= 0) & (taps < n)]] += 1
        multiplicity *= int(counts.max())
    return multiplicity


def global_pool_size(input_size: tuple[int, ...]) -> int:
    """Number of positions a global pooling reduces: the product of the spatial sizes.

    GlobalAveragePool has norm 1 / sqrt(this); GlobalMaxPool and global Lp pooling have 1.
    """
    size = _axis_values("input_size", input_size, len(input_size), minimum=1)
    return math.prod(size)


def _interior_multiplicity(
    kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...]
) -> int:
    """The most outputs of a conv that read one input position, on an unbounded map.

    Taps t and t' of one axis reach the same position from two outputs only if (t - t') * d
    is a multiple of s, i.e. if t = t' modulo s / gcd(d, s): ceil(k / (s / gcd(d, s))) per
    axis. This is at most the textbook min(k, ceil(((k - 1) * d + 1) / s)), and smaller for
    instance with k = 2, d = 3, s = 2 (1 instead of 2).
    """
    multiplicity = 1
    for k, s, d in zip(kernel, strides, dilations, strict=True):
        multiplicity *= -(-k // (s // math.gcd(d, s)))
    return multiplicity


def _patch_bound(w: np.ndarray, groups: int, multiplicity: int) -> float:
    """sqrt(m) * max over groups of ||W_g reshaped to (C_out/groups, C_in/groups * taps)||_2.

    An upper bound of a zero-padded conv's norm when no input position lies in more than m
    patches: ||conv(x)||^2 = sum_o ||W_g patch_o||^2 <= ||W_g||^2 * m * ||x||^2.
    """
    out_per_group = w.shape[0] // groups
    largest = 0.0
    for g in range(groups):
        block = w[g * out_per_group : (g + 1) * out_per_group]
        largest = max(largest, matrix_norm(block.reshape(out_per_group, -1)))
    return numeric.mul_up(numeric.sqrt_up(multiplicity), largest)


# --- pooling windows ----------------------------------------------------------------------


def _pool_windows(
    n: int,
    kernel: int,
    stride: int,
    pad_begin: int,
    pad_end: int,
    dilation: int,
    ceil_mode: bool,
    axis: int,
) -> list[tuple[int, int]]:
    """(start, stop) of each 1-D pooling window, in input coordinates (start may be < 0).

    Output length floor((n + pb + pe - extent) / s) + 1, or ceil(...) + 1 in ceil mode, where
    a last window that would start in the end padding is dropped (PyTorch and onnxruntime
    do so; checked against both in the tests). stop = start + extent, unclipped.
    """
    extent = (kernel - 1) * dilation + 1
    span = n + pad_begin + pad_end - extent
    if span < 0:
        raise ShapeError(
            f"expected the padded input ({n + pad_begin + pad_end}) to hold the pooling window "
            f"({extent}) on axis {axis}"
        )
    if ceil_mode:
        count = -(-span // stride) + 1
        if (count - 1) * stride >= n + pad_begin:
            count -= 1
    else:
        count = span // stride + 1
    return [(o * stride - pad_begin, o * stride - pad_begin + extent) for o in range(count)]


# --- circular convolution by the polyphase DFT --------------------------------------------


def _circular_conv_norm_up(
    w: np.ndarray,
    groups: int,
    grid: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
) -> float:
    """Guaranteed upper bound, exact up to rounding, of the strided circular convolution.

    Output o reads x[(o * s + t * d) mod grid] for the taps t on each axis; every grid size is
    a multiple of its stride. Writing t * d = a * s + r (0 <= r < s) and x_r[q] = x[q * s + r],
    output o reads x_r[(o + a) mod grid/s]: a stride-1 circular convolution on the grid / s
    with C_in * prod(s) input channels (polyphase regrouping, a permutation of the input).
    Its norm is the largest singular value of the symbol
        M(f)[o, (r, i)] = sum over taps t with residue r of W[o, i, t] * exp(2πi a(t) f / Q)
    over the frequencies f of the grid Q = grid / s. Taps with a >= Q wrap around through
    the exponent, exactly as the circular operator does, never truncated.

    The symbol is evaluated by a direct DFT (a matrix product with the phases) rather than an
    FFT: the kernel has few taps, so it costs no more, it wraps long kernels exactly instead of
    summing their taps in floating point, and its rounding error has the simple bound used
    below. For a real kernel M(-f) is the complex conjugate of M(f), with the same singular
    values, so only one frequency of each pair +-f is kept.
    """
    w, exponent = _scale_to_unit(w)
    if exponent is None:
        return 0.0
    out_channels, in_per_group = w.shape[0] // groups, w.shape[1]
    kernel = w.shape[2:]
    taps = math.prod(kernel)
    quotient = tuple(g // s for g, s in zip(grid, strides, strict=True))
    residues = math.prod(strides)
    phases = _polyphase_phases(kernel, strides, dilations, quotient)
    frequencies = phases.shape[0]
    # (groups, taps, C_out/groups * C_in/groups), complex so that the product below is one
    # complex GEMM whose output is already laid out frequency-major.
    blocks = w.reshape(groups, out_channels * in_per_group, taps).transpose(0, 2, 1)
    blocks = blocks.astype(np.complex128)

    # Rounding of the symbol: each real and imaginary part is a dot product of T = taps
    # weights with computed cosines and sines (the weights' imaginary parts are exact zeros).
    # The phase fraction is formed exactly in integers and rounded once, so each computed
    # cos/sin is within 32 eps of the exact value (angle within 10 eps, numpy's cos/sin within
    # 4 ulp); the dot product adds gamma_T. Each entry of M(f) is thus off by at most
    # 2 (T + 40) eps * sum_t |W[o, i, t]| in modulus, so ||error||_2 <= ||error||_F <=
    # 2 (T + 40) eps ||A||_F with A[o, i] = sum_t |W[o, i, t]|. The factor 2 more (4 in all)
    # covers the rounding in forming ||A||_F.
    entry_error = 4.0 * (taps + 40) * _EPS
    abs_sums = np.abs(w).reshape(groups, out_channels, in_per_group, taps).sum(axis=3)
    symbol_error = max(
        numeric.mul_up(entry_error, _frobenius_up(abs_sums[g])) for g in range(groups)
    )

    per_frequency = groups * out_channels * in_per_group * residues
    chunk = max(1, _CHUNK_ENTRIES // per_frequency)
    largest = 0.0
    for first in range(0, frequencies, chunk):
        part = phases[first : first + chunk]
        width = part.shape[0]
        symbol = part.reshape(width * residues, taps) @ blocks
        symbol = symbol.reshape(groups * width, residues, out_channels, in_per_group)
        largest = max(largest, _gram_norm_up(symbol))
    return _unscale(numeric.add_up(largest, symbol_error), exponent)


def _polyphase_phases(
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    quotient: tuple[int, ...],
) -> np.ndarray:
    """The symbol's phase factors, a complex array (frequencies, residues, taps).

    Entry [f, r, t] is exp(2πi sum_axes a(t) f / Q) when tap t has residue r, else 0. The
    frequencies are one representative of each pair {f, -f mod Q} (f itself when f = -f).
    """
    n_axes = len(kernel)
    points = np.indices(quotient).reshape(n_axes, -1)
    opposite = (-points) % np.array(quotient)[:, np.newaxis]
    flat = np.ravel_multi_index(tuple(points), quotient)
    flat_opposite = np.ravel_multi_index(tuple(opposite), quotient)
    frequencies = points[:, flat <= flat_opposite]

    tap_index = np.indices(kernel).reshape(n_axes, -1)
    taps = tap_index.shape[1]
    total = math.prod(quotient)
    numerator = np.zeros((frequencies.shape[1], taps), dtype=np.int64)
    residue = np.zeros(taps, dtype=np.int64)
    for axis in range(n_axes):
        offset = tap_index[axis] * dilations[axis]
        shift = offset // strides[axis]
        residue = residue * strides[axis] + offset % strides[axis]
        # sum_axes a f / Q over a common denominator, reduced exactly in integers.
        numerator += np.outer(frequencies[axis], shift) % quotient[axis] * (total // quotient[axis])
    angle = (2.0 * math.pi) * ((numerator % total) / total)
    phases = np.zeros((frequencies.shape[1], math.prod(strides), taps), dtype=np.complex128)
    columns = np.arange(taps)
    phases.real[:, residue, columns] = np.cos(angle)
    phases.imag[:, residue, columns] = np.sin(angle)
    return phases


# --- largest singular values in batch -----------------------------------------------------


def _gram_norm_up(blocks: np.ndarray) -> float:
    """Guaranteed upper bound, exact up to rounding, of the largest singular value in a batch.

    blocks has shape (b, R, p, q), real or complex: matrix j of the batch is
    M = [X_0 | ... | X_{R-1}] (p x R q) with X_r = blocks[j, r].

    Largest eigenvalue of the smaller Gram matrix (k x k, k = min(p, R q), n = max(p, R q)):
    measured faster than the SVD for every shape a conv layer gives (about the same when
    square, 2-3x for the wide blocks of strided convs). The Gram is formed as conj(M) M^T
    or M^T conj(M), the complex conjugates of M M^H and M^H M, with the same eigenvalues.
    Sound:
    - every computed entry of G is off by at most (n + 4) eps (|M| |M|^H)_ij (complex dot
      products of length n), so ||computed G - G||_2 <= (n + 4) eps ||M||_F^2, and
      ||M||_F^2 = trace G <= computed trace * (1 + 2 (n + k + 2) eps);
    - eigvalsh is backward stable: numeric.singular_value_up with dimension k;
    so sigma^2 <= lambda (1 + 64 k eps) + (n + 4) eps ||M||_F^2. Since ||M||_F^2 <= k sigma^2
    the allowance is at most about (n + 4) k eps / 2 relative to sigma, more than the SVD's:
    the Gram squares sigma, and its rounding scales with ||M||_F^2 rather than sigma^2.
    """
    batch, count, p, q = blocks.shape
    k, n = min(p, count * q), max(p, count * q)
    if batch == 0 or k == 0:
        return 0.0
    conjugate = np.conj(blocks) if np.iscomplexobj(blocks) else blocks
    if p <= count * q:
        # conj(M) M^T = sum_r conj(X_r) X_r^T: the blocks need not be laid side by side.
        gram = conjugate[:, 0] @ blocks[:, 0].transpose(0, 2, 1)
        for r in range(1, count):
            gram += conjugate[:, r] @ blocks[:, r].transpose(0, 2, 1)
    else:
        wide = blocks.transpose(0, 2, 1, 3).reshape(batch, p, count * q)
        wide_conjugate = conjugate.transpose(0, 2, 1, 3).reshape(batch, p, count * q)
        gram = wide.transpose(0, 2, 1) @ wide_conjugate
    trace = float(np.einsum("bii->b", gram).real.max())
    if k == 1:
        eigenvalue = float(gram[:, 0, 0].real.max())
    else:
        eigenvalue = float(np.linalg.eigvalsh(gram)[:, -1].max())
    frobenius2 = numeric.mul_up(max(trace, 0.0), 1.0 + 2 * (n + k + 2) * _EPS)
    sigma2 = numeric.add_up(
        numeric.singular_value_up(max(eigenvalue, 0.0), k),
        numeric.mul_up((n + 4) * _EPS, frobenius2),
    )
    return numeric.sqrt_up(sigma2)


# --- input checks and scaling -------------------------------------------------------------


def _finite_float64(array: np.ndarray, what: str) -> np.ndarray:
    """The array as float64, refusing complex values, NaN and infinity."""
    values = np.asarray(array)
    if np.iscomplexobj(values):
        raise ShapeError(f"expected a real {what} but got dtype {values.dtype!s}")
    values = values.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise ModelLoadError(f"expected a finite {what} but found {bad} NaN or infinite entries")
    return values


def _scale_to_unit(values: np.ndarray) -> tuple[np.ndarray, int | None]:
    """values * 2^-e with max |entry| in [0.5, 1), and e; e is None when all are zero.

    A power-of-two scaling is exact (short of subnormal results, whose error is far below every
    allowance here): it keeps squares and Gram products clear of overflow and underflow.
    """
    if values.size == 0:
        return values, None
    largest = float(np.abs(values).max())
    if largest == 0.0:
        return values, None
    exponent = math.frexp(largest)[1]
    return np.ldexp(values, -exponent), exponent


def _unscale(bound: float, exponent: int) -> float:
    """bound * 2^exponent, rounded up (exact unless it leaves the normal range).

    Infinity where it overflows (math.ldexp raises OverflowError there): the rules refuse a
    bound that is not finite, naming the node."""
    try:
        return numeric.up(math.ldexp(bound, exponent))
    except OverflowError:
        return math.inf


def _frobenius_up(values: np.ndarray) -> float:
    """Upper bound of the Frobenius norm of a float64 array."""
    total = float(np.sum(values * values))
    return numeric.sqrt_up(numeric.mul_up(total, 1.0 + (values.size + 2) * _EPS))


def _axis_values(name: str, values: tuple[int, ...], n_axes: int, minimum: int) -> tuple[int, ...]:
    """The per-axis integers of a layer attribute, checked for count and range."""
    checked = tuple(int(v) for v in values)
    if len(checked) != n_axes or any(v < minimum for v in checked):
        raise ShapeError(f"expected {n_axes} {name} each >= {minimum} but got {tuple(values)!r}")
    return checked


def _conv_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """A convolution weight (C_out, C_in/groups, *kernel) as float64, checked."""
    w = _finite_float64(weight, "convolution weight")
    if w.ndim < 3:
        raise ShapeError(
            f"expected a convolution weight (C_out, C_in/groups, *kernel) but got shape {w.shape!r}"
        )
    _check_groups(w, groups)
    return w


def _check_groups(w: np.ndarray, groups: int) -> None:
    """Refuse a group count that does not divide the output channels."""
    if groups < 1 or w.shape[0] % groups != 0:
        raise ShapeError(
            f"expected groups >= 1 dividing the {w.shape[0]} output channels but got {groups!r}"
        )
