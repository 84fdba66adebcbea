"""The Householder activation (Singla, Singla and Feizi, ICLR 2022): fused, bounded by 1, its
runtime's distance to the exact reflection inside the rounding allowance.

The layer is written in plain torch from the reference code (singlasahil14/
improved_l2_robustness, custom_activations.py, read, not copied) and exported by both torch
exporters. Ground truth, independent of lipcert's code:
- the network's true constant: the largest norm of its per-region Jacobians W2 J W1, J
  block-diagonal of identities and the reflections of the exported float32 constants,
  enumerated over every region (all are reached: W1 has full row rank);
- the ideal function h: each pair z kept where w . z <= 0 and reflected by
  I - 2 w w^T / (w . w) elsewhere, computed exactly in rationals from the float32 input and w
  (dynamo's float32 weights, or the float64 sine and cosine of the float32 angle's half);
  onnxruntime's float32 outputs (the model lipcert runs) and lipcert's float64 executor are
  compared with it at points placed on the selector's line and a few ulps off it.
A reflection off by 2^-20 is accepted, its deviation carried by the allowance (checked
there to exceed what rounding alone would allow). Look-alikes (a reflection off by 1 %, or
by 2^-10, a selector of another angle, a bias, a threshold other than 0, masks that both
vanish on the line) are refused, naming a node.
"""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from user_export import export_like_users

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, analyse, gamma
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadedModel, LoadOptions

TARGET = 1.05
SOUND = 1 - 1e-5
BATCH = 2  # the dynamo export fixes the batch to the example's


class HouseHolder(nn.Module):
    """Order-1 Householder activation on the two halves of axis 1 (dense or conv mode).

    The keyword arguments build look-alikes: `scale` multiplies the reflection's vector,
    `shift` moves the selector's angle, `bias` is added to the reflected first half,
    `threshold` replaces the selector's 0, `gap` selects with (s < 0) and (s > 0), `swap`
    keeps the pair where s > 0 and reflects it elsewhere (continuous: accepted); `angle`
    sets every angle (the reference code's initial one is pi/2)."""

    def __init__(
        self,
        channels: int,
        conv: bool = False,
        *,
        scale: float = 1.0,
        shift: float = 0.0,
        bias: float = 0.0,
        threshold: float = 0.0,
        gap: bool = False,
        swap: bool = False,
        angle: float | None = None,
    ) -> None:
        super().__init__()
        shape = (1, channels // 2, 1, 1) if conv else (1, channels // 2)
        self.theta = nn.Parameter(torch.rand(shape) * 2 * math.pi)
        if angle is not None:
            with torch.no_grad():
                self.theta.fill_(angle)
        self.scale, self.shift, self.bias = scale, shift, bias
        self.threshold, self.gap, self.swap = threshold, gap, swap

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.theta
        x, y = z.split(z.shape[1] // 2, 1)
        half = 0.5 * (theta + self.shift)
        selector = x * torch.sin(half) - y * torch.cos(half)
        if self.scale == 1.0:
            a_2 = x * torch.cos(theta) + y * torch.sin(theta)
            b_2 = x * torch.sin(theta) - y * torch.cos(theta)
        else:  # I - 2 v v^T with v = scale (sin(t/2), -cos(t/2))
            v0, v1 = self.scale * torch.sin(0.5 * theta), -self.scale * torch.cos(0.5 * theta)
            a_2 = x * (1 - 2 * v0 * v0) + y * (-2 * v0 * v1)
            b_2 = x * (-2 * v0 * v1) + y * (1 - 2 * v1 * v1)
        if self.bias:
            a_2 = a_2 + self.bias
        keep = selector < self.threshold if self.gap else selector <= self.threshold
        turn = selector > self.threshold
        if self.swap:
            keep, turn = turn, selector <= self.threshold
        a = x * keep + a_2 * turn
        b = y * keep + b_2 * turn
        return torch.cat([a, b], dim=1)


def export(module: nn.Module, dynamo: bool, shape: tuple[int, ...]) -> onnx.ModelProto:
    example = torch.rand(BATCH, *shape, generator=torch.Generator().manual_seed(0))
    return export_like_users(module, example, dynamo)


def load(module: nn.Module, dynamo: bool, shape: tuple[int, ...]) -> LoadedModel:
    return load_from_proto(export(module, dynamo, shape), LoadOptions(), source="t", fmt="onnx")


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def dense_net(seed: int, orthogonal_weights: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    first, second = nn.Linear(8, 8), nn.Linear(8, 3)
    if orthogonal_weights:
        second = nn.Linear(8, 8)
        with torch.no_grad():
            first.weight.copy_(orthogonal(8, seed))
            second.weight.copy_(orthogonal(8, seed + 1))
    return nn.Sequential(first, HouseHolder(8), second).eval()


CASES = [(dynamo, seed) for dynamo in (False, True) for seed in (0, 1)]
IDS = [f"{'dynamo' if d else 'torchscript'}-seed{s}" for d, s in CASES]


@functools.cache
def dense_analysis(dynamo: bool, seed: int, orthogonal_weights: bool = False) -> Analysis:
    torch.set_num_threads(1)
    return analyse(load(dense_net(seed, orthogonal_weights), dynamo, (8,)).graph)


# --- ground truth ------------------------------------------------------------------------------


def reflections(layer: HouseHolder) -> list[np.ndarray]:
    """The reflection of each pair, from the float32 angle (sines and cosines in float64)."""
    theta = layer.theta.detach().double().reshape(-1).numpy()
    return [np.array([[math.cos(t), math.sin(t)], [math.sin(t), -math.cos(t)]]) for t in theta]


def weight(net: nn.Sequential, index: int) -> np.ndarray:
    layer = net[index]
    assert isinstance(layer, nn.Linear)
    return layer.weight.detach().double().numpy()


def true_constant(net: nn.Sequential) -> float:
    """max over the 2^pairs regions of ||W2 J W1||: the constant of the piecewise-linear net."""
    w1, w2 = weight(net, 0), weight(net, 2)
    activation = net[1]
    assert isinstance(activation, HouseHolder)
    pairs = reflections(activation)
    half = len(pairs)
    best = 0.0
    for choice in itertools.product((False, True), repeat=half):
        jacobian = np.eye(2 * half)
        for p, reflect in enumerate(choice):
            if reflect:
                index = np.ix_([p, p + half], [p, p + half])
                jacobian[index] = pairs[p]
        best = max(best, float(np.linalg.norm(w2 @ jacobian @ w1, 2)))
    return best


# --- (a) loads, fused, bounded near the true constant -------------------------------------------


@pytest.mark.parametrize(("dynamo", "seed"), CASES, ids=IDS)
def test_householder_is_fused_with_factor_one(dynamo: bool, seed: int) -> None:
    found = dense_analysis(dynamo, seed)
    ops = [layer.op for layer in found.layers]
    assert ops.count("Householder") == 1, ops
    assert not {"Greater", "LessOrEqual", "Cast", "Split"} & set(ops)
    (block,) = [layer for layer in found.layers if layer.op == "Householder"]
    assert block.bound == 1.0


@pytest.mark.parametrize(("dynamo", "seed"), CASES, ids=IDS)
def test_network_bound_against_the_enumerated_true_constant(dynamo: bool, seed: int) -> None:
    net = dense_net(seed)
    truth = true_constant(net)
    bound = dense_analysis(dynamo, seed).spec.lipschitz_bound
    product = float(np.linalg.norm(weight(net, 0), 2)) * float(np.linalg.norm(weight(net, 2), 2))
    assert bound >= truth * SOUND
    assert bound <= TARGET * product


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_orthogonal_network_is_bounded_within_five_percent_of_one(dynamo: bool) -> None:
    """Orthogonal layers around the activation: every region's Jacobian is orthogonal, the
    true constant is 1 (also by enumeration)."""
    net = dense_net(3, orthogonal_weights=True)
    truth = true_constant(net)
    assert truth == pytest.approx(1.0, abs=1e-6)
    bound = dense_analysis(dynamo, 3, True).spec.lipschitz_bound
    assert truth * SOUND <= bound <= TARGET * truth


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_conv_mode_is_fused_and_the_graph_reproduces_the_module(dynamo: bool) -> None:
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), HouseHolder(4, conv=True), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    loaded = load(net, dynamo, (2, 4, 4))
    found = analyse(loaded.graph)
    assert [layer.op for layer in found.layers].count("Householder") == 1
    x = torch.randn(BATCH, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ours = GraphExecutor(found.graph, torch.float32)(x)
    assert torch.allclose(ours, net(x), atol=1e-5)
    # never below the largest Jacobian norm of the float64 module at random points
    double = nn.Sequential(*[layer for layer in net]).double()
    generator = torch.Generator().manual_seed(2)
    largest = 0.0
    for _ in range(8):
        point = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=generator)
        jac = torch.autograd.functional.jacobian(lambda v: double(v).reshape(-1), point)
        largest = max(largest, float(np.linalg.norm(jac.reshape(3, -1).numpy(), 2)))
    assert found.spec.lipschitz_bound >= largest * SOUND


# --- (b) the allowance covers the runtime's distance to the exact reflection ---------------------


def selector_vectors(model: onnx.ModelProto, layer: HouseHolder, dynamo: bool) -> list[tuple]:
    """w = (w1, w2) of each pair as the certified function takes it: dynamo's float32
    weights, or the float64 sine and cosine of the float32 angle's half (TorchScript)."""
    if dynamo:
        # the selector: the Sub that LessOrEqual compares, of Mul(x, sin) and Mul(y, cos)
        # (weights of equal values share one name: at t = pi/2, sin t/2 = cos t/2)
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        producers = {out: node for node in model.graph.node for out in node.output}
        compare = next(n for n in model.graph.node if n.op_type == "LessOrEqual")
        sub = producers[compare.input[0]]
        assert sub.op_type == "Sub"
        sin, cos = (
            weights[next(i for i in producers[name].input if i in weights)].reshape(-1)
            for name in sub.input
        )
        return [(Fraction(float(s)), -Fraction(float(c))) for s, c in zip(sin, cos, strict=True)]
    theta = layer.theta.detach().reshape(-1).numpy()
    return [(Fraction(math.sin(float(t) / 2)), -Fraction(math.cos(float(t) / 2))) for t in theta]


def ideal(z: np.ndarray, vectors: list[tuple]) -> list[list[Fraction]]:
    """h(z) exactly, for each sample of a (N, 2 * pairs) float array."""
    half = len(vectors)
    out = []
    for row in z:
        values = [Fraction(float(v)) for v in row]
        for p, (w1, w2) in enumerate(vectors):
            x, y = values[p], values[p + half]
            if w1 * x + w2 * y > 0:
                norm = w1 * w1 + w2 * w2
                dot = w1 * x + w2 * y
                values[p], values[p + half] = x - 2 * dot * w1 / norm, y - 2 * dot * w2 / norm
        out.append(values)
    return out


def distance(computed: np.ndarray, exact: list[list[Fraction]]) -> np.ndarray:
    squares = [
        sum((Fraction(float(c)) - e) ** 2 for c, e in zip(row, want, strict=True))
        for row, want in zip(computed, exact, strict=True)
    ]
    return np.array([math.sqrt(float(s)) * (1 + 1e-12) for s in squares])


def boundary_points(vectors: list[tuple], count: int, seed: int) -> np.ndarray:
    """float32 points whose pairs lie on the selector's line, a few ulps off it, or anywhere."""
    rng = np.random.default_rng(seed)
    half = len(vectors)
    points = np.zeros((count, 2 * half), dtype=np.float32)
    for n in range(count):
        for p, (w1, w2) in enumerate(vectors):
            radius = float(rng.uniform(0.1, 100.0))
            along = np.array([float(w2), -float(w1)])  # on the line w . z = 0
            pair = (radius * along / np.linalg.norm(along)).astype(np.float32)
            kind = n % 4
            if kind == 1:  # nudged by a few ulps across the line
                pair = pair + np.float32(rng.integers(-4, 5)) * np.spacing(pair)
            elif kind == 3:
                pair = rng.normal(size=2).astype(np.float32) * np.float32(radius)
            points[n, p], points[n, p + half] = pair
    return points


def run_onnxruntime(loaded: LoadedModel, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(loaded.onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = [
        session.run(None, {loaded.input_name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)
    ]
    return np.concatenate(outputs)


RUNTIME_CASES: dict[str, dict[str, Any]] = {
    "reference": {},
    "kept-where-positive": {"swap": True},
    # within the tolerance, far above rounding: the allowance must carry the deviation
    "reflection-off-by-2^-20": {"scale": 1 + 2.0**-20},
    # the reference code's initial angle, and near it: cos t is about -4e-8 and 1e-6, known
    # in float64 to an absolute 1e-14 only (TorchScript keeps the Cos: recomputed)
    "initial-angle-pi/2": {"angle": math.pi / 2},
    "angle-pi/2+1e-6": {"angle": math.pi / 2 + 1e-6},
}


@pytest.mark.parametrize("case", list(RUNTIME_CASES))
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_runtime_stays_within_the_allowance_of_the_exact_reflection(
    dynamo: bool, case: str
) -> None:
    torch.manual_seed(7)
    layer = HouseHolder(16, **RUNTIME_CASES[case]).eval()
    model = export(layer, dynamo, (16,))
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    found = analyse(loaded.graph)
    assert [entry.op for entry in found.layers] == ["Householder"]
    assert found.layers[0].bound == 1.0
    if "angle" in RUNTIME_CASES[case] and not dynamo:
        # the near-zero cosine's relative error is above what the generic allowance takes
        assert max(loaded.graph.folded_error.values()) > 2.0**-30
    vectors = selector_vectors(model, layer, dynamo)
    points = boundary_points(vectors, 64, seed=3)
    exact = ideal(points, vectors)
    if layer.swap:  # kept where w . z > 0: the reference with -w, the same line
        exact = ideal(points, [(-w1, -w2) for w1, w2 in vectors])
    norms = np.linalg.norm(points.astype(np.float64), axis=1)

    computed = run_onnxruntime(loaded, points)
    errors = distance(computed, exact)
    allowance = found.spec.fp_allowance(norms)
    assert np.all(errors <= allowance), float(np.max(errors / allowance))
    # the node's own share alone (the input is exact in float32) covers it too
    ((_, bound),) = found.node_bounds
    rounding = bound.rounding
    own = gamma(rounding.terms) * rounding.input_gain * norms
    assert np.all(errors <= own), float(np.max(errors / own))
    if layer.scale != 1.0:
        # arithmetic alone (the gain without the constants' deviation) would not cover it
        arithmetic = gamma(4) * (4 + 2 * 1.5) * norms
        assert float(np.max(errors / arithmetic)) > 1

    precise = GraphExecutor(found.graph, torch.float64)(torch.from_numpy(points).double())
    errors64 = distance(precise.numpy(), exact)
    allowance64 = found.spec_for_precision(FLOAT64_UNIT_ROUNDOFF).fp_allowance(norms)
    assert np.all(errors64 <= allowance64), float(np.max(errors64 / allowance64))


# --- (c) look-alikes --------------------------------------------------------------------------

LOOK_ALIKES: dict[str, dict[str, Any]] = {
    "reflection-vector-scaled-1.01": {"scale": 1.01},
    "reflection-vector-scaled-1+2^-10": {"scale": 1 + 2.0**-10},
    "selector-of-another-angle": {"shift": 0.3},
    "bias-on-the-reflection": {"bias": 0.01},
    "threshold-0.05": {"threshold": 0.05},
    "masks-both-zero-on-the-line": {"gap": True},
    # at the initial angle too (a near-zero 1 - 2 v0^2 or cosine must not open a way in)
    "reflection-vector-scaled-1.01-at-pi/2": {"scale": 1.01, "angle": math.pi / 2},
    "reflection-vector-scaled-1+2^-10-at-pi/2": {"scale": 1 + 2.0**-10, "angle": math.pi / 2},
    "bias-on-the-reflection-at-pi/2": {"bias": 0.01, "angle": math.pi / 2},
}


@pytest.mark.parametrize("look", list(LOOK_ALIKES))
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_look_alikes_are_refused(look: str, dynamo: bool) -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(8, 8), HouseHolder(8, **LOOK_ALIKES[look]), nn.Linear(8, 3))
    with pytest.raises(UnsupportedOpError, match=r"node '[^']+'"):
        analyse(load(net.eval(), dynamo, (8,)).graph)


# --- the front-end: Sin and Cos of constants, recomputed in float64 ------------------------------


def _sine_model(
    op: str, weight: float, factor: float | None, then: str | None = None
) -> onnx.ModelProto:
    """logits = x * op(w) or x * op(w / factor): a constant computed by the model (`then`,
    a unary op, applied to op(w) on the constant path)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    source = "w"
    if factor is not None:
        nodes.append(helper.make_node("Div", ["w", "k"], ["wk"], name="angle"))
        source = "wk"
    if then is None:
        nodes.append(helper.make_node(op, [source], ["c"], name="fold"))
    else:
        nodes.append(helper.make_node(op, [source], ["s"], name="fold"))
        nodes.append(helper.make_node(then, ["s"], ["c"], name="then"))
    nodes.append(helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"))
    inits = [numpy_helper.from_array(np.array([[weight, 0.7]], np.float32), "w")]
    if factor is not None:
        inits.append(numpy_helper.from_array(np.array(factor, np.float32), "k"))
    graph = helper.make_graph(
        nodes,
        "sine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("op", ["Sin", "Cos"])
def test_sine_of_a_weight_is_recomputed_in_float64(op: str) -> None:
    loaded = load_from_proto(_sine_model(op, 0.3, None), LoadOptions(), source="t", fmt="onnx")
    assert loaded.graph.inexact_constants == {"c"}
    function = math.sin if op == "Sin" else math.cos
    angles = [float(np.float32(0.3)), float(np.float32(0.7))]
    values = np.array([function(a) for a in angles])
    np.testing.assert_allclose(loaded.graph.constant("c").reshape(-1), values, rtol=1e-14)
    # 64 ulps relative and 64 ulps of 1 + |angle| absolute, relative to the value
    u = 2.0**-53
    expected = float(np.max(64 * u * (1 + np.array(angles)) / np.abs(values))) + 64 * u
    assert loaded.graph.folded_error["c"] == pytest.approx(expected, rel=1e-9)


def test_cosine_near_a_zero_is_known_absolutely() -> None:
    """cos(float32(pi/2)) = -4.4e-8, and onnxruntime's float64 Cos is 6e-17 off there (the
    float64 pi's error): 1.4e-9 of the value, more than the generic allowance for recomputed
    constants takes (2^-30 relative). The constant loads, its relative bound recorded; the
    Mul that reads it (a generic rule) is refused, naming the node and the reason."""
    angle = float(np.float32(math.pi / 2))
    loaded = load_from_proto(_sine_model("Cos", angle, None), LoadOptions(), source="t", fmt="onnx")
    value = abs(math.cos(angle))
    u = 2.0**-53
    absolute = 64 * u * (1 + angle) + 64 * u * value
    assert loaded.graph.folded_error["c"] >= absolute / value > 2.0**-30
    with pytest.raises(UnsupportedOpError, match=r"node 'scale' \(Mul\).*'c'.*cosine near 0"):
        analyse(loaded.graph)


@pytest.mark.parametrize("then", ["Reciprocal", "Sqrt"])
def test_cosine_near_a_zero_is_refused_where_a_relative_bound_is_needed(then: str) -> None:
    """An op after the near-zero cosine whose float64 error bound is relative (1 / cos t
    amplifies it without limit): refused at loading, naming the node and the reason."""
    angle = float(np.float32(math.pi / 2))
    model = _sine_model("Cos", angle, None, then=then if then != "Sqrt" else "Abs")
    if then == "Sqrt":  # sqrt(|cos t|)
        model.graph.node[1].output[0] = "a"
        model.graph.node.insert(2, onnx.helper.make_node("Sqrt", ["a"], ["c"], name="root"))
    with pytest.raises(UnsupportedOpError, match=r"sine or cosine near 0.*relative"):
        load_from_proto(model, LoadOptions(), source="t", fmt="onnx")


@pytest.mark.parametrize("op", ["Sin", "Cos"])
def test_onnxruntime_float64_sine_within_the_library_bound(op: str) -> None:
    """The bound's model of the float64 library, 64 ulps of the value and of 1 + |x|,
    against 60-digit values (mpmath) at float32 angles on and next to multiples of pi/2,
    where the relative error is largest, and at random angles up to 1000."""
    mpmath = pytest.importorskip("mpmath")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    multiples = (np.arange(-100, 101) * (np.pi / 2)).astype(np.float32)
    rng = np.random.default_rng(0)
    angles32 = np.concatenate([multiples, rng.uniform(-1000, 1000, 500).astype(np.float32)])
    angles32 = np.concatenate([angles32, np.nextafter(angles32, np.float32(np.inf))])
    angles = angles32.astype(np.float64)
    (values,) = session.run(None, {"x": angles})
    function = mpmath.sin if op == "Sin" else mpmath.cos
    with mpmath.workprec(200):
        errors = np.array(
            [
                float(abs(mpmath.mpf(float(v)) - function(mpmath.mpf(float(a)))))
                for a, v in zip(angles, values, strict=True)
            ]
        )
    u = 2.0**-53
    assert np.all(errors <= 64 * u * (1 + np.abs(angles) + np.abs(values)))


def test_cosine_of_an_inexact_angle_carries_its_amplification() -> None:
    """cos(w / 3): the quotient is rounded in float64 too, and moves the cosine by up to
    |x| u, relative to |cos x| (large near pi/2)."""
    model = _sine_model("Cos", 4.51, 3.0)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    angle = float(np.float32(4.51)) / 3.0
    assert Fraction(angle) * 3 != Fraction(float(np.float32(4.51)))  # the quotient is rounded
    u = 2.0**-53
    library = 64 * u * (1 + angle)
    assert loaded.graph.folded_error["c"] >= (angle * u + library) / abs(math.cos(angle))


@pytest.mark.parametrize("offset", [0.0, 1e-6], ids=["pi/2", "pi/2+1e-6"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_the_reference_initial_angle(dynamo: bool, offset: float) -> None:
    """t = pi/2 (the reference code's initial angle), or near it: cos t = -4.4e-8 or 1e-6 in
    float32. TorchScript keeps Cos t, recomputed in float64 within an absolute 1e-14 only
    (above 2^-30 of itself); the Householder node defines its function from the graph's
    values and needs no relative bound: both exports load and are fused with factor 1
    (their runtime against the exact reflection: test_runtime_stays_within_...)."""
    torch.manual_seed(0)
    layer = HouseHolder(8, angle=0.5 * math.pi + offset)
    net = nn.Sequential(nn.Linear(8, 8), layer, nn.Linear(8, 3)).eval()
    loaded = load(net, dynamo, (8,))
    if not dynamo:
        assert max(loaded.graph.folded_error.values()) > 2.0**-30
    found = analyse(loaded.graph)
    (block,) = [layer for layer in found.layers if layer.op == "Householder"]
    assert block.bound == 1.0
    assert [layer.op for layer in found.layers] == ["Gemm", "Householder", "Gemm"]


# --- hand-written graphs: other spellings of the masks ---------------------------------------


def handwritten(keep: str, turn: str, mirrored: bool) -> tuple[onnx.ModelProto, list[tuple]]:
    """The activation on 3 pairs, its masks `keep`/`turn` comparisons of the selector with 0
    (written 0 OP s when `mirrored`), and the selector vectors."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    angle = rng.uniform(0, 2 * np.pi, size=(1, 3))
    values = {
        "hs": np.sin(angle / 2).astype(np.float32),
        "hc": np.cos(angle / 2).astype(np.float32),
        "rc": np.cos(angle).astype(np.float32),
        "rs": np.sin(angle).astype(np.float32),
        "zero": np.array(0.0, np.float32),
    }

    def compare(op: str, out: str) -> onnx.NodeProto:
        inputs = ["zero", "sel"] if mirrored else ["sel", "zero"]
        return helper.make_node(op, inputs, [out], name=out)

    mirror = {"Less": "Greater", "Greater": "Less", "LessOrEqual": "GreaterOrEqual"}
    mirror |= {"GreaterOrEqual": "LessOrEqual"}
    if mirrored:
        keep, turn = mirror[keep], mirror[turn]
    nodes = [
        helper.make_node("Split", ["x"], ["hx", "hy"], axis=1, num_outputs=2),
        helper.make_node("Mul", ["hx", "hs"], ["s1"]),
        helper.make_node("Mul", ["hy", "hc"], ["s2"]),
        helper.make_node("Sub", ["s1", "s2"], ["sel"]),
        helper.make_node("Mul", ["hx", "rc"], ["a1"]),
        helper.make_node("Mul", ["hy", "rs"], ["a2"]),
        helper.make_node("Add", ["a1", "a2"], ["ra"]),
        helper.make_node("Mul", ["rs", "hx"], ["b1"]),
        helper.make_node("Mul", ["hy", "rc"], ["b2"]),
        helper.make_node("Neg", ["b2"], ["nb2"]),
        helper.make_node("Add", ["nb2", "b1"], ["rb"]),
        compare(keep, "k"),
        compare(turn, "t"),
        helper.make_node("Cast", ["k"], ["keep"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["t"], ["turn"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["keep", "hx"], ["ka"]),
        helper.make_node("Mul", ["ra", "turn"], ["ta"]),
        helper.make_node("Add", ["ta", "ka"], ["oa"]),
        helper.make_node("Mul", ["hy", "keep"], ["kb"]),
        helper.make_node("Mul", ["turn", "rb"], ["tb"]),
        helper.make_node("Add", ["kb", "tb"], ["ob"]),
        helper.make_node("Concat", ["oa", "ob"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "householder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    w = [
        (Fraction(float(s)), -Fraction(float(c)))
        for s, c in zip(values["hs"][0], values["hc"][0], strict=True)
    ]
    return model, w


SPELLINGS = [
    ("LessOrEqual", "Greater", True),
    ("Less", "GreaterOrEqual", True),
    ("Greater", "LessOrEqual", True),  # kept on the positive side: the same line
    ("Less", "Greater", False),  # both masks vanish on the line: a jump to 0
    ("LessOrEqual", "GreaterOrEqual", False),  # both are 1 on the line: 2 z there
]


@pytest.mark.parametrize("mirrored", [False, True], ids=["s-op-0", "0-op-s"])
@pytest.mark.parametrize(("keep", "turn", "fused"), SPELLINGS)
def test_mask_spellings(keep: str, turn: str, fused: bool, mirrored: bool) -> None:
    model, w = handwritten(keep, turn, mirrored)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    if not fused:
        with pytest.raises(UnsupportedOpError, match=r"node '[^']+'"):
            analyse(loaded.graph)
        return
    found = analyse(loaded.graph)
    assert [entry.op for entry in found.layers] == ["Householder"]
    assert found.spec.lipschitz_bound == pytest.approx(1.0, abs=1e-12)
    points = boundary_points(w, 32, seed=5)
    kept_positive = keep in ("Greater", "GreaterOrEqual")
    exact = ideal(points, [(-a, -b) for a, b in w] if kept_positive else w)
    norms = np.linalg.norm(points.astype(np.float64), axis=1)
    errors = distance(run_onnxruntime(loaded, points), exact)
    assert np.all(errors <= found.spec.fp_allowance(norms))


# --- certificates against the true decision boundary in 2-D -----------------------------------


@pytest.mark.parametrize("angle", [None, math.pi / 2], ids=["random-angles", "angles-pi/2"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_certified_radii_never_reach_a_point_of_another_class(
    dynamo: bool, angle: float | None, tmp_path
) -> None:
    """A 2-D classifier with two Householder layers: every certified radius is at most the
    distance to the nearest point of a dense grid (spacing 2e-3) with another decision of the
    float64 module, and the radii are not vacuous. At the initial angle pi/2 too (TorchScript:
    cosines near 0, recomputed in float64)."""
    import lipcert

    torch.manual_seed(8)
    net = nn.Sequential(
        nn.Linear(2, 8),
        HouseHolder(8, angle=angle),
        nn.Linear(8, 8),
        HouseHolder(8, angle=angle),
        nn.Linear(8, 3),
    ).eval()
    first = net[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight.mul_(6.0)  # boundaries within reach of the samples
    path = tmp_path / "householder.onnx"
    onnx.save(export(net, dynamo, (2,)), path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, size=(BATCH * 6, 2)).astype(np.float32)
    double = nn.Sequential(*net).double()
    with torch.no_grad():
        labels = double(torch.from_numpy(x).double()).argmax(1).numpy()
    model = lipcert.load(path)
    samples = lipcert.certify_dataset(model, (x, labels), eps=(0.01,), threads=1).samples
    reached = grid_radius_ratios(x, samples, double)
    # measured 0.30 to 0.33 (the product of the random layers' norms is loose by about 3)
    assert reached and max(reached) > 0.2, reached


def grid_radius_ratios(x: np.ndarray, samples: Any, double: nn.Module) -> list[float]:
    """Every certified radius is at most the distance to the nearest point of a dense 2-D
    grid (step 2e-3, +-0.6 around the sample) that `double` (float64) classifies otherwise;
    returns radius / that distance where one was found."""
    step = 2e-3
    axis = np.arange(-0.6, 0.6 + step, step)
    offsets = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    reached = []
    for point, prediction, radius in zip(x, samples.prediction, samples.radius, strict=True):
        grid = point.astype(np.float64) + offsets
        with torch.no_grad():
            decisions = double(torch.from_numpy(grid)).argmax(1).numpy()
        other = np.linalg.norm(offsets[decisions != prediction], axis=1)
        nearest = float(other.min()) if other.size else math.inf
        assert radius <= nearest, (radius, nearest)
        if math.isfinite(nearest):
            reached.append(radius / nearest)
    return reached


class HouseHolderScaled(nn.Module):
    """The variant of Prach et al.'s 1LipschitzLayersCompared (from orthogonium): the last
    axis split, the result divided by sqrt(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.rand(1, channels // 2) * math.pi)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = z.split(z.shape[-1] // 2, -1)
        selector = x * torch.sin(0.5 * self.theta) - y * torch.cos(0.5 * self.theta)
        a_2 = x * torch.cos(self.theta) + y * torch.sin(self.theta)
        b_2 = x * torch.sin(self.theta) - y * torch.cos(self.theta)
        a = x * (selector <= 0) + a_2 * (selector > 0)
        b = y * (selector <= 0) + b_2 * (selector > 0)
        return torch.cat([a, b], dim=-1) / math.sqrt(2)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_the_scaled_variant_is_fused(dynamo: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), HouseHolderScaled(8), nn.Linear(8, 3)).eval()
    found = analyse(load(net, dynamo, (8,)).graph)
    layers = {layer.op: layer.bound for layer in found.layers}
    assert layers["Householder"] == 1.0
    assert layers["Div"] == pytest.approx(2**-0.5, rel=1e-7)  # by a float32 sqrt(2)
