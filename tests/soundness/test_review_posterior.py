"""Final review of the default evaluator's rounding bound (posterior.py, compose's head pairs).

Ground truth: exact rational arithmetic (fractions.Fraction) of the float64 values.

- head_row_differences: rows below float64's normal range (1e-170: every square, and the
  Gram allowance, underflowed to 0) gave ||w_i - w_j|| bounds of 5e-324, or 1e-14 of
  themselves below the exact distance; every sum of squares now carries (8 d + 16) 2^-1074.
  Look-alike: rows of ordinary size keep bounds within 1e-9 of the exact distances.
- the head's rows are float64 products (_find_head: the weight times 1 / 3, 1 / 7, 1 / 11
  of the Divs after it), each off by a few 2^-53 of the row's entries: for two float32 rows
  one ulp apart, the pair's bound (head_row_differences, and the spec's pairwise Lipschitz
  bound from it) fell 1.9e-9 (relative, squared) below the exact distance. _head_spread now
  counts the product's roundings. Look-alike: a head with nothing after it, alpha 1, has
  exact rows and no spread.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from lipcert.bounds.compose import _find_head, _head_spread, analyse, head_row_differences
from lipcert.frontends import load_model


def _exact_squares(a: np.ndarray, b: np.ndarray) -> Fraction:
    return sum(
        ((Fraction(float(x)) - Fraction(float(y))) ** 2 for x, y in zip(a, b, strict=True)),
        Fraction(0),
    )


def _check_upper(rows: np.ndarray, spread: float = 0.0) -> float:
    """Assert every bound is >= the exact distance; return the largest bound^2 / exact^2."""
    bounds = head_row_differences(rows, spread)
    worst = 0.0
    for i in range(len(rows)):
        for j in range(len(rows)):
            if i == j:
                continue
            exact = _exact_squares(rows[i], rows[j])
            assert Fraction(float(bounds[i, j])) ** 2 >= exact, (i, j, float(bounds[i, j]))
            if exact:
                worst = max(worst, float(Fraction(float(bounds[i, j])) ** 2 / exact))
    return worst


def test_head_differences_bound_rows_below_the_normal_range() -> None:
    rows = np.array(
        [
            [3e-170, 1e-170, 0.0],
            [1e-170, -2e-170, 5e-171],
            [2.5e-160, 0.0, 0.0],
            [1e-155, 0, 1e-156],
        ]
    )
    _check_upper(rows)
    _check_upper(rows, spread=1e-3)


def test_head_differences_of_ordinary_rows_stay_tight() -> None:
    rng = np.random.default_rng(7)
    for d in (1, 3, 17):
        base = rng.normal(size=d)
        rows = np.stack([base, base * (1 + 1e-9 * rng.normal(size=d)), rng.normal(size=d)])
        assert _check_upper(rows) <= 1 + 1e-9


def _scaled_head(path: Path, divisors: tuple[float, ...]) -> tuple[Path, np.ndarray]:
    """x -> Gemm(W) -> Div(divisors[0]) -> ...: W's first two rows one float32 ulp apart."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    a = rng.normal(size=8).astype(np.float32)
    b = a.copy()
    b[0] = np.nextafter(b[0], np.float32(np.inf))
    weight = np.stack([a, b, rng.normal(size=8).astype(np.float32)])
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h0"], transB=1)]
    initializers = [numpy_helper.from_array(weight, "W")]
    for k, divisor in enumerate(divisors):
        nodes.append(helper.make_node("Div", [f"h{k}", f"c{k}"], [f"h{k + 1}"]))
        initializers.append(numpy_helper.from_array(np.array(divisor, np.float32), f"c{k}"))
    nodes.append(helper.make_node("Identity", [f"h{len(divisors)}"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "scaled_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, weight


def test_head_rows_scaled_after_the_head_bound_the_exact_differences(tmp_path: Path) -> None:
    divisors = (3.0, 7.0, 11.0)
    path, weight = _scaled_head(tmp_path / "m.onnx", divisors)
    graph = load_model(path).graph
    head = _find_head(graph)
    assert head is not None
    bounds = head_row_differences(head.rows, _head_spread(graph, head))
    pairwise = analyse(graph).spec.pairwise_bounds
    assert pairwise is not None
    denominator = Fraction(1)
    for divisor in divisors:
        denominator *= Fraction(divisor)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        exact = _exact_squares(weight[i], weight[j]) / denominator**2
        assert Fraction(float(bounds[i, j])) ** 2 >= exact
        assert Fraction(float(pairwise[i, j])) ** 2 >= exact  # the body is the identity


def test_a_head_with_nothing_after_it_has_exact_rows(tmp_path: Path) -> None:
    path, weight = _scaled_head(tmp_path / "m.onnx", ())
    graph = load_model(path).graph
    head = _find_head(graph)
    assert head is not None
    assert _head_spread(graph, head) == 0.0
    assert np.array_equal(head.rows, weight.astype(np.float64))
