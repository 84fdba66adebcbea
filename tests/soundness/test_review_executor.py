"""Final review of the executor and its neighbours (fixed-batch chunking, unary ops).

Ground truth: onnxruntime on the file, one placement at a time; exact Fraction compositions;
mpmath at 200 bits.
"""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hostile_models import certify, make, tensor
from onnx import helper

from lipcert.errors import LipcertError


def _per_slot_bias_model(batch: int, slot: int) -> onnx.ModelProto:
    """logits = x + bias, the batch fixed at `batch`, the bias 5 on class 1 in one slot only:
    the same image is classified 0 in every slot but `slot`, where it is classified 1."""
    bias = np.zeros((batch, 2), np.float32)
    bias[slot, 1] = 5.0
    nodes = [helper.make_node("Add", ["x", "bias"], ["logits"], name="add")]
    return make(nodes, [tensor("bias", bias)], [batch, 2], [batch, 2])


@pytest.mark.parametrize(("batch", "slot"), [(3, 1), (4, 2)])
def test_a_constant_of_a_middle_slot_is_refused(batch: int, slot: int) -> None:
    model = _per_slot_bias_model(batch, slot)
    image = np.array([0.5, 0.2], np.float32)
    x = np.stack([image] * batch)
    x[slot] = [0.9, -0.3]
    # ground truth: onnxruntime gives the image two decisions, by slot
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": np.stack([image] * batch)})
    assert np.argmax(logits[0]) == 0 and np.argmax(logits[slot]) == 1
    with pytest.raises(LipcertError, match=r"depend on the other samples of its batch"):
        certify(model, x)


def test_the_same_constant_in_every_slot_is_certified_alike() -> None:
    batch = 3
    bias = np.tile(np.array([[0.0, 0.25]], np.float32), (batch, 1))
    nodes = [helper.make_node("Add", ["x", "bias"], ["logits"], name="add")]
    model = make(nodes, [tensor("bias", bias)], [batch, 2], [batch, 2])
    image = np.array([0.5, 0.2], np.float32)
    other = np.array([0.9, -0.3], np.float32)
    predictions, radii = certify(model, np.stack([other, image, other, image]))
    # exact: margin 0.5 - 0.45 = 0.05, Lipschitz sqrt(2) for the margin: radius 0.05 / sqrt 2
    assert predictions[1] == predictions[3] == 0
    assert radii[1] == pytest.approx(radii[3], rel=1e-12)
    assert radii[1] <= 0.05 / np.sqrt(2) and radii[1] == pytest.approx(0.05 / np.sqrt(2), rel=1e-4)


@pytest.mark.parametrize("to", [onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE])
def test_a_rounding_cast_composes_its_input_error(to: int) -> None:
    """rho of Cast to float32 of a value known to w of itself: (1 + w)(1 + 2^-24) - 1 exactly
    (Fractions); w + 2^-24 in float64 dropped w 2^-24. A cast to float64 adds nothing."""
    from lipcert.frontends.onnx_exact import _U32, _node_error

    w = 2.0**-30
    node = helper.make_node("Cast", ["a"], ["c"], to=to)
    a = np.array([0.1])
    values = {"a": a, "c": a.astype(np.float32 if to == onnx.TensorProto.FLOAT else np.float64)}
    got = _node_error(node, values, [w], w, values["c"])
    rounding = Fraction(_U32) if to == onnx.TensorProto.FLOAT else Fraction(0)
    assert Fraction(got) >= (1 + Fraction(w)) * (1 + rounding) - 1


_MP_REFERENCE = {
    "Tanh": lambda x: mpmath.tanh(x),
    "Sigmoid": lambda x: 1 / (1 + mpmath.exp(-x)),
    "Softplus": lambda x: mpmath.log(1 + mpmath.exp(x)),
    "Softsign": lambda x: x / (1 + abs(x)),
    "Sin": lambda x: mpmath.sin(x),
    "Cos": lambda x: mpmath.cos(x),
    "Atan": lambda x: mpmath.atan(x),
    "Asinh": lambda x: mpmath.asinh(x),
    "Erf": lambda x: mpmath.erf(x),
    "Mish": lambda x: x * mpmath.tanh(mpmath.log(1 + mpmath.exp(x))),
    "HardSwish": lambda x: x * min(max(x + 3, 0), 6) / 6,
}


@pytest.mark.parametrize("op", sorted(_MP_REFERENCE))
def test_executor_unary_ops_within_the_library_allowance(op: str) -> None:
    """The float64 executor's element-wise functions against mpmath (200 bits) on a dense
    grid and at extreme inputs: within the LIBRARY_ULPS ulps, relative and absolute, that the
    rules allow (F.softplus returns x itself above 20: 3e5 ulps off at x = 21)."""
    import torch

    from lipcert.bounds.registry import LIBRARY_ULPS
    from lipcert.graph.execute import _UNARY

    mpmath.mp.prec = 200
    grid = np.linspace(-40.0, 40.0, 801)
    tails = np.logspace(-300, 3, 60)
    points = np.concatenate([grid, tails, -tails, [20.5, 21.0, 36.7, 37.0, 709.0, 1e16]])
    with torch.no_grad():
        ours = _UNARY[op](torch.tensor(points, dtype=torch.float64)).numpy()
    u = 2.0**-53
    worst = 0.0
    for x, y in zip(points, ours, strict=True):
        exact = _MP_REFERENCE[op](mpmath.mpf(float(x)))
        worst = max(worst, float(abs(mpmath.mpf(float(y)) - exact) / (u * (abs(exact) + 1))))
    assert worst <= LIBRARY_ULPS
