"""Models built to make lipcert certify a radius that is too large, and what it does instead.

Each test builds the counterexample itself: a point x, a point x' inside the radius an unsound
front-end would claim, and the model's own decisions there (onnxruntime on the file). lipcert
must refuse, with one line naming the node, or certify a radius that does not reach x'.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hostile_models import (
    OPSET,
    as_float64,
    assert_refused_or_sound,
    certify,
    decision,
    load,
    make,
    run,
    tensor,
)
from onnx import TensorProto, helper

from lipcert.errors import LipcertError

# --- data dependence -------------------------------------------------------------------------


def _branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 2])]
    )


def _zeros(output: str) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [output], value=helper.make_tensor("z", TensorProto.FLOAT, [1, 2], [0, 0])
    )


def nested_if_model(read: str = "x") -> onnx.ModelProto:
    """logits = x + If(True){ If(True){ [0, 100] * sum(t) } }: t read two levels down, where
    t is the input or a tensor computed from it that only the nested subgraph reads."""
    inner_then = _branch(
        "inner_then",
        [
            helper.make_node("ReduceSum", [read], ["s"], keepdims=1),
            helper.make_node(
                "Constant",
                [],
                ["k"],
                value=helper.make_tensor("kv", TensorProto.FLOAT, [1, 2], [0.0, 100.0]),
            ),
            helper.make_node("Mul", ["s", "k"], ["h_in"]),
        ],
        "h_in",
    )
    inner = helper.make_node(
        "If",
        ["cond2"],
        ["h_out"],
        then_branch=inner_then,
        else_branch=_branch("inner_else", [_zeros("z_in")], "z_in"),
        name="inner",
    )
    outer_then = _branch("outer_then", [inner], "h_out")
    nodes = [
        helper.make_node("Identity", ["x"], ["copy"], name="copy"),
        helper.make_node(
            "If",
            ["cond"],
            ["hidden"],
            then_branch=outer_then,
            else_branch=_branch("outer_else", [_zeros("z_out")], "z_out"),
            name="outer",
        ),
        helper.make_node("Add", ["x", "hidden"], ["logits"], name="add"),
    ]
    inits = [tensor("cond", True, np.bool_), tensor("cond2", True, np.bool_)]
    return make(nodes, inits, [1, 2], [1, 2])


@pytest.mark.parametrize("read", ["x", "copy"])
def test_input_read_two_subgraphs_down_is_data(read: str) -> None:
    model = nested_if_model(read)
    x = np.array([[0.0, 0.01]], np.float32)
    x_other = np.array([[0.0, -0.005]], np.float32)
    decisions = decision(run(model, np.concatenate([x, x_other])))
    assert list(decisions) == [1, 0]
    assert_refused_or_sound(model, x[0], x_other[0], decisions, r"node 'outer' \(If\)")


def nonzero_count_model() -> onnx.ModelProto:
    """logits = x + [10, 0] * (number of x_i above (0.5, 100)): a size that depends on values."""
    nodes = [
        helper.make_node("Greater", ["x", "thresholds"], ["above"], name="greater"),
        helper.make_node("NonZero", ["above"], ["where"], name="nz"),
        helper.make_node("Shape", ["where"], ["where_shape"], name="shape"),
        helper.make_node("Gather", ["where_shape", "one"], ["count"], axis=0, name="gather"),
        helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["count_f", "k"], ["hidden"], name="scale"),
        helper.make_node("Add", ["x", "hidden"], ["logits"], name="add"),
    ]
    inits = [
        tensor("thresholds", [[0.5, 100.0]]),
        tensor("one", 1, np.int64),
        tensor("k", [10.0, 0.0]),
    ]
    return make(nodes, inits, [1, 2], [1, 2])


def test_shape_of_a_value_dependent_size_is_data() -> None:
    model = nonzero_count_model()
    x = np.array([[0.45, 1.0]], np.float32)
    x_other = np.array([[0.51, 1.0]], np.float32)
    decisions = decision(run(model, np.concatenate([x, x_other])))
    assert list(decisions) == [1, 0]
    assert_refused_or_sound(
        model, x[0], x_other[0], decisions, r"node 'nz' \(NonZero\).*depends on the input's values"
    )


def test_topk_with_k_from_data_is_refused() -> None:
    """k = number of positive inputs: the output's size (and its Shape) follows the values."""
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["pos"], name="greater"),
        helper.make_node("Cast", ["pos"], ["pos_i"], to=TensorProto.INT64, name="cast"),
        helper.make_node("ReduceSum", ["pos_i"], ["k"], keepdims=0, name="count"),
        helper.make_node("Reshape", ["k", "one"], ["k1"], name="k1"),
        helper.make_node("TopK", ["x", "k1"], ["top", "idx"], axis=1, name="topk"),
        helper.make_node("Shape", ["top"], ["top_shape"], name="shape"),
        helper.make_node("Gather", ["top_shape", "one_s"], ["n"], axis=0, name="gather"),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT, name="castf"),
        helper.make_node("Mul", ["n_f", "k_vec"], ["hidden"], name="scale"),
        helper.make_node("Add", ["x", "hidden"], ["logits"], name="add"),
    ]
    inits = [
        tensor("zero", 0.0),
        tensor("one", [1], np.int64),
        tensor("one_s", 1, np.int64),
        tensor("k_vec", [10.0, 0.0]),
    ]
    model = make(nodes, inits, [1, 2], [1, 2])
    x = np.array([[-0.01, -0.005]], np.float32)
    x_other = np.array([[0.001, -0.005]], np.float32)
    decisions = decision(run(model, np.concatenate([x, x_other])))
    assert list(decisions) == [1, 0]
    assert_refused_or_sound(
        model, x[0], x_other[0], decisions, r"node '(topk|count|greater)' .*input's values"
    )


def test_constant_shape_arithmetic_still_folds() -> None:
    """The look-alike: Shape of a tensor whose size depends only on the input's shape."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["r_shape"], name="shape"),
        helper.make_node("Reshape", ["r", "r_shape"], ["logits"], name="reshape"),
    ]
    model = make(nodes, [], [1, 2], [1, 2])
    predictions, radii = certify(model, np.array([[0.2, 0.5]], np.float32))
    assert predictions[0] == 1
    assert 0.2 < radii[0] < 0.3 / np.sqrt(2) + 1e-6


# --- output activations ----------------------------------------------------------------------


def _softmax_model(
    sample: tuple[int, ...], op: str = "Softmax", axis: int = -1, opset: int = OPSET
) -> onnx.ModelProto:
    size = int(np.prod(sample))
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["logits"], name="reshape"),
        helper.make_node(op, ["logits"], ["probs"], axis=axis, name="act"),
    ]
    inits = [tensor("shape", [1, *sample], np.int64)]
    return make(nodes, inits, [1, size], [1, *sample], output="probs", opset=opset)


@pytest.mark.parametrize(
    ("sample", "op", "axis", "x"),
    [
        pytest.param((2, 2), "Softmax", -1, [10.0, 9.0, 0.0, -5.0], id="softmax_last_of_2x2"),
        pytest.param((2, 2), "LogSoftmax", -1, [10.0, 9.0, 0.0, -5.0], id="logsoftmax_2x2"),
        pytest.param((3, 1), "Softmax", -1, [1.0, 3.0, 2.0], id="softmax_axis_of_size_1"),
        pytest.param((1,), "Softmax", -1, [-1.0], id="softmax_one_logit"),
    ],
)
def test_output_softmax_that_changes_the_decision_is_refused(
    sample: tuple[int, ...], op: str, axis: int, x: list[float]
) -> None:
    model = _softmax_model(sample, op, axis)
    point = np.array([x], np.float32)
    model_decision = decision(run(model, point))
    assert model_decision[0] != int(np.argmax(x)) or len(x) == 1
    assert_refused_or_sound(
        model, point[0], point[0], np.repeat(model_decision, 2), r"node 'act' \((Log)?Softmax\)"
    )


def test_sigmoid_of_sigmoid_is_refused() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["logits"], name="id"),
        helper.make_node("Sigmoid", ["logits"], ["p1"], name="sig1"),
        helper.make_node("Sigmoid", ["p1"], ["probs"], name="sig2"),
    ]
    model = make(nodes, [], [1, 1], [1, 1], output="probs")
    point = np.array([[-1.0]], np.float32)
    model_decision = decision(run(model, point), threshold=0.5)
    assert model_decision[0] == 1  # sigmoid(sigmoid(z)) > 1/2 for every z
    assert_refused_or_sound(
        model, point[0], point[0], np.repeat(model_decision, 2), r"node 'sig\d' \(Sigmoid\)"
    )


@pytest.mark.parametrize(
    ("sample", "op", "axis", "opset"),
    [
        pytest.param((3,), "Softmax", -1, OPSET, id="softmax_last"),
        pytest.param((3,), "Softmax", 1, OPSET, id="softmax_axis1"),
        pytest.param((1, 3), "LogSoftmax", 2, OPSET, id="logsoftmax_all_others_1"),
        pytest.param((2, 2), "Softmax", 1, 11, id="softmax_opset11_flattens_from_axis"),
    ],
)
def test_output_softmax_that_keeps_the_decision_is_dropped(
    sample: tuple[int, ...], op: str, axis: int, opset: int
) -> None:
    model = _softmax_model(sample, op, axis, opset)
    point = np.array([[0.1, 0.7, 0.3, 0.2][: int(np.prod(sample))]], np.float32)
    predictions, radii = certify(model, point)
    assert predictions[0] == decision(run(model, point))[0]
    assert radii[0] > 0


def test_single_sigmoid_on_one_logit_is_dropped() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["logits"], name="id"),
        helper.make_node("Sigmoid", ["logits"], ["probs"], name="sig"),
    ]
    model = make(nodes, [], [1, 1], [1, 1], output="probs")
    predictions, radii = certify(model, np.array([[-0.5]], np.float32))
    assert predictions[0] == 0
    assert 0.49 < radii[0] <= 0.5


# --- constants folded in floating point ------------------------------------------------------


def cancelling_bias_model(big: float) -> onnx.ModelProto:
    """logits = x + ((a + b) - a) with a = (big, 0), b = (1, 0): (1, 0) in exact arithmetic."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["ab"], name="add_ab"),
        helper.make_node("Sub", ["ab", "a"], ["bias"], name="sub_a"),
        helper.make_node("Add", ["x", "bias"], ["logits"], name="add_bias"),
    ]
    inits = [tensor("a", [big, 0.0]), tensor("b", [1.0, 0.0])]
    return make(nodes, inits, [1, 2], [1, 2])


def test_constant_folded_with_rounding_is_recomputed_in_float64() -> None:
    model = cancelling_bias_model(1e8)
    x = np.array([[0.0, 0.5]], np.float32)
    assert decision(run(model, x))[0] == 1  # float32: (1e8 + 1) - 1e8 = 0
    exact = decision(run(as_float64(model), x.astype(np.float64)))
    assert exact[0] == 0  # the model's function: x + (1, 0)
    # before: the probe's 0 was taken as exact and class 1 certified at radius 0.35
    assert_refused_or_sound(model, x[0], x[0], np.repeat(exact, 2), None)
    loaded = load(model)
    np.testing.assert_array_equal(loaded.graph.constant("bias"), [1.0, 0.0])


def test_constant_that_cancels_in_float64_too_is_refused() -> None:
    """(1e20 + 1) - 1e20 is 0 in float64 as in float32: the forward error analysis of the
    float64 recomputation sees the cancellation and refuses."""
    model = cancelling_bias_model(1e20)
    with pytest.raises(LipcertError, match=r"float64 recomputation is not bounded.*cancel"):
        load(model)


def test_constant_folded_exactly_is_kept() -> None:
    """The look-alike: (2 + 1) - 2 is exact in float32, and certified on its exact value."""
    model = cancelling_bias_model(2.0)
    x = np.array([[0.0, 0.5]], np.float32)
    predictions, radii = certify(model, x)
    assert predictions[0] == 0
    assert 0.3 < radii[0] <= 0.5 / np.sqrt(2) + 1e-6
    assert not load(model).graph.inexact_constants


def _scaled_by(op: str, inputs: list[str]) -> onnx.ModelProto:
    nodes = [
        helper.make_node(op, inputs, ["c"], name="fold"),
        helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"),
    ]
    inits = [
        tensor("w", [[0.3, 0.1]]),
        tensor("one", [[1.0, 1.0]]),
        tensor("three", [[3.0, 3.0]]),
        tensor("r", [[0.1, 0.2]]),
        tensor("m", [[0.1, 0.2], [0.3, 0.4]]),
    ]
    return make(nodes, [i for i in inits if i.name in inputs], [1, 2], [1, 2])


@pytest.mark.parametrize(
    ("op", "inputs", "exact"),
    [
        pytest.param("Exp", ["w"], np.exp([[0.3, 0.1]]), id="exp"),
        pytest.param("Div", ["one", "three"], np.array([[1 / 3, 1 / 3]]), id="one_third"),
        pytest.param("MatMul", ["r", "m"], np.array([[0.07, 0.1]]), id="matmul"),
    ],
)
def test_inexact_constants_are_recomputed_in_float64(
    op: str, inputs: list[str], exact: np.ndarray
) -> None:
    model = _scaled_by(op, inputs)
    loaded = load(model)
    assert loaded.graph.inexact_constants == {"c"}
    # the float64 value of the file's own computation (its float32 inputs, exactly)
    np.testing.assert_allclose(loaded.graph.constant("c"), exact, rtol=1e-7)
    float64_value = run(as_float64(_identity_of_c(model)), np.zeros((1, 2)))
    np.testing.assert_array_equal(loaded.graph.constant("c").reshape(1, -1), float64_value)
    # the runtime reads the float32 rounding of that value as a weight
    runnable = onnx.load_from_string(loaded.onnx_bytes)
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in runnable.graph.initializer}
    np.testing.assert_array_equal(
        folded["c__folded_in_float64"], loaded.graph.constant("c").astype(np.float32)
    )
    _, radii = certify(model, np.array([[0.1, 0.2]], np.float32))
    assert radii[0] > 0


def _identity_of_c(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the constant 'c' as its output (x unused but kept as the input)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.node[-1].CopyFrom(helper.make_node("Add", ["c", "c_zero"], ["logits"]))
    copy.graph.initializer.append(tensor("c_zero", 0.0))
    return copy


def test_folded_constants_widen_the_allowance() -> None:
    """Versus the same model with c stored as a weight: one more rounding at the Mul."""
    from lipcert.bounds.compose import analyse

    computed = load(_scaled_by("Exp", ["w"]))
    stored_value = computed.graph.constant("c").astype(np.float32)
    stored = make(
        [helper.make_node("Mul", ["x", "c"], ["logits"], name="scale")],
        [onnx.numpy_helper.from_array(stored_value, "c")],
        [1, 2],
        [1, 2],
    )
    spec_computed = analyse(computed.graph).spec
    spec_stored = analyse(load(stored).graph).spec
    assert spec_computed.fp_error_slope > spec_stored.fp_error_slope


def test_index_computed_inexactly_is_refused() -> None:
    """Gather at Floor(7 / 0.7): the division is rounded, so the index is not provably exact."""
    nodes = [
        helper.make_node("Div", ["seven", "tenth"], ["q"], name="divide"),
        helper.make_node("Floor", ["q"], ["qf"], name="floor"),
        helper.make_node("Cast", ["qf"], ["qi"], to=TensorProto.INT64, name="index"),
        helper.make_node("Gather", ["x", "qi"], ["picked"], axis=1, name="pick"),
        helper.make_node("Reshape", ["picked", "shape"], ["logits"], name="reshape"),
    ]
    inits = [
        tensor("seven", 7.0),
        tensor("tenth", 0.7),
        tensor("shape", [1, 1], np.int64),
    ]
    model = make(nodes, inits, [1, 12], [1, 1])
    with pytest.raises(LipcertError, match=r"node 'divide' \(Div\).*sets an integer"):
        load(model)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float64_error_bound_holds_against_exact_rationals(seed: int) -> None:
    """c = (r @ m) / (sum(w) + 3): the float64 value is within rho |c| of the exact rational."""
    from fractions import Fraction

    rng = np.random.default_rng(seed)
    r = rng.standard_normal((1, 16)).astype(np.float32)
    m = rng.standard_normal((16, 2)).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["r", "m"], ["rm"], name="product"),
        helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0, name="total"),
        helper.make_node("Add", ["s", "three"], ["d"], name="shift"),
        helper.make_node("Div", ["rm", "d"], ["c"], name="divide"),
        helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"),
    ]
    inits = [
        onnx.numpy_helper.from_array(r, "r"),
        onnx.numpy_helper.from_array(m, "m"),
        onnx.numpy_helper.from_array(w, "w"),
        tensor("three", 3.0),
    ]
    loaded = load(make(nodes, inits, [1, 2], [1, 2]))
    rho = loaded.graph.folded_error["c"]
    assert 0 < rho < 2.0**-30
    total = sum(Fraction(float(v)) for v in w) + 3
    for j in range(2):
        exact = sum(Fraction(float(r[0, i])) * Fraction(float(m[i, j])) for i in range(16)) / total
        computed = Fraction(float(loaded.graph.constant("c")[0, j]))
        assert abs(computed - exact) <= Fraction(rho) * abs(exact)
