"""Review of the gradual-underflow rules: models built to break them.

Ground truth: onnxruntime's float32 output against the exact rational function
(fractions.Fraction); the allowance certify takes (spec.fp_allowance at input_norms(x)) must
cover the difference.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.errors import UnsupportedOpError
from lipcert.evaluators import input_norms
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.model import LoadOptions


def _conv_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    shape: tuple[int, ...] = (1, 1, 2, 2),
) -> onnx.ModelProto:
    """A checked model from x to y, both of `shape` (a 1x1x2x2 image by default)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ratio(model: onnx.ModelProto, x: np.ndarray, exact: list[Fraction]) -> float:
    loaded = load_from_proto(model, LoadOptions(input_shape=x.shape[1:]), source="m", fmt="onnx")
    spec = analyse(loaded.graph).spec
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    values = [Fraction(float(v)) for v in y.reshape(-1)]
    squared = sum(((v - t) ** 2 for v, t in zip(values, exact, strict=True)), Fraction(0))
    return float(squared) ** 0.5 / float(spec.fp_allowance(input_norms(x))[0])


@pytest.mark.parametrize("weight_exponent", [-60, -20])
def test_conv_batchnorm_folded_weight_among_the_subnormals(weight_exponent: int) -> None:
    """Conv(w) -> BatchNormalization(g) -> Mul(2^120) with w g = 1.5 2^-149 (w = 2^-60,
    g = 1.5 2^-89, both normal): onnxruntime's ConvBNFusion folds w g in float32, a
    subnormal off by 2^-150 (a third of itself), which the Mul then scales up. lipcert
    counted that only for a subnormal gain g: 28 times the allowance, now within. The
    look-alike w = 2^-20 (w g normal) is exact to a rounding."""
    w = np.float32(2.0**weight_exponent)
    g = np.float32(1.5 * 2.0 ** (-149 - weight_exponent))
    k = np.float32(2.0 ** (120 if weight_exponent == -60 else 80))
    inits = [
        numpy_helper.from_array(np.full((1, 1, 1, 1), w, np.float32), "w"),
        numpy_helper.from_array(np.array([g], np.float32), "s"),
        numpy_helper.from_array(np.zeros(1, np.float32), "b"),
        numpy_helper.from_array(np.zeros(1, np.float32), "m"),
        numpy_helper.from_array(np.ones(1, np.float32), "v"),
        numpy_helper.from_array(np.array(k, np.float32), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=0.0),
        helper.make_node("Mul", ["bn", "k"], ["y"]),
    ]
    model = _conv_model(nodes, inits)
    x = np.array([[[[0.5, 0.25], [1.0, 0.75]]]], np.float32) * np.float32(1e3)
    gain = Fraction(float(w)) * Fraction(float(g)) * Fraction(float(k))
    exact = [Fraction(float(v)) * gain for v in x.reshape(-1)]
    assert _ratio(model, x, exact) <= 1.0


# --- blocks reading constants the model computes (lipcert.bounds.folded) ---------------------


def _const(values: object, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _loaded(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], width: int) -> Graph:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return load_from_proto(model, LoadOptions(input_shape=(width,)), source="m", fmt="onnx").graph


# The analysis accepts constants known to rho <= 2^-30 of themselves; the exact constants may
# lie anywhere within rho of the float64 ones. The bound must hold at the worst such corner.
_RHO = 2.0**-31


def _at_rho(graph: Graph) -> Graph:
    graph.folded_error = {name: _RHO for name in graph.folded_error}
    return graph


def _value(graph: Graph, name: str) -> Fraction:
    return Fraction(float(np.asarray(graph.constant(name)).reshape(-1)[0]))


def test_sll_block_with_computed_weight_and_multipliers_bounds_the_exact_block() -> None:
    """y = x - W q1 q2 q1 ReLU(W^T x), W = 7/3 I, q1 = 1/3, q2 = (972/49) / 3, all computed
    by the model: ||W D^1/2||^2 = 4, the bound 3. With each constant 2^-31 above its float64
    value (D carries three of them) the exact block is 4 (1 + 2^-31)^5 - 1 Lipschitz; the
    generic margin 2 rho / (1 - rho) max(input gain, bound) gave 9e-10 less."""
    inits = [
        _const(np.eye(2) * 7.0, "w0"),
        _const(3.0, "three"),
        _const(1.0, "one"),
        _const(4 * 243 / 49, "d0"),
        _const(np.zeros(2), "b"),
    ]
    nodes = [
        helper.make_node("Div", ["w0", "three"], ["W"]),
        helper.make_node("Div", ["one", "three"], ["q1"]),
        helper.make_node("Div", ["d0", "three"], ["q2"]),
        helper.make_node("Transpose", ["W"], ["Wt"]),
        helper.make_node("Gemm", ["x", "W", "b"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Mul", ["r", "q1"], ["r1"]),
        helper.make_node("Mul", ["r1", "q2"], ["r2"]),
        helper.make_node("Mul", ["r2", "q1"], ["r3"]),
        helper.make_node("MatMul", ["r3", "Wt"], ["v"]),
        helper.make_node("Sub", ["x", "v"], ["y"]),
    ]
    graph = _at_rho(_loaded(nodes, inits, 2))
    assert {"W", "q1", "q2"} <= graph.inexact_constants
    bounds = analyse(graph).node_bounds
    assert [node.op for node, _ in bounds] == ["SLLBlock"]
    up = 1 + Fraction(_RHO)
    w, q1, q2 = (_value(graph, name) * up for name in ("W", "q1", "q2"))
    squared = w * w * q1 * q2 * q1  # ||W_e D_e^1/2||^2, W_e = w I
    assert squared > 2
    assert Fraction(bounds[0][1].factor) >= squared - 1


def test_sandwich_block_with_computed_weights_and_multipliers_bounds_the_exact_block() -> None:
    """y = B p p p ReLU(A x), A = 7/3, B = 5/3, p = 1/3 computed by the model: Lipschitz
    |A B| p^3, and (1 + 2^-31)^5 times that at the worst exact constants; the generic margin
    gave 7e-11 less."""
    inits = [_const([[7.0]], "a0"), _const([[5.0]], "b0"), _const(3.0, "three")]
    inits += [_const(1.0, "one"), _const([0.0], "bias")]
    nodes = [
        helper.make_node("Div", ["a0", "three"], ["A"]),
        helper.make_node("Div", ["b0", "three"], ["B"]),
        helper.make_node("Div", ["one", "three"], ["p"]),
        helper.make_node("Gemm", ["x", "A", "bias"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("Mul", ["r", "p"], ["r1"]),
        helper.make_node("Mul", ["r1", "p"], ["r2"]),
        helper.make_node("Mul", ["r2", "p"], ["r3"]),
        helper.make_node("MatMul", ["r3", "B"], ["y"]),
    ]
    graph = _at_rho(_loaded(nodes, inits, 1))
    bounds = analyse(graph).node_bounds
    assert [node.op for node, _ in bounds] == ["SandwichBlock"]
    up = 1 + Fraction(_RHO)
    exact = _value(graph, "A") * _value(graph, "B") * _value(graph, "p") ** 3 * up**5
    assert Fraction(bounds[0][1].factor) >= exact


@pytest.mark.parametrize("numerator", [1.0, 3.0])
def test_select_tree_on_a_computed_threshold_is_refused(numerator: float) -> None:
    """Where(x < t, x - t, 2 (x - t)): continuity is checked with t's float64 value, which
    for a computed t (1/3) is not the exact one (a tree whose pieces read two such constants
    may jump): refused in one line naming the node and the constant. Its look-alike with
    t = 3/3, exact, is fused and bounded by 2."""
    inits = [_const(numerator, "one"), _const(3.0, "three"), _const(2.0, "two")]
    nodes = [
        helper.make_node("Div", ["one", "three"], ["t"]),
        helper.make_node("Less", ["x", "t"], ["c"]),
        helper.make_node("Sub", ["x", "t"], ["d"]),
        helper.make_node("Mul", ["d", "two"], ["e"]),
        helper.make_node("Where", ["c", "d", "e"], ["y"]),
    ]
    graph = _loaded(nodes, inits, 3)
    if numerator == 1.0:
        with pytest.raises(UnsupportedOpError, match=r"PiecewiseLinear.*'t', computed inside"):
            analyse(graph)
    else:
        bounds = analyse(graph).node_bounds
        assert [node.op for node, _ in bounds] == ["PiecewiseLinear"]
        assert bounds[0][1].factor >= 2.0


def test_matmul_batchnorm_folded_weight_among_the_subnormals() -> None:
    """MatMul(2^-60 I) -> BatchNormalization(g = 1.5 2^-89) -> Mul(2^120): lipcert keeps the
    BatchNorm apart, onnxruntime's MatMulBNFusion folds w g in float32 (1.5 2^-149 rounds to
    2^-148). It erred 32 times the allowance, now within."""
    w, g, k = np.float32(2.0**-60), np.float32(1.5 * 2.0**-89), np.float32(2.0**120)
    inits = [_const(np.eye(2) * w, "w"), _const([g, g], "s"), _const([0, 0], "b")]
    inits += [_const([0, 0], "m"), _const([1, 1], "v"), _const(k, "k")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["c"]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], epsilon=0.0),
        helper.make_node("Mul", ["bn", "k"], ["y"]),
    ]
    model = _conv_model(nodes, inits, (1, 2))
    x = np.array([[1e3, 7.5e2]], np.float32)
    gain = Fraction(float(w)) * Fraction(float(g)) * Fraction(float(k))
    assert _ratio(model, x, [Fraction(float(v)) * gain for v in x[0]]) <= 1.0


def test_conv_mul_batchnorm_folded_weight_among_the_subnormals() -> None:
    """Conv(2^-60) -> Mul(0.5) -> BatchNormalization(1.5 2^-88) -> Mul(2^120): lipcert
    folds no BatchNorm after a Mul, onnxruntime folds the Mul (ConvMulFusion), then the
    BatchNorm (ConvBNFusion), w s g = 1.5 2^-149 in float32. It erred 24 times the
    allowance, now within."""
    w, s, g, k = (np.float32(v) for v in (2.0**-60, 0.5, 1.5 * 2.0**-88, 2.0**120))
    inits = [_const(np.full((1, 1, 1, 1), w), "w"), _const(s, "s0"), _const([g], "s")]
    inits += [_const([0], "b"), _const([0], "m"), _const([1], "v"), _const(k, "k")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Mul", ["c", "s0"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", "s", "b", "m", "v"], ["bn"], epsilon=0.0),
        helper.make_node("Mul", ["bn", "k"], ["y"]),
    ]
    model = _conv_model(nodes, inits)
    x = np.array([[[[0.5, 0.25], [1.0, 0.75]]]], np.float32) * np.float32(1e3)
    gain = Fraction(float(w)) * Fraction(float(s)) * Fraction(float(g)) * Fraction(float(k))
    assert _ratio(model, x, [Fraction(float(v)) * gain for v in x.reshape(-1)]) <= 1.0


def test_layer_with_folded_batchnorm_of_three_computed_constants() -> None:
    """Gemm(W) -> BatchNormalization(scale, var), W, scale and var computed by the model
    (7/3, 5/3, 11/3), folded by lipcert into one weight w scale / sqrt(var): at the corner
    W, scale 2^-31 above and var 2^-31 below their float64 values the exact layer is
    (1 + rho)^2 / (1 - rho)^(1/2) times the float64 one, more than the one-constant margin
    2 rho / (1 - rho) covers."""
    inits = [_const([[7.0]], "w0"), _const([5.0], "s0"), _const([11.0], "v0")]
    inits += [_const(3.0, "three"), _const([0.0], "zero")]
    nodes = [
        helper.make_node("Div", ["w0", "three"], ["W"]),
        helper.make_node("Div", ["s0", "three"], ["scale"]),
        helper.make_node("Div", ["v0", "three"], ["var"]),
        helper.make_node("Gemm", ["x", "W"], ["z"]),
        helper.make_node(
            "BatchNormalization", ["z", "scale", "zero", "zero", "var"], ["y"], epsilon=0.0
        ),
    ]
    graph = _at_rho(_loaded(nodes, inits, 1))
    assert {"W", "scale", "var"} <= graph.inexact_constants
    bounds = analyse(graph).node_bounds
    assert [node.op for node, _ in bounds] == ["Gemm"]
    r = Fraction(_RHO)
    w, scale, var = (_value(graph, name) for name in ("W", "scale", "var"))
    # |w_e scale_e| / sqrt(var_e) >= exact when its square is: compare squares
    squared = (w * (1 + r) * scale * (1 + r)) ** 2 / (var * (1 - r))
    factor = Fraction(bounds[0][1].factor)
    assert factor * factor >= squared


def test_head_with_folded_batchnorm_of_computed_constants() -> None:
    """A head Gemm(W) -> BatchNormalization(scale, var), all three computed by the model: the
    fused head's weight (lipcert's fold, a new constant) read none of them by name, and the
    rows' spread was 0. At the corner W, scale 2^-31 above and var 2^-31 below their float64
    values each logit's bound must cover the exact row's norm."""
    inits = [_const([[7.0, 1.0], [2.0, 5.0]], "w0"), _const([5.0, 4.0], "s0")]
    inits += [_const([11.0, 13.0], "v0"), _const(3.0, "three"), _const([0.0, 0.0], "zero")]
    nodes = [
        helper.make_node("Div", ["w0", "three"], ["W"]),
        helper.make_node("Div", ["s0", "three"], ["scale"]),
        helper.make_node("Div", ["v0", "three"], ["var"]),
        helper.make_node("Gemm", ["x", "W"], ["z"]),
        helper.make_node(
            "BatchNormalization", ["z", "scale", "zero", "zero", "var"], ["y"], epsilon=0.0
        ),
    ]
    graph = _at_rho(_loaded(nodes, inits, 2))
    spec = analyse(graph).spec
    r = Fraction(_RHO)
    weight = np.asarray(graph.constant("W"), dtype=np.float64)
    scale = np.asarray(graph.constant("scale"), dtype=np.float64)
    var = np.asarray(graph.constant("var"), dtype=np.float64)
    for i, bound in enumerate(spec.logit_bounds):
        gain2 = (Fraction(float(scale[i])) * (1 + r)) ** 2 / (Fraction(float(var[i])) * (1 - r))
        row2 = sum(((Fraction(float(w)) * (1 + r)) ** 2 for w in weight[:, i]), Fraction(0))
        assert Fraction(bound) ** 2 >= row2 * gain2


@pytest.mark.parametrize(("exponent", "divisor"), [(-126, 3.0 * 2**22), (-100, 3.0)])
def test_computed_weight_with_a_subnormal_float32_copy_is_refused(
    exponent: int, divisor: float
) -> None:
    """x -> MatMul(W = 2^-126 I / (3 2^22)) -> Mul(2^100): the runtime's float32 copy of the
    computed W is 2^-149 for 1.33 2^-150 (off by a third, not by u); at ||x|| ~ 1e20 onnxruntime
    erred 7.6e5 times the allowance. Refused in one line naming the node and the constant;
    the look-alike W = 2^-100 / 3 (normal in float32) is bounded, within its allowance."""
    inits = [_const(np.eye(2) * 2.0**exponent, "w0"), _const(divisor, "d")]
    inits.append(_const(2.0**100, "k"))
    nodes = [
        helper.make_node("Div", ["w0", "d"], ["W"]),
        helper.make_node("MatMul", ["x", "W"], ["c"]),
        helper.make_node("Mul", ["c", "k"], ["y"]),
    ]
    model = _conv_model(nodes, inits, (1, 2))
    x = np.array([[1e20, 7.5e19]], np.float32)
    weight = Fraction(2) ** exponent / Fraction(divisor) * Fraction(2) ** 100
    exact = [Fraction(float(v)) * weight for v in x[0]]
    if exponent == -100:
        assert _ratio(model, x, exact) <= 1.0
    else:
        with pytest.raises(UnsupportedOpError, match=r"MatMul.*'W', computed inside.*2\^-120"):
            _ratio(model, x, exact)
