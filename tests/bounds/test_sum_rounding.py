"""Rounding of sums: partial sums that cancel must stay inside the float32 allowance.

The models add a large value A, a few small terms t and -A. In float32, A + t rounds back to A
when t is below half an ulp of A, so the small terms are lost and the result is off by their
sum, which neither the result nor the inputs' own roundings bound. The exact value and the
float32 value (onnxruntime on the model file) are on opposite sides of 0: the allowance lipcert
takes off the margin must cover that error, or a certificate would hold for a decision the
exact function does not take.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from rule_cases import f32, i64, make_model, run_onnxruntime

from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

BIG = 2.0**20  # one ulp of BIG in float32 is 1/8: terms below 1/16 vanish when added to it
SMALL_TERMS = 3
THRESHOLD = 0.1


def _model(kind: str) -> tuple[onnx.ModelProto, float]:
    """logit = scale * (BIG + t + t + t - BIG) - scale * THRESHOLD, with t = x[:, 1].

    BIG and -BIG come from exact ops on x[:, 0] (Max and Min with constants), so no rule
    before the sum declares any rounding of their size.
    """
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0", "axis"], ["xa"], name="first"),
        helper.make_node("Slice", ["x", "s1", "e1", "axis"], ["t"], name="second"),
        helper.make_node("Max", ["xa", "big"], ["p"], name="plus_big"),
        helper.make_node("Min", ["xa", "minus_big"], ["q"], name="minus_big"),
    ]
    constants = {
        "s0": i64([0]),
        "e0": i64([1]),
        "s1": i64([1]),
        "e1": i64([2]),
        "axis": i64([1]),
        "big": f32([BIG]),
        "minus_big": f32([-BIG]),
    }
    terms = ["p", *["t"] * SMALL_TERMS, "q"]
    scale = 1.0 / len(terms) if kind in ("Mean", "ReduceMean", "GlobalAveragePool") else 1.0
    if kind in ("Sum", "Mean"):
        nodes.append(helper.make_node(kind, terms, ["s"], name="sum"))
    else:
        nodes.append(helper.make_node("Concat", terms, ["row"], name="row", axis=1))
        if kind == "GlobalAveragePool":
            constants |= {"image": i64([-1, 1, 1, len(terms)]), "flat": i64([-1, 1])}
            nodes += [
                helper.make_node("Reshape", ["row", "image"], ["img"], name="to_image"),
                helper.make_node(kind, ["img"], ["pooled"], name="sum"),
                helper.make_node("Reshape", ["pooled", "flat"], ["s"], name="to_logit"),
            ]
        else:
            nodes.append(helper.make_node(kind, ["row", "axis"], ["s"], name="sum"))
    nodes.append(helper.make_node("Sub", ["s", "threshold"], ["y"], name="logit"))
    constants["threshold"] = f32([THRESHOLD * scale])
    return make_model(nodes, [2], constants), scale


def _exact_logit(x: np.ndarray, scale: float) -> np.ndarray:
    small = x[:, 1].astype(np.float64)
    return scale * (SMALL_TERMS * small - THRESHOLD)


KINDS = ["Sum", "Mean", "ReduceSum", "ReduceMean", "GlobalAveragePool"]


@pytest.mark.parametrize("kind", KINDS)
def test_allowance_covers_cancelling_partial_sums(kind: str) -> None:
    model, scale = _model(kind)
    rng = np.random.default_rng(0)
    # t just below half an ulp of BIG (all lost) and random ones in (0, 1/16)
    small = np.concatenate([[0.06, 0.0624], rng.uniform(0.0, 0.0625, 30)])
    x = np.stack([rng.uniform(-1.0, 1.0, small.size), small], axis=1).astype(np.float32)
    computed = run_onnxruntime(model, x)[:, 0].astype(np.float64)
    exact = _exact_logit(x, scale)
    spec = analyse(load_from_proto(model, LoadOptions(), source="t", fmt="onnx").graph).spec
    allowance = spec.fp_allowance(np.linalg.norm(x.astype(np.float64), axis=1))
    error = np.abs(computed - exact)
    assert np.all(error <= allowance), (error, allowance)


@pytest.mark.parametrize("kind", ["Sum", "Mean"])
def test_cancellation_flips_the_decision_and_is_not_certified(kind: str) -> None:
    """The counterexample itself: onnxruntime's float32 logit and the exact one disagree."""
    model, scale = _model(kind)
    x = np.array([[0.0, 0.06]], dtype=np.float32)
    computed = float(run_onnxruntime(model, x)[0, 0])
    exact = float(_exact_logit(x, scale)[0])
    assert exact > 0 > computed  # all small terms lost: 0 - threshold
    error = abs(computed - exact)
    assert error > 0.1 * scale
    spec = analyse(load_from_proto(model, LoadOptions(), source="t", fmt="onnx").graph).spec
    allowance = float(spec.fp_allowance(np.linalg.norm(x.astype(np.float64), axis=1))[0])
    # The margin does not exceed the allowance: no certificate for the wrong decision.
    assert abs(computed) <= allowance
    assert error <= allowance
