"""Rules for blocks that are Lipschitz as a whole, and for ScatterND and comparisons.

- SLLBlock (lipcert.graph.residual_blocks): y = x - W D s(W^T x + b), bound max(1, ||M||^2 - 1).
- SandwichBlock: y = W2 s(W1 x + b), a one-layer quadratic-constraint (LipSDP) certificate
  verified in float64 with an explicit rounding allowance, or the product of the norms.
- ScatterND of data into a constant at constant, distinct indices: an isometric embedding.
- PiecewiseLinear: a continuous element-wise select tree (N-activation), its largest slope.
Comparisons and Where outside a recognised pattern have no rule: refused, naming the node
(such a select may jump).

Every bound is an L2 operator-norm (Lipschitz) upper bound, computed in float64 and rounded up.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from lipcert.bounds import spectral
from lipcert.bounds.folded import exact_spread
from lipcert.bounds.numeric import (
    FLOAT64_EPS,
    add_up,
    max_abs_up,
    mul_up,
    singular_value_up,
    sqrt_up,
    up,
)
from lipcert.bounds.registry import EXACT, Combine, LayerBound, Rounding, refuse, rule
from lipcert.bounds.rules.linear import abs_conv_gain, constant_input
from lipcert.bounds.verified_psd import eigenvalue_lower_bound
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import Window, window

# Roundings per entry when multipliers (products of several constants) fold into weights.
_FOLDED = 16

# A convolution is written out as a dense matrix (exactly: its entries are copies of kernel
# entries) when its smaller side is at most this, and its size at most _DENSE_ENTRIES.
_DENSE_SIDE = 1024
_DENSE_ENTRIES = 1 << 22


# --- linear parts -----------------------------------------------------------------------------


def _dense_operator(node: Node, graph: Graph) -> np.ndarray:
    """A (out, in) with y = A x + c per sample, for a Gemm or MatMul with constant weight."""
    if node.op == "Gemm":
        if node.attr("transA", 0):
            raise refuse(node, "transA=1 on the data input is not supported")
        weight = constant_input(node, graph, 1, "weight B")
        operator = weight if node.attr("transB", 0) else weight.T
        return float(node.attr("alpha", 1.0)) * operator
    weight = constant_input(node, graph, 1, "weight")
    if weight.ndim != 2:
        raise refuse(node, f"expected a 2-D weight but got shape {weight.shape}")
    return weight.T


def conv_matrix(
    weight: np.ndarray, spatial: tuple[int, ...], win: Window, groups: int
) -> np.ndarray:
    """The zero-padded convolution (ONNX Conv, no bias) as a dense matrix, exactly.

    Rows are output (channel, position) in C order, columns input (channel, position). Each
    entry is one kernel entry or zero (a tap reaches each input position from one output at
    most once), so the matrix holds no rounding error.
    """
    c_out, c_in_group = weight.shape[:2]
    kernel = weight.shape[2:]
    out_sizes = [
        (n + b + e - ((k - 1) * d + 1)) // s + 1
        for n, b, e, k, d, s in zip(
            spatial, win.pads_begin, win.pads_end, kernel, win.dilations, win.strides, strict=True
        )
    ]
    out_count, in_count = math.prod(out_sizes), math.prod(spatial)
    matrix = np.zeros((c_out * out_count, c_in_group * groups * in_count))
    out_grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_sizes], indexing="ij"), axis=-1)
    out_grid = out_grid.reshape(-1, len(spatial))
    per_group = c_out // groups
    channel_out = np.arange(c_out)
    channel_in = (channel_out // per_group)[:, None] * c_in_group + np.arange(c_in_group)[None, :]
    for tap in itertools.product(*[range(k) for k in kernel]):
        positions = out_grid * np.array(win.strides) - np.array(win.pads_begin)
        positions = positions + np.array(tap) * np.array(win.dilations)
        valid = np.all((positions >= 0) & (positions < np.array(spatial)), axis=1)
        if not valid.any():
            continue
        out_flat = np.flatnonzero(valid)
        in_flat = np.ravel_multi_index(tuple(positions[valid].T), spatial)
        rows = channel_out[:, None, None] * out_count + out_flat[None, None, :]
        cols = channel_in[:, :, None] * in_count + in_flat[None, None, :]
        values = weight.reshape(c_out, c_in_group, -1)[:, :, int(np.ravel_multi_index(tap, kernel))]
        full = np.broadcast_shapes(rows.shape, cols.shape)
        matrix[np.broadcast_to(rows, full), np.broadcast_to(cols, full)] = np.broadcast_to(
            values[:, :, None], full
        )
    return matrix


def _small(rows: int, cols: int) -> bool:
    return min(rows, cols) <= _DENSE_SIDE and rows * cols <= _DENSE_ENTRIES


def _conv_parts(node: Node, graph: Graph) -> tuple[np.ndarray, tuple[int, ...], Window, int]:
    weight = constant_input(node, graph, 1, "weight")
    spatial = graph.shape(node.inputs[0])[2:]
    if len(spatial) != weight.ndim - 2:
        raise refuse(node, f"weight {weight.shape} does not match the input {spatial}")
    return (
        weight,
        spatial,
        window(node, spatial, tuple(weight.shape[2:])),
        int(node.attr("group", 1)),
    )


def _scaled_norm_up(values: np.ndarray, factors: int) -> float:
    """||X|| for X computed from exact data by `factors` rounded products per entry.

    Each entry of the computed matrix is within (factors + 1) eps of the exact one, so the
    difference has spectral norm at most (factors + 1) eps ||X~||_F <= that times
    sqrt(min side) ||X~||_2; the allowance below covers it with room to spare.
    """
    norm = _gram_norm_up(values) if min(values.shape) > 256 else spectral.matrix_norm(values)
    margin = 4.0 * (factors + 2) * math.sqrt(min(values.shape)) * FLOAT64_EPS
    return up(norm * (1.0 + margin))


def _gram_norm_up(values: np.ndarray) -> float:
    """Upper bound of ||X||_2 from the largest eigenvalue of the smaller Gram matrix.

    Several times faster than the SVD on wide matrices. Sound (as spectral._gram_norm_up,
    whose analysis this repeats): the computed Gram G~ = fl(X X^T) (k x k, dot products of
    length n) is off by at most (n + 4) eps ||X||_F^2 in spectral norm; eigvalsh is backward
    stable (numeric.singular_value_up); so sigma^2 <= lambda~ (1 + 64 k eps) +
    (n + 4) eps ||X||_F^2, with ||X||_F^2 bounded above by the computed sum of squares times
    1 + (size + 2) eps. X is scaled by a power of two first (exact) to keep clear of overflow.
    """
    x = np.asarray(values, dtype=np.float64)
    largest = float(np.abs(x).max()) if x.size else 0.0
    if largest == 0.0:
        return 0.0
    exponent = math.frexp(largest)[1]
    x = np.ldexp(x, -exponent)
    if x.shape[0] > x.shape[1]:
        x = x.T
    k, n = x.shape
    gram = x @ x.T
    eigenvalue = max(float(np.linalg.eigvalsh(gram)[-1]), 0.0)
    frobenius2 = float(np.sum(x * x)) * (1.0 + (x.size + 2) * FLOAT64_EPS)
    sigma2 = add_up(singular_value_up(eigenvalue, k), mul_up((n + 4) * FLOAT64_EPS, up(frobenius2)))
    try:
        return up(math.ldexp(sqrt_up(sigma2), exponent))
    except OverflowError:  # a norm beyond float64: no finite bound, which the rules refuse
        return math.inf


def _abs_norm_up(values: np.ndarray) -> float:
    """Upper bound of ||X||_2 for X >= 0: sqrt(||X||_1 ||X||_inf) (Hoelder), for the rounding
    allowances, where a cheap bound suffices."""
    columns = float(np.max(np.sum(values, axis=0))) * (1 + (values.shape[0] + 2) * FLOAT64_EPS)
    rows = float(np.max(np.sum(values, axis=1))) * (1 + (values.shape[1] + 2) * FLOAT64_EPS)
    return sqrt_up(mul_up(columns, rows))


def _conv_scaled_norm(
    node: Node, graph: Graph, out_scale: np.ndarray, in_scale: np.ndarray | None, factors: int
) -> tuple[float, str]:
    """Upper bound of ||diag(out_scale) Conv diag(in_scale)||, per-channel scales.

    Exact (dense SVD of the explicit matrix) on small maps, else the FFT bound on the padded
    grid, or the size-free bound when the input size is open.
    """
    weight, spatial, win, groups = _conv_parts(node, graph)
    scaled = weight * out_scale.reshape(-1, *([1] * (weight.ndim - 1)))
    if in_scale is not None:
        if groups != 1:
            raise refuse(node, "a per-channel multiplier before a grouped conv is not supported")
        scaled = scaled * in_scale.reshape(1, -1, *([1] * (weight.ndim - 2)))
    margin = 1.0 + 4.0 * (factors + 2) * FLOAT64_EPS
    if not graph.size_known:
        bound = spectral.conv_norm_size_free(scaled, win.strides, win.dilations, groups)
        return mul_up(bound, margin), "size-free conv bound"
    channels_in = weight.shape[1] * groups
    rows = weight.shape[0] * math.prod(graph.shape(node.outputs[0])[2:])
    cols = channels_in * math.prod(spatial)
    if _small(rows, cols):
        matrix = conv_matrix(scaled, spatial, win, groups)
        return _scaled_norm_up(matrix, factors + 1), "SVD of the explicit conv"
    bound = spectral.conv_norm(
        scaled, spatial, win.strides, win.pads_begin, win.pads_end, win.dilations, groups
    )
    return mul_up(bound, margin), "FFT of the kernel on the padded grid"


def conv_gram_row_bound(
    weight: np.ndarray, diagonal: np.ndarray, dilations: tuple[int, ...], groups: int
) -> float:
    """Upper bound of ||diag(sqrt(d)) Conv||^2 at any input size, padding and stride.

    The zero-padded (or strided) convolution is a restriction of a stride-1 circular one on a
    large enough grid (lipcert.bounds.spectral.conv_norm), so its norm is at most that one's.
    The circular operator's Gram matrix A A^T links output units (i, p) and (j, p') through
    the kernel's cross-correlation ktk_ij(p' - p) = sum_c,t K[i, c, t] K[j, c, t + p' - p]
    (offsets that alias on a small grid add up, which the triangle inequality covers), so
    the row of unit (i, p) of S = diag(sqrt d) A A^T diag(sqrt d) has absolute sum, weighted
    by w constant over positions, at most sum_j sqrt(d_i d_j) s_ij w_j / w_i with
    s_ij = sum over offsets |ktk_ij|. By the weighted Gershgorin (Collatz-Wielandt) bound,
    lambda_max(S) <= max_i (C w)_i / w_i for C = [sqrt(d_i d_j) s_ij] and any w > 0: here w
    is C's Perron vector, where the bound is rho(C). This is the argument of SLL's own
    normalisation (Araujo et al. 2023, with w = q), so SLL layers reach at most 2.

    Rounding: ktk is computed from exact data in float64: |ktk~ - ktk| <= gamma_m (|K| * |K|)
    with m the length of the sums, added to |ktk~|; sqrt(d), products and sums of
    non-negative numbers carry a relative allowance below.
    """
    kernel = np.asarray(weight, dtype=np.float64)
    spatial = kernel.ndim - 2
    if any(d > 1 for d in dilations):
        shape = [(k - 1) * d + 1 for k, d in zip(kernel.shape[2:], dilations, strict=True)]
        dilated = np.zeros(kernel.shape[:2] + tuple(shape))
        strided = (slice(None), slice(None), *(slice(None, None, d) for d in dilations))
        dilated[strided] = kernel
        kernel = dilated
    c_out, c_in_group = kernel.shape[:2]
    per_group = c_out // groups
    full = np.zeros((c_out, c_in_group * groups, *kernel.shape[2:]))
    for g in range(groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        full[rows, g * c_in_group : (g + 1) * c_in_group] = kernel[rows]
    extent = full.shape[2:]
    flat = full.reshape(c_out, -1)
    absolute = np.abs(flat)
    total = np.zeros((c_out, c_out))
    length = full.shape[1] * math.prod(extent)
    gamma = (length + 2) * FLOAT64_EPS / (1 - (length + 2) * FLOAT64_EPS)
    for offset in itertools.product(*[range(-(k - 1), k) for k in extent]):
        # K[i, c, t] against K[j, c, t + offset], over the taps where both exist
        first = tuple(slice(max(0, -o), k - max(0, o)) for o, k in zip(offset, extent, strict=True))
        second = tuple(slice(max(0, o), k + min(0, o)) for o, k in zip(offset, extent, strict=True))
        index_a = (slice(None), slice(None), *first)
        index_b = (slice(None), slice(None), *second)
        a = full[index_a].reshape(c_out, -1)
        b = full[index_b].reshape(c_out, -1)
        correlation = a @ b.T
        slack = np.abs(a) @ np.abs(b).T
        total += np.abs(correlation) + gamma * slack
    del absolute, spatial
    roots = np.sqrt(np.asarray(diagonal, dtype=np.float64))
    matrix = roots[:, None] * total * roots[None, :]
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    weights = np.abs(vectors[:, -1])
    weights = np.maximum(weights, max(float(weights.max()), 1e-300) * 1e-8)
    ratios = (matrix @ weights) / weights
    margin = 1.0 + 8.0 * (len(extent) * 0 + c_out + 4 * math.prod(extent) + 16) * FLOAT64_EPS
    del values
    return mul_up(float(ratios.max()), margin)


def _bias_norm(node: Node, graph: Graph) -> float:
    """Norm of the constants a block adds (biases of its ops, a Gemm's times |beta|, and
    Add/Sub of constants)."""
    total = 0.0
    for inner in node.body:
        constants = [n for n in inner.inputs if n and graph.is_constant(n)]
        if inner.op in ("Add", "Sub") or (inner.op in ("Conv", "Gemm", "ConvTranspose")):
            for name in constants[1:] if inner.op != "Add" and inner.op != "Sub" else constants:
                value = np.abs(np.asarray(graph.constant(name), dtype=np.float64))
                if inner.op == "Gemm":  # Gemm adds beta C
                    value = value * abs(float(inner.attr("beta", 1.0)))
                shape = graph.shape(inner.outputs[0])
                if inner.op == "Conv" or inner.op == "ConvTranspose":
                    value = value.reshape(-1, *([1] * (len(shape) - 2)))
                try:
                    full = np.broadcast_to(value, shape)
                except ValueError:
                    full = value
                total = add_up(total, mul_up(float(np.linalg.norm(full)), 1.0 + 1e-12))
    return total


def _abs_gain(node: Node, graph: Graph) -> tuple[float, int]:
    """(norm of the op with absolute weights, length of its dot products)."""
    if node.op in ("Gemm", "MatMul"):
        operator = np.abs(_dense_operator(node, graph))
        return _abs_norm_up(operator), operator.shape[1]
    weight = constant_input(node, graph, 1, "weight")
    groups = int(node.attr("group", 1))
    if node.op == "ConvTranspose":
        # the adjoint of the Conv with this weight: same absolute gain; each output sums
        # C_out/groups * taps products of the transposed layout, at most this many.
        return abs_conv_gain(weight, groups), int(np.prod(weight.shape)) // groups
    return abs_conv_gain(weight, groups), int(np.prod(weight.shape[1:]))


def _two_layer_rounding(
    node: Node, graph: Graph, to_output: float, hidden_gain: float, max_diagonal: float
) -> Rounding:
    """Rounding of z = A1 x + b, h = D s(z) (D the product of the multipliers), y = A2 h.

    `to_output` bounds ||A2 D|| (an error in z reaches y through it, s having slopes <= 1),
    `hidden_gain` bounds ||D A1|| (so ||h|| <= hidden_gain ||x|| + max|D| ||b||). The first
    op's sums err by gamma_n1 |A1| |x| (norm <= gamma_n1 G1 ||x||, G1 the norm of |A1|), the
    second's by gamma_n2 G2 ||h||; the multipliers, bias additions and the activation add a
    few relative roundings of the hidden values, carried by G2 too (8 more operations in the
    count). Constants (biases) enter like x with their norm.
    Gradual underflow: a rounding that lands among the subnormals errs by up to 2^-150
    absolute instead; with terms N >= n1, n2, 8, an absolute sqrt(m) 2^-126 per hidden
    stage, entering like a bias (m the largest tensor of the body), gives gamma_N times it
    >= N sqrt(m) 2^-150: the z stage reaches y through `to_output`, the hidden stage through
    G2 max|D|; y's own (lipcert.bounds.registry.with_underflow) is added for every node.
    """
    first, second = node.attr("first"), node.attr("second")
    gain1, n1 = _abs_gain(first, graph)
    gain2, n2 = _abs_gain(second, graph)
    input_gain = add_up(mul_up(to_output, gain1), mul_up(gain2, hidden_gain))
    shapes = [graph.shapes.get(inner.outputs[0]) for inner in node.body if inner.outputs]
    largest = max((math.prod(shape[1:]) for shape in shapes if shape), default=1)
    underflow = mul_up(sqrt_up(max(largest, 1)), 2.0**-126)
    biases = add_up(_bias_norm(node, graph), underflow)
    offset = mul_up(add_up(to_output, mul_up(gain2, max(max_diagonal, 1.0))), biases)
    return Rounding(terms=max(n1, n2) + 8, input_gain=input_gain, output_gain=1.0, offset=offset)


# --- SLL / CPL --------------------------------------------------------------------------------


@rule("SLLBlock")
def sll_block(node: Node, graph: Graph) -> LayerBound:
    """y = x - W D s(W^T x + b), D >= 0 diagonal, s with slopes in [0, 1].

    Proof. The Jacobian (almost everywhere, and every Clarke Jacobian) is I - W D L W^T with
    L = diag(s'(.)) in [0, 1]: I - M L M^T with M = W D^(1/2), diagonals commuting. M L M^T
    is symmetric with 0 <= M L M^T <= M M^T, so the symmetric Jacobian has its eigenvalues in
    [1 - ||M||^2, 1] and norm at most max(1, ||M||^2 - 1). The function is Lipschitz with the
    supremum of its Jacobian norms (it is piecewise smooth and continuous).

    ||M|| = ||D^(1/2) W^T||, the first op with its output units scaled by sqrt(d): an exact
    SVD for dense layers and small convs, the FFT bound on the padded grid otherwise. The
    bound max(1, ||M||^2 - 1) is attained over L in [0, 1]^n (L = 0 and L = I); it is the true
    constant when the activation reaches both ends on some inputs (upper bound otherwise).
    """
    diagonal = np.asarray(node.attr("diagonal"), dtype=np.float64)
    if np.any(diagonal < 0) or not np.all(np.isfinite(diagonal)):
        raise refuse(node, "the diagonal of an SLL block must be finite and non-negative")
    first = node.attr("first")
    factors = int(node.attr("factors", 0)) + 2
    roots = np.sqrt(diagonal)
    if node.attr("kind") == "dense":
        operator = roots[:, None] * _dense_operator(first, graph)
        norm = _scaled_norm_up(operator, factors)
        how = "SVD"
    else:
        weight, _, win, groups = _conv_parts(first, graph)
        margin = 1.0 + 4.0 * (factors + 2) * FLOAT64_EPS
        squared = mul_up(conv_gram_row_bound(weight, diagonal, win.dilations, groups), margin)
        norm, how = sqrt_up(squared), "weighted row sums of |W^T W|, any size"
        if squared > 2.001:
            # Above 2 (beyond rounding) the bound exceeds 1 and the norm itself may do better.
            other, other_how = _conv_scaled_norm(first, graph, roots, None, factors)
            if other < norm:
                norm, how = other, other_how
    squared = mul_up(norm, norm)
    factor = max(1.0, up(squared - 1.0))
    method = f"max(1, ||W D^1/2||^2 - 1), ||W D^1/2||^2 <= {squared:.6g} ({how})"
    max_d = max_abs_up(diagonal)
    eta = exact_spread(node, graph, _multipliers(node, graph) + 1)
    if eta > 0:
        # Constants the model computes (lipcert.bounds.folded): the exact W and D are within
        # eta of the float64 ones entrywise (D a product of the multipliers, W one more), so
        # M_e = W_e D_e^1/2 and M_e' (the second op's, its transpose in float64) are within
        # a = eta || |W| || sqrt(max d) of M. The exact Jacobian I - M_e' L M_e^T is within
        # ||(M_e' - M_e) L M_e^T|| <= 2 a (||M|| + a) of I - M_e L M_e^T, whose norm is at
        # most max(1, (||M|| + a)^2 - 1) (the proof above).
        spread = mul_up(eta, _abs_gain(first, graph)[0], sqrt_up(max_d))
        moved = add_up(norm, spread)
        factor = add_up(max(1.0, up(mul_up(moved, moved) - 1.0)), mul_up(2.0, spread, moved))
        method += f", with the exact constants computed in the model (within {eta:.3g})"
    # ||W D|| <= ||W D^1/2|| sqrt(max d), and the same for ||D W^T||
    gain = mul_up(norm, sqrt_up(max_d))
    rounding = _two_layer_rounding(node, graph, gain, gain, max_d)
    rounding = Rounding(
        terms=rounding.terms + 1,
        input_gain=add_up(rounding.input_gain, 1.0),
        output_gain=1.0,
        offset=rounding.offset,
    )
    return LayerBound(factor, method, exact=False, rounding=rounding)


def _multipliers(node: Node, graph: Graph) -> int:
    """The nodes of a block's body, less its two linear ops, that read a constant: each may
    bring one constant factor (a Mul or Div multiplier; a computed activation slope, within
    [0, 1] in float64, moves L by as much), shifts counted too, which only adds margin."""
    linear = (id(node.attr("first")), id(node.attr("second")))
    return sum(
        1
        for inner in node.body
        if id(inner) not in linear and any(n and graph.is_constant(n) for n in inner.inputs)
    )


# --- Sandwich ---------------------------------------------------------------------------------


def lipsdp_bound(
    first: np.ndarray, second: np.ndarray, hint: np.ndarray | None = None
) -> tuple[float, str] | None:
    """Upper bound of the Lipschitz constant of x -> W2 s(W1 x + b), s slopes in [0, 1].

    Proof (one-layer LipSDP, Fazlyab et al. 2019). For two inputs, let v = W1 dx and
    w = s(z) - s(z') the change of the activations: w_i = l_i v_i with l_i in [0, 1], so
    w_i (v_i - w_i) >= 0. For a diagonal T >= 0 and gamma > 0,
        gamma^2 |dx|^2 - |W2 w|^2 - 2 sum_i t_i w_i (v_i - w_i)
    is the quadratic form of K = [[gamma^2 I, -W1^T T], [-T W1, 2T - W2^T W2]] at (dx, w);
    if K >= 0 then |W2 w| <= gamma |dx|. By the Schur complement (gamma > 0) K >= 0 if and
    only if N = 2T - W2^T W2 - T W1 W1^T T / gamma^2 >= 0.

    Margin: if N + 2 delta T >= 0 for some delta >= 0, then with T' = (1 + delta) T and
    gamma' = (1 + delta) gamma one has 2T' - W2^T W2 - T' W1 W1^T T' / gamma'^2 = N + 2 delta T
    >= 0: the block is gamma (1 + delta)-Lipschitz. With T = c D^2 (D > 0 diagonal) and the
    congruence by D^-1, N + 2 delta T >= 0 iff
        N' = 2c I - Q^T Q / gamma^2 - c^2 P P^T + 2 delta c I >= 0,  P = D W1, Q = W2 D^-1,
    so delta = mu / (2c) for any mu >= -lambda_min(N'). mu is bounded soundly: a guaranteed
    lower bound of lambda_min of the computed N' (a Cholesky factorisation of N' shifted,
    with its backward error bound: Rump, "Verification of positive definiteness", BIT 2006;
    `lipcert.bounds.verified_psd`), minus the error of forming N' from the float data: P, Q
    carry 2 eps relative error per entry and their Gram products gamma_n ||.||_F^2
    (Higham, section 3.5), all bounded by the Frobenius-norm term of `_verify`.

    T is a candidate only (`hint`, from the layer's multipliers: LBDN's Psi^2 is post / pre;
    balancing the norms of W1's rows and W2's columns; or I; its scale c and
    gamma from a search): nothing taken from the search is trusted, only the final check.
    None when no candidate gives a finite bound.
    """
    hidden = first.shape[0]
    if second.shape[1] != hidden or hidden == 0:
        return None
    candidates = []
    if hint is not None and hint.shape == (hidden,) and np.all(np.isfinite(hint) & (hint > 0)):
        candidates.append(("T from the layer's multipliers", np.sqrt(hint)))
    rows = np.linalg.norm(first, axis=1)
    cols = np.linalg.norm(second, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        balanced = np.sqrt(cols / rows)
    if np.all(np.isfinite(balanced)) and np.all(balanced > 0):
        candidates.append(("balanced T", balanced))
    candidates.append(("T = c I", np.ones(hidden)))
    best: tuple[float, str] | None = None
    for label, scales in candidates:
        try:
            result = _lipsdp_with(first, second, scales)
        except np.linalg.LinAlgError:
            # float64 weights whose squares leave the float64 range (entries of 1e-160 or
            # 1e150): no certificate from this T; the product of the norms still bounds.
            result = None
        if result is not None and (best is None or result < best[0]):
            best = (result, label)
    return best


def _lipsdp_with(first: np.ndarray, second: np.ndarray, scales: np.ndarray) -> float | None:
    p = scales[:, None] * first
    q = second / scales[None, :]
    gram_p = p @ p.T
    gram_q = q.T @ q
    values, vectors = np.linalg.eigh(gram_p)
    values = np.maximum(values, 0.0)
    rotated = vectors.T @ gram_q @ vectors
    top = float(values.max()) if values.size else 0.0
    if top <= 0:
        return None

    def gamma_squared(c: float) -> float:
        denominator = 2 * c - c * c * values
        if np.any(denominator <= 0):
            return math.inf
        f = 1.0 / np.sqrt(denominator)
        return float(np.linalg.eigvalsh(f[:, None] * rotated * f[None, :])[-1])

    # gamma^2(c) on (0, 2 / top): golden-section search on log c.
    low, high = math.log(1e-6 / top), math.log(2.0 / top)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = gamma_squared(math.exp(a)), gamma_squared(math.exp(b))
    for _ in range(80):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = gamma_squared(math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = gamma_squared(math.exp(b))
    c = math.exp(a if fa < fb else b)
    found = min(fa, fb)
    if not math.isfinite(found) or found <= 0:
        return None
    gamma2 = found * (1 + 1e-12)
    return _verify(p, q, c, gamma2)


def _verify(p: np.ndarray, q: np.ndarray, c: float, gamma2: float) -> float | None:
    """gamma (1 + mu / 2c) with mu >= -lambda_min(2c I - Q^T Q / gamma^2 - c^2 P P^T).

    lambda_min of the computed matrix is bounded below by a Cholesky factorisation
    (`lipcert.bounds.verified_psd`: Rump's verification of positive definiteness, from
    the backward error of Cholesky), not by an eigenvalue routine's estimate; None when
    that bound cannot be had. The matrix computed differs from the exact one by `formed`
    at most in the 2-norm (see lipsdp_bound).
    """
    hidden = p.shape[0]
    length = max(p.shape[1], q.shape[0])
    matrix = 2 * c * np.eye(hidden) - (q.T @ q) / gamma2 - (c * c) * (p @ p.T)
    lowest = eigenvalue_lower_bound(matrix)
    if lowest is None:
        return None
    frob_q = float(np.sum(q * q)) * (1 + (q.size + 2) * FLOAT64_EPS)
    frob_p = float(np.sum(p * p)) * (1 + (p.size + 2) * FLOAT64_EPS)
    formed = (length + 16) * FLOAT64_EPS * (frob_q / gamma2 + c * c * frob_p + 2 * c * hidden)
    mu = max(0.0, -lowest) * (1 + 1e-12) + 2 * formed
    gamma = sqrt_up(gamma2)
    return mul_up(gamma, up(1.0 + up(mu / (2 * c)) * (1 + 1e-12)))


@rule("SandwichBlock")
def sandwich_block(node: Node, graph: Graph) -> LayerBound:
    """y = W2 diag(post) s(diag(pre) W1 x + b), s with slopes in [0, 1].

    The multipliers fold into the weights (the Jacobian is W2 post L pre W1 with L diagonal
    in [0, 1], and diagonals commute): W1' = pre W1, W2' = W2 post. The bound is the smaller
    of ||W2'|| ||W1'|| (always sound) and the LipSDP certificate of lipsdp_bound, applied
    to the explicit matrices (dense layers, and convolutions on small maps).
    """
    first, second = node.attr("first"), node.attr("second")
    pre = np.asarray(node.attr("pre"), dtype=np.float64)
    post = np.asarray(node.attr("post"), dtype=np.float64)
    if not (np.all(np.isfinite(pre)) and np.all(np.isfinite(post))):
        raise refuse(node, "its multipliers hold NaN or Inf values")
    matrices: tuple[np.ndarray, np.ndarray] | None = None
    if node.attr("kind") == "dense":
        one = pre[:, None] * _dense_operator(first, graph)
        two = _dense_operator(second, graph) * post[None, :]
        norm1, norm2 = _scaled_norm_up(one, _FOLDED), _scaled_norm_up(two, _FOLDED)
        matrices = (one, two)
    else:
        norm1, _ = _conv_scaled_norm(first, graph, pre, None, _FOLDED)
        ones = np.ones(constant_input(second, graph, 1, "weight").shape[0])
        norm2, _ = _conv_scaled_norm(second, graph, ones, post, _FOLDED)
        matrices = _explicit_conv_pair(node, graph, pre, post)
    product = mul_up(norm1, norm2)
    factor, method = product, "product of the two layers' norms"
    if matrices is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            hint = np.abs(post) / np.abs(pre)
        if matrices[0].shape[0] != hint.size:  # convolutions: one unit per channel and position
            hint = np.repeat(hint, matrices[0].shape[0] // max(hint.size, 1))
        certified = lipsdp_bound(matrices[0], matrices[1], hint=hint)
        if certified is not None:
            # The certificate holds for the float64 matrices, which differ from the exact
            # products of the multipliers and weights by _FOLDED roundings per entry at most:
            # ||W2 L W1 - W2~ L W1~|| <= ||E2|| ||W1|| + ||W2~|| ||E1||, ||E|| <= k eps ||W||_F.
            slack = _FOLDED * FLOAT64_EPS * 1.01
            frob1 = sqrt_up(float(np.sum(matrices[0] ** 2)) * (1 + 1e-12))
            frob2 = sqrt_up(float(np.sum(matrices[1] ** 2)) * (1 + 1e-12))
            allowance = mul_up(slack, add_up(mul_up(frob2, norm1), mul_up(norm2, frob1)))
            certified = (add_up(certified[0], allowance), certified[1])
        if certified is not None and certified[0] < factor:
            factor = certified[0]
            method = f"one-layer LipSDP certificate ({certified[1]}), verified in float64"
    max_pre = max_abs_up(pre) if pre.size else 1.0
    max_post = max_abs_up(post) if post.size else 1.0
    eta = exact_spread(node, graph, _multipliers(node, graph) + 1)
    if eta > 0:
        # Constants the model computes (lipcert.bounds.folded): the exact T1 = pre A1 and
        # T2 = A2 post are within eta of the float64 ones entrywise, so for every L in [0, 1]
        # ||T2e L T1e - T2 L T1|| <= ||T2e - T2|| ||T1e|| + ||T2|| ||T1e - T1||, with
        # ||Ti e - Ti|| <= eta || |Ti| || <= eta max|multipliers| || |Ai| ||.
        abs1 = mul_up(max_pre, _abs_gain(first, graph)[0])
        abs2 = mul_up(max_post, _abs_gain(second, graph)[0])
        move1, move2 = mul_up(eta, abs1), mul_up(eta, abs2)
        factor = add_up(factor, mul_up(move2, add_up(norm1, move1)), mul_up(norm2, move1))
        method += f", with the exact constants computed in the model (within {eta:.3g})"
    # ||A2 pre post|| <= ||A2 post|| max|pre|; ||pre post A1|| <= max|post| ||pre A1||
    rounding = _two_layer_rounding(
        node,
        graph,
        mul_up(norm2, max_pre),
        mul_up(max_post, norm1),
        max_abs_up(pre * post) if pre.size else 1.0,
    )
    return LayerBound(factor, method, exact=False, rounding=rounding)


def _explicit_conv_pair(
    node: Node, graph: Graph, pre: np.ndarray, post: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    first, second = node.attr("first"), node.attr("second")
    if not graph.size_known:
        return None
    parts = []
    for layer in (first, second):
        weight, spatial, win, groups = _conv_parts(layer, graph)
        rows = weight.shape[0] * math.prod(graph.shape(layer.outputs[0])[2:])
        cols = weight.shape[1] * groups * math.prod(spatial)
        if not _small(rows, cols):
            return None
        parts.append(conv_matrix(weight, spatial, win, groups))
    positions = math.prod(graph.shape(first.outputs[0])[2:])
    one = np.repeat(pre, positions)[:, None] * parts[0]
    two = parts[1] * np.repeat(post, positions)[None, :]
    return one, two


# --- ScatterND --------------------------------------------------------------------------------


def _batch_axis(graph: Graph, name: str) -> int:
    """The axis of `name` holding the samples: 0, moved by the Transposes that produced it."""
    producers = graph.producers()
    node = producers.get(name)
    if node is None or node.op != "Transpose" or graph.is_constant(node.inputs[0]):
        return 0
    perm = [int(p) for p in node.attr("perm", [])]
    inner = _batch_axis(graph, node.inputs[0])
    if not perm:
        perm = list(range(len(graph.shape(name))))[::-1]
    return perm.index(inner)


@rule("ScatterND")
def scatter_nd(node: Node, graph: Graph) -> LayerBound:
    """data with the slices at constant, distinct indices replaced by updates.

    With distinct indices every element of updates lands in its own output position and the
    other positions keep data's elements: output = (data on the kept positions, updates on
    the written ones), two disjoint sets of coordinates. So:
    - constant data, updates carrying data (channel zero-padding): an isometric embedding
      plus a constant, norm 1 (reduction none or add; max/min with a constant are
      1-Lipschitz per element; mul scales each written element by its constant);
    - data carrying data, constant updates: a restriction of coordinates, norm <= 1;
    - both carrying data (reduction none): sqrt(L_data^2 + L_updates^2).
    Repeated indices are refused (their order is unspecified, or they sum).
    """
    data, indices, updates = node.inputs[0], node.inputs[1], node.inputs[2]
    reduction = str(node.attr("reduction", "none"))
    if reduction not in ("none", "add", "mul", "max", "min"):
        raise refuse(node, f"unknown reduction {reduction!r}")
    if not graph.is_constant(indices):
        raise refuse(node, "its indices depend on the input")
    data_shape = (
        tuple(np.asarray(graph.constant(data)).shape)
        if graph.is_constant(data)
        else graph.shape(data)
    )
    index = np.asarray(graph.constant(indices)).astype(np.int64)
    depth = index.shape[-1]
    if depth > len(data_shape):
        raise refuse(node, f"index depth {depth} exceeds the rank of the data {data_shape}")
    bounds = np.array(data_shape[:depth])
    flat = index.reshape(-1, depth)
    if np.any(flat < -bounds) or np.any(flat >= bounds):
        raise refuse(node, "an index lies outside the data")
    flat = np.where(flat < 0, flat + bounds, flat)
    if len(np.unique(flat, axis=0)) != len(flat):
        raise refuse(node, "repeated indices: the result depends on the order of the updates")
    _check_batch(node, graph, index, flat, data_shape)
    data_is_input = not graph.is_constant(data)
    updates_is_input = not graph.is_constant(updates)
    if data_is_input and updates_is_input:
        if reduction == "add":
            return LayerBound(
                1.0,
                "data plus scattered updates",
                exact=False,
                combine=Combine.SUM,
                rounding=Rounding(terms=1, output_gain=1.0),
            )
        if reduction != "none":
            raise refuse(node, f"reduction {reduction!r} of two data tensors is not supported")
        return LayerBound(
            1.0,
            "disjoint kept and written positions",
            exact=False,
            combine=Combine.RSS,
            rounding=EXACT,
        )
    if updates_is_input:
        if reduction == "mul":
            written = np.asarray(graph.constant(data), dtype=np.float64)[tuple(flat.T)]
            gain = max_abs_up(written) if written.size else 0.0
            return LayerBound(
                gain,
                "updates times constant data at distinct indices",
                exact=True,
                rounding=Rounding(terms=1, output_gain=1.0),
            )
        rounding = Rounding(terms=1, output_gain=1.0) if reduction == "add" else EXACT
        return LayerBound(
            1.0,
            "updates written to distinct positions of a constant",
            exact=flat.size > 0,
            rounding=rounding,
        )
    if data_is_input:
        if reduction == "mul":
            value = np.asarray(graph.constant(updates), dtype=np.float64)
            gain = max(1.0, max_abs_up(value)) if value.size else 1.0
            return LayerBound(
                gain,
                "data scaled at distinct positions",
                exact=False,
                rounding=Rounding(terms=1, output_gain=1.0),
            )
        rounding = Rounding(terms=1, output_gain=1.0) if reduction == "add" else EXACT
        return LayerBound(
            1.0, "data with constant positions written", exact=False, rounding=rounding
        )
    raise refuse(node, "expected a data input")


def _check_batch(
    node: Node, graph: Graph, index: np.ndarray, flat: np.ndarray, data_shape: tuple[int, ...]
) -> None:
    """With several samples per batch, each update must stay in its own sample."""
    if graph.batch_size == 1 or graph.is_constant(node.inputs[2]):
        return
    axis = _batch_axis(graph, node.inputs[2])
    leading = index.ndim - 1  # the updates' axes that enumerate the index tuples
    depth = index.shape[-1]
    if axis >= leading:
        # the batch axis lies in the copied slices: it lands on axis depth + (axis - leading)
        if depth + axis - leading != axis:
            raise refuse(node, "it may move elements between the samples of a batch")
        return
    if axis >= depth:
        raise refuse(node, "it may move elements between the samples of a batch")
    source = np.indices(index.shape[:-1])[axis].reshape(-1)
    if not np.array_equal(flat[:, axis], source):
        raise refuse(node, "it moves elements between the samples of a batch")
    del data_shape


# --- element-wise piecewise-affine selects ---------------------------------------------------


@rule("PiecewiseLinear")
def piecewise_linear(node: Node, graph: Graph) -> LayerBound:
    """A select tree on one tensor, element-wise, continuous and piecewise affine (checked
    exactly by lipcert.graph.select_patterns.match_piecewise_affine): Lipschitz with its
    largest absolute slope, computed there in rationals and rounded up."""
    slope = float(node.attr("lipschitz"))
    if not math.isfinite(slope) or slope < 0:
        raise refuse(node, f"unusable slope {slope!r}")
    elements = math.prod(graph.shape(node.outputs[0]))
    constants = [
        np.abs(np.asarray(graph.constant(n), dtype=np.float64))
        for inner in node.body
        for n in inner.inputs
        if n and graph.is_constant(n)
    ]
    largest = max((float(c.max()) for c in constants if c.size), default=0.0)
    rounding = Rounding(
        terms=int(node.attr("arithmetic", 0)) + 1,
        input_gain=max(slope, 1.0) * max(largest, 1.0),
        output_gain=1.0,
        offset=mul_up(largest, largest + 1.0, sqrt_up(elements)),
    )
    pieces = int(node.attr("pieces", 2))
    return LayerBound(
        slope,
        f"continuous piecewise-affine select ({pieces} pieces), largest |slope|",
        exact=True,
        rounding=rounding,
    )
