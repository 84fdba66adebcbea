"""Gradual underflow amplified inside one node: square roots, p-th roots, a scaled product.

The generic allowance of lipcert.bounds.registry.with_underflow covers n absolute errors of
2^-150 per output element (float32). Some nodes compute more than that before their output:
the root of an underflowed sum of squares (sqrt(x^2 rounded to 0) = 0 instead of |x|, an
error of |x| itself, not 2^-150), a Householder selector whose products round to zero
(the wrong branch, by 2 |v . z| <= 2^-149 / ||w||), a Gemm's alpha applied after its
underflowed products, a BatchNormalization whose gain scale / sqrt(var + eps) is subnormal
(relative error up to 1 on every output), and onnxruntime's own rewrites: ConvMulFusion
(a Mul's constant folded into the Conv's weights, subnormal) and MatMulScaleFusion (a
scalar Mul before a MatMul applied to its sums). Ground truth: onnxruntime's float32 output
(the session certify runs, default options) against the exact function in rationals (roots
from integer roots, to 2^-400); the allowance is lipcert's certify allowance
(spec.fp_allowance at input_norms(x)); one case runs lipcert's float64 executor against the
float64 allowance. Each case failed without its rule's underflow term (the old ratios are
in the docstrings), and a look-alike at normal magnitudes passes too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.evaluators import input_norms
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

_BITS = 400  # roots are computed to 2^-400, far below any allowance here


def _root(value: Fraction, p: int) -> Fraction:
    """value^(1/p) within 2^-_BITS (below), value >= 0."""
    scaled = math.floor(value * 2 ** (p * _BITS))
    if scaled == 0:
        return Fraction(0)
    guess = 1 << ((scaled.bit_length() + p - 1) // p)  # >= the root
    while True:
        better = ((p - 1) * guess + scaled // guess ** (p - 1)) // p
        if better >= guess:
            break
        guess = better
    return Fraction(guess, 2**_BITS)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _worst_ratio(
    model: onnx.ModelProto,
    exact: Callable[[np.ndarray], list[Fraction]],
    inputs: list[np.ndarray],
    fused: str | None = None,
) -> float:
    """The largest ||onnxruntime - exact|| / allowance over the inputs (sound: <= 1)."""
    shape = tuple(inputs[0].shape[1:])
    loaded = load_from_proto(model, LoadOptions(input_shape=shape), source="m", fmt="onnx")
    analysis = analyse(loaded.graph)
    if fused is not None:
        assert [node.op for node, _ in analysis.node_bounds] == [fused]
    spec = analysis.spec
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        (y,) = session.run(None, {"x": x})
        truth = exact(x[0])
        values = [Fraction(float(v)) for v in y[0].reshape(-1)]
        squared = sum(((v - t) ** 2 for v, t in zip(values, truth, strict=True)), Fraction(0))
        error = float(squared) ** 0.5
        allowance = float(spec.fp_allowance(input_norms(x))[0])
        worst = max(worst, error / allowance)
    return worst


def _fractions(values: np.ndarray) -> list[Fraction]:
    return [Fraction(float(v)) for v in np.asarray(values).reshape(-1)]


def _tiny_and_normal(shape: tuple[int, ...], tiny: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((1, *shape)) * scale).astype(np.float32)
        for scale in (tiny, tiny, 1.0, 1e-3)
    ]


# --- square and p-th roots of sums of powers --------------------------------------------------


def test_reduce_l2_of_underflowed_squares() -> None:
    """ReduceL2 of x ~ 1e-25: every x^2 rounds to 0 in float32, the output is 0 instead of
    ||x|| (an error of ||x||; it was 1e7 times the allowance)."""
    width = 8
    nodes = [helper.make_node("ReduceL2", ["x"], ["y"], axes=[1], keepdims=1)]
    model = _model(nodes, [], [1, width], [1, 1])

    def exact(x: np.ndarray) -> list[Fraction]:
        return [_root(sum((v * v for v in _fractions(x)), Fraction(0)), 2)]

    assert _worst_ratio(model, exact, _tiny_and_normal((width,), 1e-25, 0), "ReduceL2") <= 1.0


def _pool_exact(x: np.ndarray, p: int, kernel: int, global_: bool) -> list[Fraction]:
    values = np.asarray(x, dtype=np.float64)[0]
    size = values.shape[0]
    windows = (
        [values.reshape(-1)]
        if global_
        else [
            values[i : i + kernel, j : j + kernel].reshape(-1)
            for i in range(0, size - kernel + 1, kernel)
            for j in range(0, size - kernel + 1, kernel)
        ]
    )
    return [_root(sum((abs(v) ** p for v in _fractions(w)), Fraction(0)), p) for w in windows]


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("global_", [False, True])
def test_lp_pooling_of_underflowed_powers(p: int, global_: bool) -> None:
    """LpPool / GlobalLpPool, p = 2 and 3, of x ~ 1e-25 (p = 2) or 1e-17 (p = 3): |x|^p
    rounds to 0 or to a few subnormal steps, the root of the sum errs by up to
    (k 2^-150)^(1/p) (it was 1e7 times the allowance for p = 2, 3e8 for p = 3)."""
    size, kernel = 4, 2
    if global_:
        nodes = [helper.make_node("GlobalLpPool", ["x"], ["y"], p=p)]
        out = [1, 1, 1, 1]
    else:
        nodes = [helper.make_node("LpPool", ["x"], ["y"], p=p, kernel_shape=[2, 2], strides=[2, 2])]
        out = [1, 1, 2, 2]
    model = _model(nodes, [], [1, 1, size, size], out)
    tiny = 1e-25 if p == 2 else 1e-17
    inputs = _tiny_and_normal((1, size, size), tiny, p)
    fused = "GlobalLpPool" if global_ else "LpPool"
    ratio = _worst_ratio(model, lambda x: _pool_exact(x, p, kernel, global_), inputs, fused)
    assert ratio <= 1.0


@pytest.mark.parametrize("scale", [1.0, 1e30])
def test_l2_norm_pooling_of_underflowed_squares(scale: float) -> None:
    """sqrt(c AveragePool(x^2)) (deel-torchlip's ScaledL2NormPool2d, fused as L2NormPool) of
    x ~ 1e-25, c = 1 and 1e30: the squares round to 0, or their subnormal error is scaled
    by c before the root (it was 1e7 and 1e22 times the allowance)."""
    size = 4
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(scale, np.float32), "c"),
    ]
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node("AveragePool", ["sq"], ["avg"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["avg", "c"], ["scaled"]),
        helper.make_node("Sqrt", ["scaled"], ["y"]),
    ]
    model = _model(nodes, inits, [1, 1, size, size], [1, 1, 2, 2])
    c = Fraction(float(np.float32(scale)))

    def exact(x: np.ndarray) -> list[Fraction]:
        values = np.asarray(x, dtype=np.float64)[0]
        out = []
        for i in (0, 2):
            for j in (0, 2):
                window = _fractions(values[i : i + 2, j : j + 2])
                out.append(_root(c * sum((v * v for v in window), Fraction(0)) / 4, 2))
        return out

    tiny = 1e-25 if scale == 1.0 else 1e-40
    inputs = _tiny_and_normal((1, size, size), tiny, 3)
    assert _worst_ratio(model, exact, inputs, "L2NormPool") <= 1.0


# --- a Householder selector whose products underflow ------------------------------------------


def _householder_model(w: np.ndarray, reflection: np.ndarray) -> onnx.ModelProto:
    """The reference spelling (masks of s <= 0 and s > 0), one pair, z = (x, y)."""

    def constant(value: float, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32).reshape(1, 1), name)

    inits = [
        constant(w[0], "w0"),
        constant(w[1], "w1"),
        constant(reflection[0, 0], "r00"),
        constant(reflection[0, 1], "r01"),
        constant(reflection[1, 0], "r10"),
        constant(reflection[1, 1], "r11"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "sp"),
    ]
    make = helper.make_node
    nodes = [
        make("Split", ["x", "sp"], ["p", "q"], axis=1),
        make("Mul", ["p", "w0"], ["sp0"]),
        make("Mul", ["q", "w1"], ["sq0"]),
        make("Add", ["sp0", "sq0"], ["s"]),
        make("LessOrEqual", ["s", "zero"], ["k"]),
        make("Greater", ["s", "zero"], ["t"]),
        make("Cast", ["k"], ["kf"], to=1),
        make("Cast", ["t"], ["tf"], to=1),
        make("Mul", ["p", "r00"], ["a0"]),
        make("Mul", ["q", "r01"], ["a1"]),
        make("Add", ["a0", "a1"], ["a2"]),
        make("Mul", ["p", "r10"], ["b0"]),
        make("Mul", ["q", "r11"], ["b1"]),
        make("Add", ["b0", "b1"], ["b2"]),
        make("Mul", ["p", "kf"], ["pa"]),
        make("Mul", ["a2", "tf"], ["ra"]),
        make("Add", ["pa", "ra"], ["a"]),
        make("Mul", ["q", "kf"], ["qb"]),
        make("Mul", ["b2", "tf"], ["rb"]),
        make("Add", ["qb", "rb"], ["b"]),
        make("Concat", ["a", "b"], ["y"], axis=1),
    ]
    return _model(nodes, inits, [1, 2], [1, 2])


@pytest.mark.parametrize("size", [2.0**-20, 1.0])
def test_householder_selector_products_underflow(size: float) -> None:
    """The selector s = w . z of ||w|| = 2^-20, at z = c v (v = w / ||w||, c = 2^-131):
    both products are below 2^-151 and round to 0, so the runtime keeps z where h reflects
    it to -z, an error of 2 ||z|| (it was 3e4 times the allowance). With ||w|| = 1 the
    same points (and a point 2^-150 / ||w|| from the line) stay on the right side."""
    theta = 0.3
    w = (np.array([math.sin(theta / 2), -math.cos(theta / 2)]) * size).astype(np.float32)
    wf = [Fraction(float(v)) for v in w]
    norm2 = wf[0] ** 2 + wf[1] ** 2
    star = [[(i == j) - 2 * wf[i] * wf[j] / norm2 for j in range(2)] for i in range(2)]
    reflection = np.array([[float(v) for v in row] for row in star], np.float32)
    model = _householder_model(w, reflection)

    def exact(z: np.ndarray) -> list[Fraction]:
        x, y = (Fraction(float(v)) for v in z)
        if wf[0] * x + wf[1] * y <= 0:
            return [x, y]
        return [star[0][0] * x + star[0][1] * y, star[1][0] * x + star[1][1] * y]

    v = w.astype(np.float64) / np.linalg.norm(w.astype(np.float64))
    rng = np.random.default_rng(5)
    inputs = [
        (v * scale)[None].astype(np.float32)
        for scale in (2.0**-131, -(2.0**-131), 2.0**-125, 2.0**-140)
    ]
    inputs += [rng.standard_normal((1, 2)).astype(np.float32) * s for s in (1.0, 1e-39)]
    assert _worst_ratio(model, exact, inputs, "Householder") <= 1.0


# --- a scale applied after underflowed products -------------------------------------------------


def test_gemm_alpha_after_underflowed_products() -> None:
    """Gemm(x, B, alpha = 2^40) with B = 2^-40 Q (Q orthogonal), x ~ 1e-30: the products
    x_i b_ij ~ 1e-42 keep three digits, and alpha carries their error to the output (it was
    1e3 times the allowance)."""
    n = 6
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    weight = (q * 2.0**-40).astype(np.float32)
    bias = (rng.standard_normal(n) * 1e-30).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=2.0**40)]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    model = _model(nodes, inits, [1, n], [1, n])
    wf = [[Fraction(float(weight[i, j])) for j in range(n)] for i in range(n)]
    bf = _fractions(bias)

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = _fractions(x)
        return [2**40 * sum(xs[i] * wf[i][j] for i in range(n)) + bf[j] for j in range(n)]

    assert _worst_ratio(model, exact, _tiny_and_normal((n,), 1e-30, 8), "Gemm") <= 1.0


def test_batchnorm_with_a_subnormal_gain() -> None:
    """BatchNormalization of scale 1.3 2^-100, var 2^100: onnxruntime's gain
    scale / sqrt(var + eps) = 1.3 2^-150 rounds to 2^-149 (23 % off), and so does every
    output, and mean * gain in its shift (it was 5e5 times the allowance at x ~ 1e30)."""
    channels = 3
    values = {
        "scale": np.full(channels, 1.3 * 2.0**-100),
        "bias": np.array([0.0, 1e-45, -2e-45]),
        "mean": np.array([1e30, -3e29, 0.0]),
        "var": np.full(channels, 2.0**100),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()]
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-5
        )
    ]
    model = _model(nodes, inits, [1, channels, 2], [1, channels, 2])
    scale, bias, mean = (
        _fractions(values[k].astype(np.float32)) for k in ("scale", "bias", "mean")
    )
    # var + eps rounds to var in float32 and in the exact function it is var + eps: the
    # root of (2^100 + 1e-5) differs from 2^50 by 2^-50 1e-5 / 2, far below the errors here.
    root = Fraction(2**50)

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = _fractions(x)
        return [
            (xs[2 * c + i] - mean[c]) / root * scale[c] + bias[c]
            for c in range(3)
            for i in range(2)
        ]

    rng = np.random.default_rng(9)
    inputs = [
        (rng.standard_normal((1, channels, 2)) * s).astype(np.float32) for s in (1e30, 1e25, 1.0)
    ]
    assert _worst_ratio(model, exact, inputs, "BatchNormalization") <= 1.0


@pytest.mark.parametrize("gain", [1.3 * 2.0**-150, 0.7])
def test_conv_with_a_folded_batchnorm_of_subnormal_gain(gain: float) -> None:
    """Conv then BatchNormalization (folded into one Conv by lipcert, and by onnxruntime's
    optimiser) of gain scale / sqrt(var) = 1.3 2^-150: the runtime's folded weights are
    subnormal, 23 % off (it was 6e5 times the allowance at x ~ 1e30); gain 0.7 passes as
    before. sqrt(var + eps) is taken as 2^50, 1e-5 2^-51 off, far below the errors here."""
    c = 3
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    conv_bias = rng.standard_normal(c).astype(np.float32)
    values = {
        "scale": np.full(c, gain * 2.0**50),
        "bias": np.array([0.0, 1e-45, 0.0]),
        "mean": np.array([0.5, -3.0, 0.0]) * 1e-15,
        "var": np.full(c, 2.0**100),
    }
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(conv_bias, "cb"),
        *(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "cb"], ["t"]),
        helper.make_node("BatchNormalization", ["t", "scale", "bias", "mean", "var"], ["y"]),
    ]
    model = _model(nodes, inits, [1, c, 2, 2], [1, c, 2, 2])
    scale, bias, mean = (
        _fractions(values[k].astype(np.float32)) for k in ("scale", "bias", "mean")
    )
    wf = [[Fraction(float(weight[o, i, 0, 0])) for i in range(c)] for o in range(c)]
    cb = _fractions(conv_bias)

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = [_fractions(x[i]) for i in range(c)]
        return [
            (sum(wf[o][i] * xs[i][k] for i in range(c)) + cb[o] - mean[o]) / 2**50 * scale[o]
            + bias[o]
            for o in range(c)
            for k in range(4)
        ]

    inputs = [(rng.standard_normal((1, c, 2, 2)) * s).astype(np.float32) for s in (1e30, 1e20, 1.0)]
    assert _worst_ratio(model, exact, inputs, "Conv") <= 1.0


# --- float64: lipcert's executor ---------------------------------------------------------------


def test_float64_executor_lp_pooling_of_order_8() -> None:
    """GlobalLpPool, p = 8, of x ~ 1e-44 in lipcert's float64 executor (the allowance at
    u = 2^-53, spec_for_precision): |x|^8 ~ 1e-352 is below float64's subnormals too, and
    the root of the sum errs by about |x| (it was 1e7 times the float64 allowance, 235 times
    the float32 one with onnxruntime)."""
    import torch

    from lipcert.graph.execute import GraphExecutor

    p = 8
    nodes = [helper.make_node("GlobalLpPool", ["x"], ["y"], p=p)]
    model = _model(nodes, [], [1, 1, 2, 2], [1, 1, 1, 1])
    rng = np.random.default_rng(12)
    inputs = [
        (rng.standard_normal((1, 1, 2, 2)) * s).astype(np.float32) for s in (1e-44, 1e-40, 1.0)
    ]
    loaded = load_from_proto(model, LoadOptions(input_shape=(1, 2, 2)), source="m", fmt="onnx")
    analysis = analyse(loaded.graph)
    spec = analysis.spec_for_precision(2.0**-53)
    executor = GraphExecutor(analysis.graph, torch.float64)
    for x in inputs:
        with torch.no_grad():
            (y,) = executor(torch.as_tensor(x.astype(np.float64))).numpy().reshape(-1)
        (truth,) = _pool_exact(x, p, 2, global_=True)
        norm = float(np.linalg.norm(x.astype(np.float64))) * (1 + 1e-12)
        assert abs(float(Fraction(float(y)) - truth)) <= spec.fp_allowance(np.array([norm]))[0]
    assert _worst_ratio(model, lambda x: _pool_exact(x, p, 2, True), inputs) <= 1.0


# --- onnxruntime's fusions that fold a scale ---------------------------------------------------


@pytest.mark.parametrize("scale_first", [True, False])
def test_scalar_scale_moved_after_a_matmul(scale_first: bool) -> None:
    """Mul(x, 2^40) then MatMul(W = 2^-40 Q), x ~ 1e-30: onnxruntime's MatMulScaleFusion
    computes 2^40 (x W), whose products ~1e-42 are subnormal (it was 1.1e3 times the
    allowance). The scale after the MatMul is the same computation as written (passes as
    before)."""
    n = 6
    rng = np.random.default_rng(13)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    weight = (q * 2.0**-40).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(2.0**40, np.float32), "s"),
    ]
    if scale_first:
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["h"]),
            helper.make_node("MatMul", ["h", "w"], ["y"]),
        ]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Mul", ["h", "s"], ["y"]),
        ]
    model = _model(nodes, inits, [1, n], [1, n])
    wf = [[Fraction(float(weight[i, j])) for j in range(n)] for i in range(n)]

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = _fractions(x)
        return [2**40 * sum((xs[i] * wf[i][j] for i in range(n)), Fraction(0)) for j in range(n)]

    assert _worst_ratio(model, exact, _tiny_and_normal((n,), 1e-30, 14)) <= 1.0


@pytest.mark.parametrize("with_add", [False, True])
@pytest.mark.parametrize("multiplier", [1.3 * 2.0**-140, 0.3])
def test_conv_times_a_constant_folded_by_onnxruntime(multiplier: float, with_add: bool) -> None:
    """Conv then Mul by s = 1.3 2^-140 per channel (or Conv, Add of 0.5, Mul: ConvAddFusion
    first): onnxruntime's ConvMulFusion folds w s into the weights in float32, subnormal and
    up to 2^-10 off (it was 750 and 670 times the allowance at x ~ 1e30); s = 0.3 passes as
    before."""
    c = 3
    rng = np.random.default_rng(15)
    weight = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    scale = np.full((c, 1, 1), multiplier, np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(np.full((c, 1, 1), 0.5, np.float32), "a"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], ["t"])]
    if with_add:
        nodes.append(helper.make_node("Add", ["t", "a"], ["t1"]))
    nodes.append(helper.make_node("Mul", ["t1" if with_add else "t", "s"], ["y"]))
    model = _model(nodes, inits, [1, c, 2, 2], [1, c, 2, 2])
    sf = Fraction(float(scale.reshape(-1)[0]))
    shift = Fraction(1, 2) if with_add else Fraction(0)
    wf = [[Fraction(float(weight[o, i, 0, 0])) for i in range(c)] for o in range(c)]

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = [_fractions(x[i]) for i in range(c)]
        return [
            sf * (sum((wf[o][i] * xs[i][k] for i in range(c)), Fraction(0)) + shift)
            for o in range(c)
            for k in range(4)
        ]

    inputs = [(rng.standard_normal((1, c, 2, 2)) * s).astype(np.float32) for s in (1e30, 1e20, 1.0)]
    assert _worst_ratio(model, exact, inputs) <= 1.0


@pytest.mark.parametrize("alpha,gain", [(2.0**40, 1.0), (1.0, 2.0**40), (1.0, 0.5)])
def test_gemm_then_batchnorm_scaling_underflowed_products(alpha: float, gain: float) -> None:
    """Gemm (alpha) then BatchNormalization of gain g, folded into one Gemm by lipcert,
    which onnxruntime runs as written: with W = 2^-40 Q and x ~ 1e-30 the products are
    subnormal and alpha g = 2^40 carries their error to y (it was 360 times the allowance,
    either way); alpha g = 0.5 passes as before."""
    n = 6
    rng = np.random.default_rng(16)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    weight = (q * 2.0**-40).astype(np.float32)
    values = {
        "scale": np.full(n, gain),
        "bias": np.zeros(n),
        "mean": np.zeros(n),
        "var": np.full(n, 1.0),
    }
    inits = [
        numpy_helper.from_array(weight, "w"),
        *(numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["t"], alpha=alpha),
        helper.make_node(
            "BatchNormalization", ["t", "scale", "bias", "mean", "var"], ["y"], epsilon=0.0
        ),
    ]
    model = _model(nodes, inits, [1, n], [1, n])
    wf = [[Fraction(float(weight[i, j])) for j in range(n)] for i in range(n)]
    factor = Fraction(alpha) * Fraction(gain)

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = _fractions(x)
        return [factor * sum((xs[i] * wf[i][j] for i in range(n)), Fraction(0)) for j in range(n)]

    assert _worst_ratio(model, exact, _tiny_and_normal((n,), 1e-30, 17), "Gemm") <= 1.0


def test_identical_convs_keep_their_own_fused_multiplier_inside_an_affine_block() -> None:
    """Conv(W) -> Conv(W) -> Mul(s ~ 2^-140), fused into one AffineBlock: the block shares
    one rule computation between Convs with the same weights, but only the second one's
    output is scaled by s (onnxruntime folds s into its weights, among the subnormals). The
    shared rule was the first Conv's, without that term: 607 times the allowance."""
    c = 3
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    s = np.full((c, 1, 1), 1.3 * 2.0**-140, np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(s, "s")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["t0"]),
        helper.make_node("Conv", ["t0", "w"], ["t"]),
        helper.make_node("Mul", ["t", "s"], ["y"]),
    ]
    model = _model(nodes, inits, [1, c, 2, 2], [1, c, 2, 2])
    loaded = load_from_proto(model, LoadOptions(input_shape=(c, 2, 2)), source="m", fmt="onnx")
    fused = [node for node, _ in analyse(loaded.graph).node_bounds]
    assert [node.op for node in fused] == ["AffineBlock"]
    scale = Fraction(float(s.reshape(-1)[0]))
    weights = [[Fraction(float(w[o, i, 0, 0])) for i in range(c)] for o in range(c)]

    def exact(x: np.ndarray) -> list[Fraction]:
        xs = [_fractions(x[i]) for i in range(c)]
        h = [
            [sum((weights[o][i] * xs[i][k] for i in range(c)), Fraction(0)) for k in range(4)]
            for o in range(c)
        ]
        return [
            scale * sum((weights[o][i] * h[i][k] for i in range(c)), Fraction(0))
            for o in range(c)
            for k in range(4)
        ]

    inputs = [
        (rng.standard_normal((1, c, 2, 2)) * sc).astype(np.float32) for sc in (1e30, 1e25, 1.0)
    ]
    assert _worst_ratio(model, exact, inputs) <= 1.0
