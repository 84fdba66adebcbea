"""Red team of the zero-input sizes (lipcert.bounds.zero_input) and of the unit-free relative
error of folded constants (Rounding.relative, lipcert.bounds.folded).

Ground truth: exact rational arithmetic (fractions.Fraction) on the file's float32 weights,
or float64 recomputations accurate far beyond the errors at stake. Holes found (each test
failed before its fix):
- the default evaluator's float64 tail (onnxruntime's float64 copy of the nodes after the
  cut) reads the runtime's FLOAT32 copy c' = fl32(c64) of a constant the model computes, off
  the exact constant by u32 |c|: a Hadamard-signed computed weight erred 3.6 times its
  float64 allowance (fix: lipcert.bounds.fp_error keeps such a node's float32 allowance);
- lipcert's float64 executor ran Softplus as torch's F.softplus, which returns x itself
  above 20: the zero-input size of Softplus(x + 21) - 21 was 1e-13 for an exact 1.5e-9, and
  the float64 graph erred 1e-3 against a 3e-7 allowance (fix: logaddexp);
- rho of a folded constant composed (1 + e)(1 + u) - 1 in float64, which drops u = 2^-53:
  rho of A / B - D was 0 while its float64 value was 2.3e-10 off (fix: onnx_exact._compose);
- the Lipschitz bounds (a hidden layer's, a linear head's rows) were those of the float64
  constants, not the exact ones: a float64 radius passed the exact decision boundary by
  3.1e-10 of itself (fix: folded raises the bound, compose._head_spread the head's);
- the local certificates took the float64 constants as exact and proved a ball 1e-10 beyond
  the exact boundary (fix: such models keep their global certificates).
Regression tests without a hole: sizes of a batch pinned to 2 cover the largest slot; no
executor run means infinite allowances.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, analyse
from lipcert.evaluators.posterior import PosteriorEvaluator
from lipcert.frontends import load_model

_N = 64


def _hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _factors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 A, B whose exact products are +-0.125 (1 + 1e-4) (a Hadamard sign pattern,
    so ||A * B||_2 ~ 1) and whose float32 products all round UP by more than 0.8 of half an
    ulp: a dot product of the rounded weights with a non-negative vector errs in one
    direction, n times u32 |c| per output instead of sqrt(n)."""
    rng = np.random.default_rng(seed)
    signs = _hadamard(_N)
    a = np.zeros((_N, _N), np.float32)
    b = np.zeros((_N, _N), np.float32)
    half_ulp = 2.0**-27  # of numbers in [0.125, 0.25)
    for j in range(_N):
        for c in range(_N):
            target = signs[j, c] * 0.125 * (1 + 1e-4)
            while True:
                left = np.float32(rng.uniform(1.0, 2.0))
                right = np.float32(target / float(left))
                exact = float(left) * float(right)  # exact: 24 + 24 bits
                if float(np.float32(exact)) - exact > 0.8 * half_ulp:
                    break
            a[j, c], b[j, c] = left, right
    return a, b


def _model(path: Path, a: np.ndarray, b: np.ndarray, computed: bool) -> Path:
    """logits = Relu(x) @ W, with W = A * B computed by the model (`computed`), or the
    float32 products given as a plain initializer (the look-alike)."""
    inits = [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("Relu", ["x"], ["h"])]
    if computed:
        nodes.insert(0, helper.make_node("Mul", ["A", "B"], ["W"]))
    else:
        inits = [numpy_helper.from_array((a * b).astype(np.float32), "W")]
    nodes.append(helper.make_node("MatMul", ["h", "W"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", _N])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", _N])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _exact_errors(x: np.ndarray, logits: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per sample, a float no larger than ||logits - Relu(x) @ (A * B)||_2, all exact."""
    fa = [[Fraction(float(v)) for v in row] for row in a]
    fb = [[Fraction(float(v)) for v in row] for row in b]
    weight = [[fa[j][c] * fb[j][c] for c in range(_N)] for j in range(_N)]
    found = []
    for sample in range(len(x)):
        h = [Fraction(max(float(v), 0.0)) for v in x[sample]]
        square = Fraction(0)
        for c in range(_N):
            exact = sum(h[j] * weight[j][c] for j in range(_N))
            square += (Fraction(float(logits[sample, c])) - exact) ** 2
        root = float(square) ** 0.5
        while Fraction(root) ** 2 > square:
            root = float(np.nextafter(root, 0.0))
        found.append(root)
    return found


def test_float64_tail_reading_a_folded_constant_is_within_its_allowance(tmp_path: Path) -> None:
    a, b = _factors(0)
    loaded = load_model(_model(tmp_path / "m.onnx", a, b, computed=True))
    assert "W" in loaded.graph.inexact_constants
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    # the hole needs the MatMul in the float64 tail, run by onnxruntime on its float32 copy
    assert evaluator.tail_in_onnxruntime and evaluator.cut == "h"
    x = np.zeros((4, _N), np.float32)
    x[0] = -1.0  # the first sample (cross-checked against the float64 graph) sees no error
    x[1] = 1.0
    x[2] = 3.0
    x[3] = np.linspace(0.5, 2.0, _N)
    evaluation = evaluator.evaluate(x)
    errors = _exact_errors(x, evaluation.logits, a, b)
    # the test can fail: the tail's error is of the float32 scale, u32 ||x|| and more
    assert errors[1] > 2 * FLOAT32_UNIT_ROUNDOFF * float(np.linalg.norm(x[1]))
    for sample in range(len(x)):
        assert errors[sample] <= evaluation.allowance[sample]


def test_look_alike_plain_weight_keeps_the_float64_tail_allowance(tmp_path: Path) -> None:
    """The same products given as a weight (no constant the model computes): the tail reads
    exactly the graph's weight, its float64 allowance stays far below the error above."""
    a, b = _factors(0)
    loaded = load_model(_model(tmp_path / "m.onnx", a, b, computed=False))
    assert not loaded.graph.inexact_constants
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    assert evaluator.tail_in_onnxruntime
    x = np.ones((2, _N), np.float32)
    x[0] = -1.0
    evaluation = evaluator.evaluate(x)
    weight = (a * b).astype(np.float32)
    exact = x[1].astype(np.float64) @ weight.astype(np.float64)
    assert float(np.max(np.abs(evaluation.logits[1] - exact))) <= 1e-12
    # only the input's float32 rounding (2 u ||x|| ||W||) and float64 roundings
    norm = float(np.linalg.norm(weight.astype(np.float64), 2))
    bound = 2 * FLOAT32_UNIT_ROUNDOFF * float(np.linalg.norm(x[1])) * norm * (1 + 1e-5)
    assert evaluation.allowance[1] <= bound


@pytest.mark.parametrize("seed", [1])
def test_folded_allowance_tail_error_is_not_covered_by_float64_unit_alone(
    tmp_path: Path, seed: int
) -> None:
    """The hole as it was, stated on the allowance alone: the tail node's local rounding at
    the float64 unit is below the error its float32 copy of W causes (so the fix must
    account for the copy, not for the float64 arithmetic)."""
    from lipcert.bounds.numeric import FLOAT64_UNIT_ROUNDOFF

    a, b = _factors(seed)
    loaded = load_model(_model(tmp_path / "m.onnx", a, b, computed=True))
    analysis = analyse(loaded.graph)
    (node, layer) = next((n, lb) for n, lb in analysis.node_bounds if n.op == "MatMul")
    h = np.ones(_N)
    # the node's own rounding bound at the float64 unit, generously sized
    float64_local = layer.rounding.gamma(FLOAT64_UNIT_ROUNDOFF) * (
        layer.rounding.input_gain * np.linalg.norm(h)
        + layer.rounding.output_gain * 10 * np.linalg.norm(h)
        + layer.rounding.offset
    )
    copy = (a * b).astype(np.float64)  # fl32(c64), what onnxruntime's copy holds
    exact_w = a.astype(np.float64) * b.astype(np.float64)  # exact (48 bits)
    copy_error = float(np.linalg.norm(h @ (copy - exact_w)))
    assert copy_error > 10 * float64_local
    assert node.name


def _softplus_model(shift: float) -> onnx.ModelProto:
    """y = W (Softplus(x + shift) - shift), W = 1e6 I: at x = 0 the exact t = log(1 + e^-shift)
    per element is small, what a computed t that drops it misses entirely."""
    shift_c = np.full(4, shift, np.float32)
    weight = (np.eye(2, 4) * 1e6).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["x", "c"], ["a"]),
        helper.make_node("Softplus", ["a"], ["s"]),
        helper.make_node("Sub", ["s", "c"], ["t"]),
        helper.make_node("Gemm", ["t", "W"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "softplus",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(shift_c, "c"), numpy_helper.from_array(weight, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("shift", [21.0, 25.0, 5.0])
def test_softplus_above_20_zero_size_and_float64_graph(shift: float) -> None:
    """torch's F.softplus returns x itself above x = 20 (off by e^-x): lipcert's float64
    executor used it, so the zero-input size of t was ~1e-13 where the exact one is 1.5e-9,
    and the float64 graph (--margins float64, certify's float64 recomputation) erred by 1e-3
    against an allowance of 3e-7. Ground truth: log1p(exp(-shift)) in float64 (accurate to
    a few ulps of itself; the error missed was the whole value). shift = 5: the look-alike
    below the threshold, which was right before too."""
    import math

    import torch

    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.graph.execute import GraphExecutor
    from lipcert.model import LoadOptions

    loaded = load_from_proto(_softplus_model(shift), LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    exact_t = math.log1p(math.exp(-shift)) * (1 - 1e-12)  # a little below the exact value
    assert analysis.zero_sizes["t"] >= math.sqrt(4) * exact_t
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    executor = GraphExecutor(analysis.graph, dtype=torch.float64)
    for scale in (0.0, 1e-3, 1.0):
        x = np.full((1, 4), scale, np.float32)
        with torch.no_grad():
            got = executor(torch.as_tensor(x, dtype=torch.float64)).numpy()[0]
        s = float(x[0, 0]) + float(np.float32(shift))
        softplus = max(s, 0.0) + math.log1p(math.exp(-abs(s)))
        exact_y = (softplus - float(np.float32(shift))) * 1e6
        error = float(np.linalg.norm(got - exact_y))
        allowance = spec64.fp_error_constant + spec64.fp_error_slope * float(np.linalg.norm(x))
        # the ground truth's own float64 rounding: ~4 ulps of s, times the weight 1e6
        slack = 8 * FLOAT64_UNIT_ROUNDOFF * abs(s) * 1e6 * math.sqrt(2)
        assert error <= allowance + slack


def _quotient_weight(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 A, B, D with W = A / B - D computed by the model: row 0 positive, row 1
    negative, |W| ~ 2^-21 |A / B|, and the float64 quotient rounded towards zero by more than
    0.4 ulp everywhere, so the float64 W is smaller than the exact one in every entry by about
    2^-31 of itself (the Sub amplifies the Div's rounding 2^21 times)."""
    rng = np.random.default_rng(seed)
    a = np.ones((2, n), np.float32)
    b = np.ones((2, n), np.float32)
    d = np.ones((2, n), np.float32)
    for row, sign in ((0, 1), (1, -1)):
        for j in range(n):
            while True:
                left, right = np.float32(rng.uniform(1, 2)), np.float32(rng.uniform(1, 2))
                exact = Fraction(float(left)) / Fraction(float(right))
                q64 = float(left) / float(right)
                if sign * (exact - Fraction(q64)) > Fraction(0.4 * float(np.spacing(q64))):
                    shift = np.float32(q64 * (1 - sign * 2.0**-21))
                    if sign * (Fraction(q64) - Fraction(float(shift))) > 0:
                        break
            a[row, j], b[row, j], d[row, j] = left, right, shift
    return a, b, d


def _quotient_model(
    a: np.ndarray, b: np.ndarray, d: np.ndarray, separate_bias: bool = False
) -> onnx.ModelProto:
    """logits = x W^T + (1, 0), W = A / B - D; `separate_bias`: the bias in an Add of its
    own (so that no rounding term of the Gemm carries it)."""
    n = a.shape[1]
    if separate_bias:
        head = [
            helper.make_node("Gemm", ["x", "W"], ["g"], transB=1),
            helper.make_node("Add", ["g", "bias"], ["logits"]),
        ]
    else:
        head = [helper.make_node("Gemm", ["x", "W", "bias"], ["logits"], transB=1)]
    nodes = [
        helper.make_node("Div", ["A", "B"], ["q"]),
        helper.make_node("Sub", ["q", "D"], ["W"]),
        *head,
    ]
    inits = [
        numpy_helper.from_array(a, "A"),
        numpy_helper.from_array(b, "B"),
        numpy_helper.from_array(d, "D"),
        numpy_helper.from_array(np.array([1.0, 0.0], np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "quotient",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_folded_rho_counts_the_float64_division() -> None:
    """rho of a constant the model computes bounds |c64 - c| / |c| (exact rationals). It was
    0 for A / B - D: the Div's float64 rounding was composed as (1 + e)(1 + u) - 1, which is
    0 in float64, and the Sub's cancellation then charged 2^21 times nothing; the float64
    graph's certified radius at x = 0 exceeded the exact distance to the decision boundary
    by 3e-10 of itself."""
    import torch

    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.certify.radii import certify_logits, choose_method
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.graph.execute import GraphExecutor
    from lipcert.model import LoadOptions

    n = 16
    a, b, d = _quotient_weight(0, n)
    loaded = load_from_proto(_quotient_model(a, b, d), LoadOptions(), source="t", fmt="onnx")
    exact = [
        [
            Fraction(float(a[i, j])) / Fraction(float(b[i, j])) - Fraction(float(d[i, j]))
            for j in range(n)
        ]
        for i in range(2)
    ]
    c64 = np.asarray(loaded.graph.constant("W"), dtype=np.float64)
    worst = max(
        abs(Fraction(float(c64[i, j])) - exact[i][j]) / abs(exact[i][j])
        for i in range(2)
        for j in range(n)
    )
    assert worst > 2.0**-33  # the float64 W is really off: rho = 0 is wrong here
    assert loaded.graph.folded_error["W"] >= float(worst)
    # the float64 graph's certificate at x = 0 (the margin is the bias) against the exact
    # distance 1 / ||w_0 - w_1|| (squares compared exactly)
    analysis = analyse(loaded.graph)
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    executor = GraphExecutor(analysis.graph, dtype=torch.float64)
    x = np.zeros((1, n))
    with torch.no_grad():
        logits = executor(torch.as_tensor(x)).numpy()
    certificates = certify_logits(
        logits, spec64, choose_method(spec64, "auto"), spec64.fp_allowance(np.zeros(1))
    )
    assert certificates.prediction[0] == 0
    radius = float(certificates.radius[0])
    assert radius > 0
    square = sum((p - q) ** 2 for p, q in zip(exact[0], exact[1], strict=True))
    assert Fraction(radius) ** 2 * square <= 1


def test_pinned_batch_sizes_cover_every_slot() -> None:
    """A batch pinned to 2 with per-slot constants that cancel: (x + b) * s - fl32(b * s),
    slot 1's values 1000 times slot 0's. Every size is at least the largest slot's exact
    norm; the first slot alone (what the probe's first row gave) is 1000 times too small."""
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.model import LoadOptions

    rng = np.random.default_rng(0)
    bias = rng.normal(size=(2, 4)).astype(np.float32) * np.array([[1], [1000]], np.float32)
    scale = rng.uniform(0.3, 0.9, size=(2, 4)).astype(np.float32)
    cancel = (bias * scale).astype(np.float32)
    weight = rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["x", "b"], ["t1"]),
        helper.make_node("Mul", ["t1", "s"], ["t2"]),
        helper.make_node("Sub", ["t2", "c"], ["t3"]),
        helper.make_node("Gemm", ["t3", "W"], ["y"], transB=1),
    ]
    constants = {"b": bias, "s": scale, "c": cancel, "W": weight}
    graph = helper.make_graph(
        nodes,
        "pinned",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(v, n) for n, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.batch_size == 2
    analysis = analyse(loaded.graph)

    def f(v: np.floating) -> Fraction:
        return Fraction(float(v))

    for name in ("t1", "t2", "t3", "y"):
        norms = []
        for row in range(2):
            t1 = [f(bias[row, i]) for i in range(4)]
            t2 = [t1[i] * f(scale[row, i]) for i in range(4)]
            t3 = [t2[i] - f(cancel[row, i]) for i in range(4)]
            y = [sum((f(weight[k, i]) * t3[i] for i in range(4)), Fraction(0)) for k in range(3)]
            values: list[Fraction] = {"t1": t1, "t2": t2, "t3": t3, "y": y}[name]
            norms.append(float(sum(v * v for v in values)) ** 0.5 * (1 - 1e-12))
        assert analysis.zero_sizes[name] >= max(norms)
        assert norms[0] * 100 < max(norms)  # the look-alike: the first slot alone is far below


def test_no_executor_run_means_no_finite_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where lipcert's executor cannot run the graph at the zero input, zero_sizes is empty
    and every size it should give is infinite: the a-priori allowance (float32 and float64)
    and the a-posteriori one without measured sizes are infinite, never 0."""
    import lipcert.bounds.compose as compose
    from lipcert.bounds.fp_error import ErrorPlan
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.model import LoadOptions

    def broken(*args: object, **kwargs: object) -> dict[str, float]:
        raise RuntimeError("no kernel for this op")

    monkeypatch.setattr(compose, "zero_input_sizes", broken)
    loaded = load_from_proto(_softplus_model(5.0), LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    assert analysis.zero_sizes == {}
    assert any("cannot run the graph" in note for note in analysis.notes)
    for spec in (analysis.spec, analysis.spec_for_precision(2.0**-53)):
        assert np.all(np.isinf(spec.fp_allowance(np.array([0.0, 1.0]))))
    plan = ErrorPlan.of(analysis)
    assert np.all(np.isinf(plan.error(np.array([0.0, 1.0]), {})))


def test_local_certificate_of_a_model_with_inexact_constants() -> None:
    """Local bounds (lipcert.local) took the graph's float64 W as the model's exact weight:
    on A / B - D (W 5e-10 of itself off in float64, every entry the same way) they proved the
    ball of radius 1 + 1e-10 times the exact distance from x = 0 to the decision boundary
    (exact rationals). Such a model is now left to its global certificate; the look-alike
    with an exactly recomputed constant (A * B: rho = 0) still gets local bounds."""
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.local.network import LocalUnsupported
    from lipcert.local.refine import LocalCertifier
    from lipcert.model import LoadOptions

    n = 16
    a, b, d = _quotient_weight(0, n)
    exact = [
        [
            Fraction(float(a[i, j])) / Fraction(float(b[i, j])) - Fraction(float(d[i, j]))
            for j in range(n)
        ]
        for i in range(2)
    ]
    square = sum((p - q) ** 2 for p, q in zip(exact[0], exact[1], strict=True))
    beyond = float(1 / square) ** 0.5 * (1 + 1e-10)
    assert Fraction(beyond) ** 2 * square > 1  # really beyond the boundary
    loaded = load_from_proto(_quotient_model(a, b, d), LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.folded_error["W"] > 0
    analysis = analyse(loaded.graph)
    proven = False
    with contextlib.suppress(LocalUnsupported):
        proven, _, _ = LocalCertifier(analysis).certify(np.zeros((1, n)), 0, beyond)
    assert not proven
    # the look-alike: W = A * B is exact in float64 (rho = 0), local bounds still apply
    model = _quotient_model(a, b, d)
    model.graph.node[0].op_type = "Mul"
    model.graph.node[1].op_type = "Add"
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.inexact_constants and loaded.graph.folded_error["W"] == 0
    certifier = LocalCertifier(analyse(loaded.graph))
    proven, _, _ = certifier.certify(np.zeros((1, n)), 0, 1e-3)
    assert proven


@pytest.mark.parametrize("separate_bias", [False, True])
def test_float64_radius_with_a_head_computed_by_the_model(separate_bias: bool) -> None:
    """The Lipschitz bounds were those of the graph's float64 constants (the head's rows),
    not of the exact ones: with W = A / B - D off by 5e-10 of itself and the bias in an Add
    of its own (no rounding term carries rho times it), the float64 graph's radius at x = 0
    exceeded the exact distance to the boundary by 3.1e-10 of itself (exact rationals)."""
    import torch

    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.certify.radii import certify_logits, choose_method
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.graph.execute import GraphExecutor
    from lipcert.model import LoadOptions

    n = 16
    a, b, d = _quotient_weight(0, n)
    model = _quotient_model(a, b, d, separate_bias=separate_bias)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.folded_error["W"] > 2.0**-32
    analysis = analyse(loaded.graph)
    executor = GraphExecutor(analysis.graph, dtype=torch.float64)
    with torch.no_grad():
        logits = executor(torch.zeros((1, n), dtype=torch.float64)).numpy()
    exact = [
        [
            Fraction(float(a[i, j])) / Fraction(float(b[i, j])) - Fraction(float(d[i, j]))
            for j in range(n)
        ]
        for i in range(2)
    ]
    square = sum((p - q) ** 2 for p, q in zip(exact[0], exact[1], strict=True))
    for unit in (FLOAT64_UNIT_ROUNDOFF, FLOAT32_UNIT_ROUNDOFF):
        spec = analysis.spec_for_precision(unit)
        certificates = certify_logits(
            logits, spec, choose_method(spec, "auto"), spec.fp_allowance(np.zeros(1))
        )
        radius = float(certificates.radius[0])
        assert radius > 0
        assert Fraction(radius) ** 2 * square <= 1
        # not far below it either: the exact distance less the allowance (float32: 3e-6)
        assert Fraction(radius) ** 2 * square >= 1 - (1e-4 if unit > 1e-10 else 1e-8)


def test_float64_radius_with_a_hidden_layer_computed_by_the_model() -> None:
    """The same for a hidden layer: w = A / B - D (one row, 5e-10 of itself off in float64),
    then an exact head [1, -1] and a bias: the Lipschitz bound of the hidden layer must be
    that of the exact w, or the float64 radius at x = 0 passes the exact boundary."""
    import torch

    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.certify.radii import certify_logits, choose_method
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.graph.execute import GraphExecutor
    from lipcert.model import LoadOptions

    n = 16
    a, b, d = _quotient_weight(0, n)
    a, b, d = a[:1], b[:1], d[:1]
    head = np.array([[1.0], [-1.0]], np.float32)
    nodes = [
        helper.make_node("Div", ["A", "B"], ["q"]),
        helper.make_node("Sub", ["q", "D"], ["W"]),
        helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
        helper.make_node("Gemm", ["h", "H"], ["g"], transB=1),
        helper.make_node("Add", ["g", "bias"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(value, name)
        for name, value in {
            "A": a,
            "B": b,
            "D": d,
            "H": head,
            "bias": np.array([1.0, 0.0], np.float32),
        }.items()
    ]
    graph = helper.make_graph(
        nodes,
        "hidden",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", n])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.folded_error["W"] > 2.0**-32
    analysis = analyse(loaded.graph)
    spec = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    executor = GraphExecutor(analysis.graph, dtype=torch.float64)
    with torch.no_grad():
        logits = executor(torch.zeros((1, n), dtype=torch.float64)).numpy()
    certificates = certify_logits(
        logits, spec, choose_method(spec, "auto"), spec.fp_allowance(np.zeros(1))
    )
    radius = float(certificates.radius[0])
    exact = [
        Fraction(float(a[0, j])) / Fraction(float(b[0, j])) - Fraction(float(d[0, j]))
        for j in range(n)
    ]
    # the margin 2 w.x + 1 reaches 0 at distance 1 / (2 ||w||)
    square = 4 * sum(v * v for v in exact)
    assert radius > 0
    assert Fraction(radius) ** 2 * square <= 1


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL1", "Mul", "Div", "Reciprocal"])
def test_folded_error_composition_keeps_tiny_terms(op: str) -> None:
    """rho of an op on inputs known to w = 2^-54 of themselves: (1 + w)^2 (1 + u) ... - 1 in
    float64 lost w (1 + 2^-54 is 1); the bound must be at least the exact composition
    (Fractions)."""
    from lipcert.frontends.onnx_exact import _U64, _gamma, _node_error, _reduce_error

    w = 2.0**-54
    u, g1 = Fraction(_U64), Fraction(_gamma(1))
    one = np.array([3.0])
    if op.startswith("Reduce"):
        node = helper.make_node(op, ["a"], ["b"], keepdims=0)
        got = _reduce_error(node, [np.ones((1, 1))], w, np.ones(1))
        squares = (1 + Fraction(w)) ** 2 * (1 + u) * (1 + g1) - 1
        need = squares if op == "ReduceSumSquare" else (1 + Fraction(w)) * (1 + g1) - 1
    else:
        inputs = ["a", "b"] if op != "Reciprocal" else ["a"]
        node = helper.make_node(op, inputs, ["c"])
        values = {"a": one, "b": np.array([7.0]), "c": np.array([0.123456789])}
        errors = [w] * len(inputs)
        got = _node_error(node, values, errors, w, values["c"])
        e = Fraction(w)
        need = {
            "Mul": (1 + e) ** 2 * (1 + u) - 1,
            "Div": (1 + e) * (1 + u) / (1 - e) - 1,
            "Reciprocal": (1 + u) / (1 - e) - 1,
        }[op]
    assert Fraction(got) >= need


def test_posterior_head_differences_bound_the_exact_rows() -> None:
    """The default evaluator's head term (PosteriorEvaluator's `_head_differences`, the
    ||w_i - w_j|| that carry the body's error into a margin) must bound the EXACT rows'
    differences: from float64 rows of W = A / B - D (5e-10 off) with a 1e-10 slack only,
    it fell short (exact rationals); the rows' spread (compose._head_spread) now widens it."""
    from lipcert.evaluators.posterior import _head_differences
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.model import LoadOptions

    n = 16
    a, b, d = _quotient_weight(0, n)
    loaded = load_from_proto(_quotient_model(a, b, d), LoadOptions(), source="t", fmt="onnx")
    analysis = analyse(loaded.graph)
    found = _head_differences(analysis.graph)
    assert found is not None
    _, differences = found
    exact = [
        [
            Fraction(float(a[i, j])) / Fraction(float(b[i, j])) - Fraction(float(d[i, j]))
            for j in range(n)
        ]
        for i in range(2)
    ]
    square = sum((p - q) ** 2 for p, q in zip(exact[0], exact[1], strict=True))
    assert Fraction(float(differences[0, 1])) ** 2 >= square
    assert Fraction(float(differences[1, 0])) ** 2 >= square
