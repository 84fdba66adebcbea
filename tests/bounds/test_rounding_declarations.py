"""Soundness by structure: every rule states its rounding, and only exact ops state none.

A rule cannot build a LayerBound without saying what rounding its op adds (no default), and
an op that is not exact in floating point must declare some (terms > 0). The ops allowed to
declare none are listed here: each only copies, selects, or compares its input elements and
constants, so its float32 result is the exact result on the same float32 inputs. The test
checks that too, on every rule case of those ops: the float64 reference, fed the case's float32
inputs, gives values that float32 represents exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rule_cases import RuleCase, all_cases, random_inputs

from lipcert.bounds.compose import analyse
from lipcert.bounds.registry import EXACT, LayerBound, Rounding
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

EXACT_IN_FLOAT = frozenset(
    {
        # copies and restrictions
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "DepthToSpace",
        "SpaceToDepth", "Identity", "Dropout", "Slice", "Split", "Concat", "Pad", "Gather",
        "Expand", "Tile",
        # selections and comparisons
        "Relu", "Abs", "Neg", "Clip", "Max", "Min", "MaxPool", "GlobalMaxPool", "ReduceMax",
        "ReduceMin", "TopK", "GroupSort", "MaxMin",
        # writes or keeps elements (reduction none, max, min; add and mul declare rounding)
        "ScatterND",
    }
)  # fmt: skip

CASES = all_cases()


def _declared(case: RuleCase) -> Rounding:
    graph = load_from_proto(case.model, LoadOptions(), source="t", fmt="onnx").graph
    analysis = analyse(graph)
    roundings = [layer.rounding for node, layer in analysis.node_bounds if node.op == case.op]
    assert len(roundings) == 1, [node.op for node, _ in analysis.node_bounds]
    return roundings[0]


def test_a_layer_bound_needs_its_rounding() -> None:
    with pytest.raises(TypeError, match="rounding"):
        LayerBound(1.0, "no rounding stated", exact=True)  # type: ignore[call-arg]


def test_rounding_refuses_negative_or_infinite_terms() -> None:
    for bad in ({"terms": -1}, {"input_gain": float("inf")}, {"offset": float("nan")}):
        with pytest.raises(ValueError, match="rounding"):
            Rounding(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_op_not_exact_in_float_declares_rounding(case: RuleCase) -> None:
    rounding = _declared(case)
    if case.op not in EXACT_IN_FLOAT:
        assert rounding.terms > 0, f"{case.op} declares no rounding"
        assert rounding.input_gain + rounding.output_gain + rounding.offset > 0


_EXACT_CASES = [case for case in CASES if case.op in EXACT_IN_FLOAT]


@pytest.mark.parametrize("case", _EXACT_CASES, ids=[case.id for case in _EXACT_CASES])
def test_ops_listed_as_exact_are_exact_in_float32(case: RuleCase) -> None:
    x = random_inputs(case, 4, "exact-in-float")
    with torch.no_grad():
        result = case.reference(torch.as_tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_array_equal(result, result.astype(np.float32).astype(np.float64))
    assert _declared(case) == EXACT or _declared(case).terms > 0


def test_a_rounding_op_fails_the_exactness_check() -> None:
    """The check above can fail: a Mul by a constant rounds (its case is not in the table)."""
    (case,) = [c for c in CASES if c.op == "Mul"][:1]
    x = random_inputs(case, 4, "exact-in-float")
    with torch.no_grad():
        result = case.reference(torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert np.any(result != result.astype(np.float32).astype(np.float64))


_RULE_MODULES = [
    "lipcert/bounds/registry.py",
    "lipcert/bounds/rules/elementwise.py",
    "lipcert/bounds/rules/linear.py",
    "lipcert/bounds/rules/patterns.py",
    "lipcert/bounds/rules/pooling.py",
    "lipcert/bounds/rules/structure.py",
]
# A safe rounding written by hand: a step to the next float, or a relative margin.
_AD_HOC = re.compile(r"nextafter|\(1(\.0)? \+ [0-9.]+e-[0-9]+\)|\* \(1(\.0)? \+ ")


@pytest.mark.parametrize("module", _RULE_MODULES)
def test_rules_round_through_the_numeric_helpers(module: str) -> None:
    text = (Path(__file__).resolve().parents[2] / module).read_text()
    found = [line.strip() for line in text.splitlines() if _AD_HOC.search(line)]
    assert not found, f"{module} rounds by hand; use lipcert.bounds.numeric: {found}"


def test_the_ad_hoc_pattern_catches_hand_rounding() -> None:
    assert _AD_HOC.search("return up(size ** 0.5 * (1.0 + 1e-12))")
    assert _AD_HOC.search("np.nextafter(total, np.inf)")
    assert not _AD_HOC.search("return mul_up(norm_up(bias), sqrt_up(n))")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_float32_error_of_every_rule_case_is_within_the_allowance(case: RuleCase) -> None:
    """onnxruntime's float32 output against the float64 reference of the case, at inputs of
    several scales: the distance never exceeds the allowance the declarations give."""
    from rule_cases import run_onnxruntime

    graph = load_from_proto(case.model, LoadOptions(), source="t", fmt="onnx").graph
    if graph.output_name != case.model.graph.output[0].name:
        pytest.skip("the front-end certifies another tensor than the model's output")
    spec = analyse(graph).spec
    rng = np.random.default_rng(7)
    for scale in (1e-3, 1.0, 1e3):
        x = (rng.standard_normal((6, *case.input_shape)) * scale * case.input_scale).astype(
            np.float32
        )
        computed = run_onnxruntime(case.model, x).reshape(len(x), -1).astype(np.float64)
        with torch.no_grad():
            exact = case.reference(torch.as_tensor(x, dtype=torch.float64)).numpy()
        error = np.linalg.norm(computed - exact.reshape(len(x), -1), axis=1)
        norms = np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)
        allowance = spec.fp_allowance(norms)
        assert np.all(error <= allowance), (scale, error, allowance)
