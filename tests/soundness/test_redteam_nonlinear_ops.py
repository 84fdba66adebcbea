"""Red team of the element-wise nonlinear rules: activations whose parameters make them
non-Lipschitz or NaN, and the activation constants against an independent float64 slope.

Ground truth is computed here, never read from lipcert: onnxruntime's decisions on the file,
and sup |f'| from torch's float64 autograd on a dense grid (the ops' exact meaning).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hostile_models import assert_refused_or_sound, decision, load, make, run, tensor
from onnx import helper

from lipcert.bounds.compose import analyse
from lipcert.errors import LipcertError

NAN, INF = float("nan"), float("inf")
# class 1 where x0 > x1, class 0 where x1 > x0 (argmax, the first on NaN)
_SWAP = np.array([[-1.0, 1.0], [1.0, -1.0]], np.float32)


def _activation_then_matmul(op: str, opset: int = 17, **attrs: object):
    nodes = [
        helper.make_node(op, ["x"], ["h"], **attrs),
        helper.make_node("MatMul", ["h", "w"], ["logits"]),
    ]
    return make(nodes, [tensor("w", _SWAP)], [1, 2], [1, 2], opset=opset)


# --- non-finite parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("Elu", {"alpha": NAN}),
        ("LeakyRelu", {"alpha": NAN}),
        ("Celu", {"alpha": INF}),
        ("Selu", {"gamma": NAN}),
        ("HardSigmoid", {"alpha": NAN}),
        ("HardSigmoid", {"beta": NAN}),
    ],
)
def test_non_finite_activation_parameter_is_refused(op: str, attrs: dict[str, float]) -> None:
    """Elu with alpha NaN is x for x > 0 and NaN for x < 0: max(1, |NaN|) is 1 in Python, so
    its rule claimed 1 and x = (0.5, 0.02) was certified class 1 with radius 0.339, though
    x' = (0.5, -0.3), at 0.32, gives NaN logits (no class 1). Each must be refused in one
    line naming the node and the attribute."""
    model = _activation_then_matmul(op, **attrs)
    x = np.array([0.5, 0.02], np.float32)
    x_other = np.array([0.5, -0.3], np.float32)
    outputs = np.concatenate([run(model, x[None]), run(model, x_other[None])])
    true_decision = decision(outputs)
    assert_refused_or_sound(model, x, x_other, true_decision, f"{op}.*not a finite number")


def test_elu_nan_counterexample_is_genuine() -> None:
    """The trap is real: onnxruntime certifies nothing at x' (NaN logits), class 1 at x."""
    model = _activation_then_matmul("Elu", alpha=NAN)
    at_x = run(model, np.array([[0.5, 0.02]], np.float32))
    at_other = run(model, np.array([[0.5, -0.3]], np.float32))
    assert np.argmax(at_x[0]) == 1 and np.all(np.isnan(at_other))


@pytest.mark.parametrize(
    ("op", "attrs", "truth"),
    [
        ("Elu", {"alpha": 0.5}, 1.0),
        ("LeakyRelu", {"alpha": -3.0}, 3.0),
        ("Celu", {"alpha": 2.0}, 1.0),
    ],
)
def test_finite_look_alike_keeps_its_bound(op: str, attrs: dict[str, float], truth: float) -> None:
    """The same activations with finite parameters load, with their slope times ||W|| = 2."""
    bound = analyse(load(_activation_then_matmul(op, **attrs)).graph).spec.lipschitz_bound
    assert 2.0 * truth <= bound <= 2.0 * truth * (1 + 1e-6)


# --- activation constants against a float64 slope ---------------------------------------------


def _float64_sup_slope(function, lo: float = -12.0, hi: float = 12.0) -> float:
    """sup |f'| on a grid of spacing 1e-5 around the coarse maximiser (torch float64)."""
    x = torch.linspace(lo, hi, 240_001, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(function(x).sum(), x)
    centre = float(x.detach()[grad.abs().argmax()])
    fine = torch.linspace(centre - 2e-4, centre + 2e-4, 40_001, dtype=torch.float64)
    fine.requires_grad_(True)
    (grad,) = torch.autograd.grad(function(fine).sum(), fine)
    return float(grad.abs().max())


_SELU_A, _SELU_G = -3.0, 2.0
_CASES = [
    ("Gelu", 20, {}, lambda t: torch.nn.functional.gelu(t)),
    (
        "Gelu",
        20,
        {"approximate": "tanh"},
        lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    ),
    ("Mish", 18, {}, torch.nn.functional.mish),
    ("Erf", 17, {}, torch.erf),
    ("HardSwish", 17, {}, torch.nn.functional.hardswish),
    ("Sigmoid", 17, {}, torch.sigmoid),
    (
        "Selu",
        17,
        {"alpha": _SELU_A, "gamma": _SELU_G},
        lambda t: _SELU_G * torch.where(t > 0, t, _SELU_A * (torch.exp(t) - 1)),
    ),
    ("HardSigmoid", 17, {"alpha": -3.0, "beta": 0.2}, lambda t: torch.clamp(-3.0 * t + 0.2, 0, 1)),
]


@pytest.mark.parametrize(("op", "opset", "attrs", "function"), _CASES)
def test_activation_bound_covers_float64_slope(op, opset, attrs, function) -> None:
    """lipcert's bound of W o f (||W|| = 2) is at least 2 sup |f'| and within 1e-6 of it:
    lowering any constant in the table below the true supremum fails here."""
    truth = _float64_sup_slope(function)
    model = _activation_then_matmul(op, opset=opset, **attrs)
    bound = analyse(load(model).graph).spec.lipschitz_bound
    assert bound >= 2.0 * truth, (op, bound, 2.0 * truth)
    assert bound <= 2.0 * truth * (1 + 1e-6), (op, bound, 2.0 * truth)


def test_silu_pattern_bound_covers_float64_slope() -> None:
    """x * Sigmoid(x) is fused to SiLU: its bound covers sup |silu'| = 1.0998..."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["logits"]),
    ]
    model = make(nodes, [tensor("w", _SWAP)], [1, 2], [1, 2])
    truth = _float64_sup_slope(torch.nn.functional.silu)
    bound = analyse(load(model).graph).spec.lipschitz_bound
    assert 2.0 * truth <= bound <= 2.0 * truth * (1 + 1e-6)


def test_refusals_name_the_node_in_one_line() -> None:
    model = _activation_then_matmul("Elu", alpha=NAN)
    with pytest.raises(LipcertError, match=r"Elu_0.*alpha is nan") as info:
        analyse(load(model).graph)
    assert "\n" not in str(info.value)
