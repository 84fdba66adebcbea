"""Rules for linear layers: Gemm, MatMul, Conv, ConvTranspose, BatchNormalization.

Weights are read from the graph's constants as float64. Conv bounds are taken at the actual
input size (FFT of the kernel on the padded grid), or by a size-independent method, said in
the method string, when the model leaves its input size open.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lipcert.bounds import spectral
from lipcert.bounds.numeric import add_up, div_up, max_abs_up, mul_up, norm_up, sqrt_up
from lipcert.bounds.registry import LayerBound, Rounding, refuse, rule
from lipcert.graph import Graph, Node
from lipcert.graph.geometry import check_window_output, transpose_window, window


def constant_input(node: Node, graph: Graph, index: int, what: str) -> np.ndarray:
    """Input `index` of `node` as a float64 array; refused when it carries data."""
    if index >= len(node.inputs) or not node.inputs[index]:
        raise refuse(node, f"expected a {what} input")
    name = node.inputs[index]
    if not graph.is_constant(name):
        raise refuse(
            node, f"its {what} {name!r} depends on the input; only constant weights are supported"
        )
    value = np.asarray(graph.constant(name), dtype=np.float64)
    if not np.all(np.isfinite(value)):
        raise refuse(node, f"its {what} {name!r} holds NaN or Inf values")
    if value.size == 0 and what.startswith("weight"):
        raise refuse(node, f"its {what} {name!r} is empty (shape {value.shape!r})")
    return value


def data_input(node: Node, graph: Graph, index: int = 0) -> str:
    name = node.inputs[index] if index < len(node.inputs) else ""
    if not name or graph.is_constant(name):
        raise refuse(node, f"expected input {index} to carry data")
    return name


@rule("Gemm")
def gemm(node: Node, graph: Graph) -> LayerBound:
    """Y = alpha * A @ op(B) + beta * C with constant B: |alpha| * ||op(B)||_2, exact."""
    data_input(node, graph, 0)
    if node.attr("transA", 0):
        raise refuse(node, "transA=1 on the data input is not supported")
    weight = constant_input(node, graph, 1, "weight B")
    if weight.ndim != 2:
        raise refuse(node, f"expected a 2-D weight but got shape {weight.shape}")
    alpha = abs(float(node.attr("alpha", 1.0)))
    norm = spectral.matrix_norm(weight)
    bias = _optional(node, graph, 2)
    beta = abs(float(node.attr("beta", 1.0)))
    # Gradual underflow: the runtime scales the finished sums by alpha, so a product among
    # the subnormals, off by 2^-150 absolute, reaches y times |alpha|. The generic offset
    # sqrt(m) 2^-124 (lipcert.bounds.registry.with_underflow) covers n + 2 such errors per
    # output at gamma_(n+2) >= (n + 2) u; |alpha| times it covers |alpha| n + 2.
    offset = _broadcast_norm(bias, graph.shape(node.outputs[0]), beta)
    if alpha > 1.0:
        outputs = math.prod(graph.shape(node.outputs[0])[1:])
        offset = add_up(offset, mul_up(alpha - 1.0, sqrt_up(outputs), 2.0**-124, 1.0 + 1e-12))
    rounding = Rounding(
        terms=weight.shape[0 if not node.attr("transB", 0) else 1] + 2,
        input_gain=mul_up(alpha, spectral.matrix_norm(np.abs(weight))),
        offset=offset,
    )
    rounding = with_folded_batchnorm(node, graph, rounding)
    return LayerBound(mul_up(alpha, norm), "SVD of the weight", exact=True, rounding=rounding)


@rule("MatMul")
def matmul(node: Node, graph: Graph) -> LayerBound:
    """x @ W or W @ x with constant W, exact.

    A constant W of more than two dimensions is a stack of matrices applied to the matching
    slices of x (block diagonal: the largest norm of the stack). Where x is broadcast over
    the stack, one slice of x meets every matrix of it: the operator is the stack's matrices
    side by side (x @ W) or on top of each other (W @ x), whose norm bounds both cases.
    """
    left, right = node.inputs[0], node.inputs[1]
    if graph.is_constant(left) == graph.is_constant(right):
        raise refuse(
            node, "a product of two data tensors is not Lipschitz; one side must be constant"
        )
    weight_index = 1 if graph.is_constant(right) else 0
    weight = constant_input(node, graph, weight_index, "weight")
    if weight.ndim < 2:
        weight = weight.reshape(-1, 1) if weight_index == 1 else weight.reshape(1, -1)
    matrices = weight.reshape(-1, *weight.shape[-2:])
    if _broadcast_over_stack(graph.shape(node.inputs[1 - weight_index]), weight.shape):
        joined = np.concatenate(list(matrices), axis=1 if weight_index == 1 else 0)
        norm = spectral.matrix_norm(joined)
        abs_norm = spectral.matrix_norm(np.abs(joined))
        method = "SVD of the stacked weights (input broadcast over them)"
    else:
        norm = max(spectral.matrix_norm(m) for m in matrices)
        abs_norm = max(spectral.matrix_norm(np.abs(m)) for m in matrices)
        method = "SVD of the weight"
    terms = weight.shape[-2] if weight_index == 1 else weight.shape[-1]
    # onnxruntime's MatMulScaleFusion moves scalar Mul/Div factors of x (a chain of them)
    # into an alpha applied to the finished sums: a product among the subnormals (off by
    # 2^-150) then reaches y times their product s, which the Mul nodes' own rules never
    # see. As for Gemm's alpha, s - 1 more of the generic offset covers it.
    offset = 0.0
    scale = _scalar_factors_before(graph, node.inputs[1 - weight_index])
    if scale > 1.0:
        outputs = math.prod(graph.shape(node.outputs[0])[1:])
        offset = mul_up(scale - 1.0, sqrt_up(outputs), 2.0**-124, 1.0 + 1e-12)
    input_gain = add_up(abs_norm, _bn_fusion_gain(node, graph, weight, abs_norm))
    rounding = Rounding(terms=int(terms), input_gain=input_gain, offset=offset)
    return LayerBound(norm, method, exact=True, rounding=rounding)


def _bn_gains(bn: Node, graph: Graph) -> np.ndarray:
    """A BatchNormalization's multipliers scale / sqrt(var + eps), in float64."""
    variance = constant_input(bn, graph, 4, "variance") + float(bn.attr("epsilon", 1e-5))
    return constant_input(bn, graph, 1, "scale") / np.sqrt(variance)


def _bn_fusion_gain(node: Node, graph: Graph, weight: np.ndarray, abs_norm: float) -> float:
    """onnxruntime's MatMulBNFusion folds a BatchNormalization reading the MatMul (through
    Reshape / Flatten) into the weights, w g' in float32 (g' = scale / sqrt(var + eps)): a
    product among the subnormals is off by up to h = 2^-150 absolute (h (1 + |w|) when g'
    itself is), moving y by h (||S|| + || |W| ||) ||x|| (S the weight's 0/1 pattern),
    which neither rule sees. The MatMul's error reaches y times the BatchNorm's bound
    max|g| and its gamma is at least u = 2^-24: 2^-126 (||S|| + || |W| ||) / max|g| more
    input gain covers it. 0 when every folded product stays normal."""
    name = node.outputs[0]
    for _ in range(8):
        users = [other for other in graph.nodes if name in other.inputs]
        if len(users) != 1 or users[0].op not in ("Reshape", "Flatten", "BatchNormalization"):
            return 0.0
        if users[0].op == "BatchNormalization":
            break
        name = users[0].outputs[0]
    else:
        return 0.0
    bn = users[0]
    if bn.inputs[0] != name or not all(graph.is_constant(i) for i in bn.inputs[1:5]):
        return 0.0
    gains = np.abs(_bn_gains(bn, graph))
    nonzero = np.abs(weight[weight != 0])
    if not nonzero.size or not np.all(np.isfinite(gains)) or float(np.max(gains)) == 0:
        return 0.0
    smallest = float(np.min(gains))
    if smallest >= 2.0**-120 and float(nonzero.min()) * smallest >= 2.0**-120:
        return 0.0
    # a stack of k patterns side by side or on top of each other: sqrt(k) times the largest
    support = (weight != 0).astype(np.float64).reshape(-1, *weight.shape[-2:])
    ones = mul_up(max(spectral.matrix_norm(m) for m in support), sqrt_up(support.shape[0]))
    inverse = div_up(1.0, float(np.max(gains)))
    return mul_up(2.0**-126, 1.0 + 2.0**-20, add_up(ones, abs_norm), inverse)


def _every_node(graph: Graph) -> list[Node]:
    """The graph's nodes and those of every fused body."""
    found: list[Node] = []
    pending = list(graph.nodes)
    while pending:
        node = pending.pop()
        found.append(node)
        pending.extend(node.body)
    return found


def _scalar_factors_before(graph: Graph, name: str) -> float:
    """The product of |c| (|1 / c| for a Div) over the chain of Mul / Div nodes by a
    one-element constant c that produces `name`."""
    producers = {out: node for node in _every_node(graph) for out in node.outputs}
    scale = 1.0
    for _ in range(64):
        node = producers.get(name)
        if node is None or node.op not in ("Mul", "Div"):
            break
        data = [i for i in node.inputs if i and not graph.is_constant(i)]
        constants = [i for i in node.inputs if i and graph.is_constant(i)]
        if len(data) != 1 or len(constants) != 1:
            break
        value = np.asarray(graph.constant(constants[0]), dtype=np.float64)
        if value.size != 1 or not np.isfinite(value).all():
            break
        factor = abs(float(value.reshape(-1)[0]))
        if node.op == "Div":
            if data[0] != node.inputs[0] or factor == 0:
                break
            factor = 1.0 / factor
        scale = mul_up(scale, factor)
        name = data[0]
    return scale


def _broadcast_over_stack(data_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> bool:
    """True when a matrix of a stacked weight meets a slice of x that others meet too."""
    data_stack, weight_stack = data_shape[:-2], weight_shape[:-2]
    for k in range(1, len(weight_stack) + 1):
        data_size = data_stack[-k] if k <= len(data_stack) else 1
        if weight_stack[-k] > 1 and data_size == 1:
            return True
    return False


def _conv_parts(node: Node, graph: Graph) -> tuple[np.ndarray, tuple[int, ...], int]:
    source = data_input(node, graph, 0)
    weight = constant_input(node, graph, 1, "weight")
    spatial = graph.shape(source)[2:]
    if weight.ndim - 2 not in (1, 2) or len(spatial) != weight.ndim - 2:
        raise refuse(node, f"only 1-D and 2-D convolutions are supported (weight {weight.shape})")
    groups = int(node.attr("group", 1))
    return weight, spatial, groups


@rule("Conv")
def conv(node: Node, graph: Graph) -> LayerBound:
    """Conv with zero padding: FFT bound on the padded grid (upper), or size-independent."""
    weight, spatial, groups = _conv_parts(node, graph)
    win = window(node, spatial, tuple(weight.shape[2:]))
    check_window_output(node, win, spatial, graph.shape(node.outputs[0])[2:])
    rounding = _with_fused_multiplier(
        node, graph, weight, groups, conv_rounding(node, graph, weight, groups)
    )
    if not graph.size_known:
        factor = spectral.conv_norm_size_free(weight, win.strides, win.dilations, groups)
        return LayerBound(factor, SIZE_FREE, exact=False, rounding=rounding)
    factor = spectral.conv_norm(
        weight, spatial, win.strides, win.pads_begin, win.pads_end, win.dilations, groups
    )
    # The zero-padded operator is a restriction of the circular one: an upper bound.
    return LayerBound(
        factor, "FFT of the kernel on the padded grid", exact=False, rounding=rounding
    )


SIZE_FREE = "reshaped kernel norm x sqrt(overlap), any input size"


def _with_fused_multiplier(
    node: Node, graph: Graph, weight: np.ndarray, groups: int, rounding: Rounding
) -> Rounding:
    """onnxruntime's ConvMulFusion folds a Mul by a constant s after the Conv into its
    weights, in float32 (after ConvAddFusion has folded an Add by a constant into the bias,
    and again for a further Mul): a folded weight among the subnormals is off by up to
    h = 2^-150 absolute, not u of itself. Folding s_1 .. s_k in turn, the error at the
    k-th Mul's output is at most sum_j h |S| |x| max|s_(j+1)| .. max|s_k| (S the weight's
    support, |S| the gain of its 0/1 pattern); the Conv's own error reaches there times
    P_k = max|s_1| .. max|s_k| (the Muls' bounds), and its gamma is at least u: so
    2^-126 |S| sum_j 1 / P_j more input gain here covers it. Counted only when some folded
    |w| |s_1 .. s_j| can fall below 2^-120 (the folded bias's roundings are the Add's and
    Mul's own, in their generic allowances). A BatchNormalization in the chain (lipcert
    folds only one right after the layer) is folded the same way by ConvBNFusion: a
    multiplier g = scale / sqrt(var + eps), bounded by max|g|."""
    users_of: dict[str, list[Node]] = {}
    for other in _every_node(graph):
        for name in other.inputs:
            users_of.setdefault(name, []).append(other)
    weights = np.abs(weight[weight != 0])
    if not weights.size:
        return rounding
    smallest, largest, inverse_sum, tiny = float(weights.min()), 1.0, 0.0, False
    name = node.outputs[0]
    for _ in range(64):
        users = users_of.get(name, [])
        if len(users) != 1 or users[0].op not in ("Add", "Sub", "Mul", "BatchNormalization"):
            break
        user = users[0]
        constants = [i for i in user.inputs if i and graph.is_constant(i)]
        if user.op == "BatchNormalization":
            # ConvBNFusion folds it the same way, as a multiplier g = scale / sqrt(var + eps)
            if user.inputs[0] != name or len(constants) != 4 or len(user.inputs) != 5:
                break
            scale = np.abs(_bn_gains(user, graph))
        else:
            if len(constants) != 1 or len(user.inputs) != 2:
                break
            if user.op != "Mul":
                name = user.outputs[0]
                continue
            scale = np.abs(np.asarray(graph.constant(constants[0]), dtype=np.float64))
        name = user.outputs[0]
        scales = scale[scale > 0]
        if not scales.size:
            break
        smallest *= float(scales.min())
        largest = mul_up(largest, float(scales.max()))
        inverse_sum = add_up(inverse_sum, div_up(1.0, largest))
        tiny = tiny or smallest < 2.0**-120
    if not tiny:
        return rounding
    support = (weight != 0).astype(np.float64)
    ones = _layer_abs_gain(node, graph, support, groups)
    extra = mul_up(2.0**-126, 1.0 + 2.0**-20, ones, inverse_sum)
    return dataclasses.replace(rounding, input_gain=add_up(rounding.input_gain, extra))


def abs_conv_gain(
    weight: np.ndarray,
    groups: int,
    strides: tuple[int, ...] | None = None,
    dilations: tuple[int, ...] | None = None,
    circular_size: tuple[int, ...] | None = None,
) -> float:
    """Norm bound of the convolution with |weight| (zero padding, any padding and input size).

    A Conv weight is (C_out, C_in/groups, taps...); a ConvTranspose weight (C_in,
    C_out/groups, taps...) gives the same bound for the transposed convolution, the adjoint
    of a zero-padded strided convolution with that array as its (C_in, C_out/groups) taps.
    Without `strides` the bound is the norm of the sum of the taps, right at every stride.

    With `strides` s and `dilations` d (per axis), taps are grouped by the residue r of
    their offset t * d modulo s, M_r the sum of the |weight| taps of class r, and the bound
    is the norm of [M_r1 M_r2 ...] side by side, i.e. sqrt(||sum_r M_r M_r^T||). Proof:
    output o reads input s o - p + t d (tap t, nothing where that is padding) so the operator
    T with |weight| has non-negative blocks T[o, i] = sum of the K_t with s o - p + t d = i.
    P = T T^T has blocks P[o, o'] = sum_i T[o, i] T[o', i]^T, and for each o, t, t' at most
    one o' has s o' + t' d = s o + t d, and only when (t - t') d = 0 mod s: so
    sum_o' P[o, o'] <= sum over t, t' of one residue class of K_t K_t'^T = G = sum_r M_r
    M_r^T, entrywise. For the Perron vector u > 0 of G + delta J (J all ones), P applied
    to u repeated at every output is <= (G + delta J) u = rho_delta u entrywise, and a
    non-negative matrix with P v <= rho v for some v > 0 has spectral radius <= rho
    (Collatz-Wielandt); P is symmetric positive semi-definite, so ||T||^2 = ||P|| <=
    rho(G + delta J) for every delta > 0, hence <= ||G||. Stride 1 is one class, the sum of
    every tap (frequency zero of the circular operator); groups act on separate channels
    (the largest of the groups' bounds).

    `circular_size` n (the input grid of a circular convolution, whose output o reads
    input (s o - p + t d) mod n, o < ceil(n / s)): s o' = c (mod n) has at most one solution
    o' < ceil(n / s) <= n / gcd(s, n), and one only when gcd(s, n) divides c, so the same
    proof holds with the residues taken modulo gcd(s, n) (one class where s and n are
    coprime).
    """
    rank = weight.ndim - 2
    strides = tuple(int(v) for v in strides) if strides is not None else (1,) * rank
    dilations = tuple(int(v) for v in dilations) if dilations is not None else (1,) * rank
    if len(strides) != rank or len(dilations) != rank or min(strides + dilations, default=1) < 1:
        # Unusable attributes (the rule refuses them elsewhere): the bound valid at any stride.
        strides, dilations = (1,) * rank, (1,) * rank
    periods = list(strides)
    if circular_size is not None:
        if len(circular_size) != rank:
            periods = [1] * rank
        else:
            periods = [math.gcd(s, int(n)) for s, n in zip(strides, circular_size, strict=True)]
    magnitudes = np.abs(np.asarray(weight, dtype=np.float64))
    # Residue class of each tap along each axis, then one summed (C_out, C_in/g) matrix per
    # class of the grid of residues.
    classes: dict[tuple[int, ...], np.ndarray] = {}
    flat = magnitudes.reshape(*magnitudes.shape[:2], -1)
    for position, index in enumerate(np.ndindex(*weight.shape[2:])):
        residue = tuple((t * d) % p for t, d, p in zip(index, dilations, periods, strict=True))
        tap = flat[:, :, position]
        classes[residue] = tap + classes[residue] if residue in classes else tap.copy()
    if not classes:
        return 0.0
    side_by_side = np.concatenate([classes[key] for key in sorted(classes)], axis=1)
    blocks = np.split(side_by_side, groups, axis=0)
    # Each class sum of k non-negative float64 terms is at most (k - 1) 2^-53 relatively
    # below the exact one: the norm is raised by more than that.
    slack = 1.0 + (int(np.prod(weight.shape[2:])) + 2) * 2.0**-52
    return mul_up(max(spectral.matrix_norm(block) for block in blocks), slack)


def conv_rounding(
    node: Node, graph: Graph, weight: np.ndarray, groups: int, *, transposed: bool = False
) -> Rounding:
    """A conv output is a sum of C_in/groups * taps products plus the bias.

    A Conv weight is (C_out, C_in/groups, taps...); a ConvTranspose weight is
    (C_in, C_out/groups, taps...), whose outputs sum over C_in/groups input channels.
    """
    if transposed:
        # Along an axis, the taps t reaching one output satisfy t d = o + pad (mod s): one
        # residue class of t modulo s / gcd(s, d).
        rank = weight.ndim - 2
        strides = [int(v) for v in node.attr("strides", [1] * rank)]
        dilations = [int(v) for v in node.attr("dilations", [1] * rank)]
        taps = math.prod(
            -(-k // (s // math.gcd(s, d)))
            for k, s, d in zip(weight.shape[2:], strides, dilations, strict=True)
        )
        per_output = weight.shape[0] // groups * taps
    else:
        per_output = weight.shape[1] * math.prod(weight.shape[2:])
    bias = _optional(node, graph, 2)
    out_shape = graph.shape(node.outputs[0])
    per_channel = int(np.prod(out_shape[2:]))
    offset = 0.0 if bias is None else mul_up(norm_up(bias), sqrt_up(per_channel))
    rounding = Rounding(
        terms=int(per_output) + 1,
        input_gain=_layer_abs_gain(node, graph, weight, groups),
        offset=offset,
    )
    return with_folded_batchnorm(node, graph, rounding)


def _layer_abs_gain(node: Node, graph: Graph, weight: np.ndarray, groups: int) -> float:
    """abs_conv_gain with the node's strides and dilations (Conv, ConvTranspose: zero
    padding; CircularConv: on its input grid, or as if coprime to the stride where the
    model leaves the size open)."""
    rank = weight.ndim - 2
    strides = tuple(int(v) for v in node.attr("strides", [1] * rank))
    dilations = tuple(int(v) for v in node.attr("dilations", [1] * rank))
    circular_size = None
    if node.op == "CircularConv":
        known = graph.size_known and node.inputs and node.inputs[0]
        circular_size = tuple(graph.shape(node.inputs[0])[2:]) if known else (1,) * rank
    elif node.op not in ("Conv", "ConvTranspose"):
        strides = dilations = (1,) * rank  # not a layout this function knows: any stride
    return abs_conv_gain(weight, groups, strides, dilations, circular_size)


def with_folded_batchnorm(node: Node, graph: Graph, folded: Rounding) -> Rounding:
    """Rounding of a layer with a BatchNorm folded in, however the runtime executes it.

    A runtime may run the folded layer, or the original layer then the BatchNorm: the second
    way rounds the layer's sums (gain max|s| * gain of the original weights) and then the
    BatchNorm's few operations on its output.
    """
    if not node.body or node.body[-1].op != "BatchNormalization":
        return folded
    layer, bn = node.body[0], node.body[-1]
    original = np.asarray(graph.constant(layer.inputs[1]), dtype=np.float64)
    scale = constant_input(bn, graph, 1, "scale") / np.sqrt(
        constant_input(bn, graph, 4, "variance") + float(bn.attr("epsilon", 1e-5))
    )
    if layer.op == "Conv":
        gain = _layer_abs_gain(layer, graph, original, int(layer.attr("group", 1)))
    else:
        gain = mul_up(abs(float(layer.attr("alpha", 1.0))), spectral.matrix_norm(np.abs(original)))
    shift = np.abs(constant_input(bn, graph, 3, "mean") * scale) + np.abs(
        constant_input(bn, graph, 2, "bias")
    )
    out_shape = graph.shape(node.outputs[0])
    shift_norm = _broadcast_norm(shift.reshape(-1, *([1] * (len(out_shape) - 2))), out_shape)
    max_scale = max_abs_up(scale)
    input_gain = max(folded.input_gain, mul_up(max_scale, gain))
    offset = add_up(max(folded.offset, mul_up(max_scale, folded.offset)), shift_norm)
    # Run unfolded, the layer's products among the subnormals (2^-150 each, n of them per
    # output) reach y times |alpha| max|s|; the generic offset sqrt(m) 2^-124 covers n + 2
    # such errors at gamma >= (n + 2) u, |alpha| max|s| times it all of them.
    amplification = mul_up(abs(float(layer.attr("alpha", 1.0))), max_scale)
    if amplification > 1.0:
        outputs = math.prod(out_shape[1:])
        underflow = mul_up(amplification - 1.0, sqrt_up(outputs), 2.0**-124, 1.0 + 1e-12)
        offset = add_up(offset, underflow)
    nonzero = np.abs(original[original != 0])
    smallest_weight = float(nonzero.min()) if nonzero.size else 1.0
    smallest_scale = float(np.min(np.abs(scale)))
    if smallest_scale < 2.0**-120 or smallest_weight * smallest_scale < 2.0**-120:
        # The runtime's scale s' may land among the subnormals, off by up to h = 2^-150
        # absolute, and so may a folded weight w s' with s' normal (onnxruntime's
        # ConvBNFusion multiplies in float32). Folded by the runtime, each non-zero weight
        # w s' is off by h (1 + |w|) and the bias (b - mean) s' + beta by h (|b| + |mean|
        # + 1); run as the layer then the BatchNorm, y moves by h (|t| + |mean|), |t| <=
        # |W| |x| + |b|. With gamma >= 4u: 2^-128 times the gains of |W| and of its
        # support, and of the sizes.
        tiny = mul_up(2.0**-128, 1.0 + 2.0**-20)
        support = (original != 0).astype(np.float64)
        if layer.op == "Conv":
            ones = _layer_abs_gain(layer, graph, support, int(layer.attr("group", 1)))
        else:
            ones = spectral.matrix_norm(support)
        input_gain = add_up(input_gain, mul_up(tiny, add_up(gain, ones)))
        channels = np.abs(constant_input(bn, graph, 3, "mean")).reshape(-1) + 1.0
        layer_bias = _optional(layer, graph, 2)
        if layer_bias is not None:
            beta = abs(float(layer.attr("beta", 1.0))) if layer.op == "Gemm" else 1.0
            channels = channels + beta * max_abs_up(np.asarray(layer_bias))
        sizes = channels.reshape(-1, *([1] * (len(out_shape) - 2)))
        offset = add_up(offset, mul_up(tiny, _broadcast_norm(sizes, out_shape)))
    return Rounding(terms=folded.terms + 4, input_gain=input_gain, output_gain=1.0, offset=offset)


def _optional(node: Node, graph: Graph, index: int) -> np.ndarray | None:
    if index < len(node.inputs) and node.inputs[index]:
        return constant_input(node, graph, index, "bias")
    return None


def _broadcast_norm(value: np.ndarray | None, shape: tuple[int, ...], scale: float = 1.0) -> float:
    """L2 norm of `scale * value` broadcast to `shape`, rounded up."""
    if value is None:
        return 0.0
    return mul_up(norm_up(np.broadcast_to(np.abs(value), shape)), scale)


@rule("CircularConv")
def circular_conv(node: Node, graph: Graph) -> LayerBound:
    """Pad(wrap) + Conv fused: the circular convolution on the input grid, exact."""
    weight, spatial, groups = _conv_parts(node, graph)
    win = window(node, spatial, tuple(weight.shape[2:]))
    # onnxruntime runs the Pad and the Conv: its ConvMulFusion applies as to a Conv
    rounding = _with_fused_multiplier(
        node, graph, weight, groups, conv_rounding(node, graph, weight, groups)
    )
    if not graph.size_known:
        # A circular grid smaller than the kernel wraps several taps onto one input, so the
        # zero-padding overlap count does not hold; each tap still reads an input at most
        # once per output, so sqrt(taps) times the reshaped kernel norm does.
        taps = int(np.prod(weight.shape[2:]))
        reshaped = max(
            spectral.matrix_norm(block.reshape(block.shape[0], -1))
            for block in np.split(weight, groups, axis=0)
        )
        return LayerBound(
            mul_up(sqrt_up(taps), reshaped),
            "sqrt(taps) x reshaped kernel norm, any size",
            exact=False,
            rounding=rounding,
        )
    factor = spectral.conv_norm(
        weight,
        spatial,
        win.strides,
        win.pads_begin,
        win.pads_end,
        win.dilations,
        groups,
        circular=True,
    )
    divisible = all(n % s == 0 for n, s in zip(spatial, win.strides, strict=True))
    return LayerBound(
        factor, "FFT of the kernel on the circular grid", exact=divisible, rounding=rounding
    )


@rule("ConvTranspose")
def conv_transpose(node: Node, graph: Graph) -> LayerBound:
    """The adjoint of the matching Conv: same norm, taken at the output size."""
    source = data_input(node, graph, 0)
    weight = constant_input(node, graph, 1, "weight")
    if weight.ndim - 2 not in (1, 2):
        raise refuse(
            node, f"only 1-D and 2-D transposed convolutions are supported ({weight.shape})"
        )
    groups = int(node.attr("group", 1))
    in_spatial = graph.shape(source)[2:]
    out_spatial = graph.shape(node.outputs[0])[2:]
    win = transpose_window(node, in_spatial, out_spatial, tuple(weight.shape[2:]))
    # Each output sums C_in/groups * taps products: the adjoint's abs gain bounds it too.
    rounding = conv_rounding(node, graph, weight, groups, transposed=True)
    if not graph.size_known:
        factor = spectral.conv_norm_size_free(weight, win.strides, win.dilations, groups)
        return LayerBound(factor, SIZE_FREE, exact=False, rounding=rounding)
    factor = spectral.conv_transpose_norm(
        weight, out_spatial, win.strides, win.pads_begin, win.pads_end, win.dilations, groups
    )
    method = "FFT of the adjoint convolution on the padded grid"
    return LayerBound(factor, method, exact=False, rounding=rounding)


@rule("BatchNormalization")
def batch_normalization(node: Node, graph: Graph) -> LayerBound:
    """Inference-mode BatchNorm left unfolded: max |gamma / sqrt(var + eps)|, exact."""
    data_input(node, graph, 0)
    if node.attr("training_mode", 0):
        raise refuse(node, "training-mode BatchNormalization uses batch statistics")
    if not node.attr("spatial", 1):  # opset 7-8: statistics per position, not per channel
        raise refuse(node, "BatchNormalization with spatial=0 is not supported")
    scale = constant_input(node, graph, 1, "scale")
    variance = constant_input(node, graph, 4, "variance")
    epsilon = float(node.attr("epsilon", 1e-5))
    if np.any(variance + epsilon <= 0):
        raise refuse(node, "variance + epsilon is not positive")
    gains = np.abs(scale) / np.sqrt(variance + epsilon)
    factor = max_abs_up(gains)
    mean = constant_input(node, graph, 3, "mean")
    shift = np.abs(gains * mean) + np.abs(constant_input(node, graph, 2, "bias"))
    shape = graph.shape(node.outputs[0])
    per_channel = shift.reshape(-1, *([1] * (len(shape) - 2)))
    offset = _broadcast_norm(per_channel, shape)
    input_gain = factor
    if float(np.min(gains)) < 2.0**-120:
        # The runtime's gain g' (onnxruntime: scale / sqrt(var + eps), then x g' + (bias -
        # mean g')) may land among the subnormals: off by up to h = 2^-150 absolute, not
        # u of itself, which moves y by h (|x| + |mean|); gamma(4) >= 4u: 2^-128 of each
        # (2^-1024 in float64).
        tiny = mul_up(2.0**-128, 1.0 + 2.0**-20)
        input_gain = add_up(factor, tiny)
        mean_norm = _broadcast_norm(np.abs(mean).reshape(per_channel.shape), shape)
        offset = add_up(offset, mul_up(tiny, mean_norm))
    # The runtime's g' = scale / sqrt(var + eps) takes 3 roundings; x g' one more and
    # (x - mean) g' or x g' - mean g' one or two, + bias one: each of |x g|, |mean g| and
    # |bias| carries at most 7 relative roundings (Higham, Lemma 3.3: gamma_j gamma_k sums
    # within gamma_(j+k)), whichever order the kernel uses.
    rounding = Rounding(terms=7, input_gain=input_gain, offset=offset)
    return LayerBound(factor, "max |gamma / sqrt(var + eps)|", exact=True, rounding=rounding)
