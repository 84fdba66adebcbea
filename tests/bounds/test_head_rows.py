"""Pairwise head bounds ||w_i - w_j|| from the Gram matrix (compose.head_row_differences).

Ground truth: exact rational differences of the float64 rows (fractions.Fraction). The Gram
form n_i + n_j - 2 G_ij cancels for rows that nearly coincide: the look-alike without its
allowance falls below the exact distance there; lipcert's bound must not, anywhere, and must
stay within 1e-9 of it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse, head_row_differences
from lipcert.bounds.spec import CertificateSpec
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions


def _exact_squares(rows: np.ndarray, i: int, j: int) -> Fraction:
    return sum(
        (
            (Fraction(float(a)) - Fraction(float(b))) ** 2
            for a, b in zip(rows[i], rows[j], strict=True)
        ),
        Fraction(0),
    )


def _rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 40))
    rows[3] = rows[4] + 1e-9 * rng.normal(size=40)  # nearly coincide
    rows[5] = rows[6] * (1 + 2.0**-50)  # within a few ulps
    rows[7] = 1e8 * rng.normal(size=40)  # large beside small
    rows[8] = rows[7] + 1.0
    return rows


def test_head_row_differences_bound_the_exact_distances() -> None:
    rows = _rows()
    bounds = head_row_differences(rows, 0.0)
    for i in range(len(rows)):
        for j in range(len(rows)):
            exact = _exact_squares(rows, i, j)
            assert Fraction(float(bounds[i, j])) ** 2 >= exact
            if i != j:
                assert Fraction(float(bounds[i, j])) ** 2 <= exact * Fraction(1 + 1e-9) ** 2


def test_the_gram_form_without_its_allowance_falls_short() -> None:
    """The look-alike: sqrt(n_i + n_j - 2 G_ij) alone is below the exact distance for some
    nearly coinciding pair (cancellation), so the allowance and the exact recomputation of
    such pairs are needed."""
    rows = _rows()
    squares = np.einsum("ij,ij->i", rows, rows)
    gram = squares[:, None] + squares[None, :] - 2.0 * (rows @ rows.T)
    plain = np.sqrt(np.maximum(gram, 0.0))
    short = [
        (i, j)
        for i in range(len(rows))
        for j in range(len(rows))
        if i != j and Fraction(float(plain[i, j])) ** 2 < _exact_squares(rows, i, j)
    ]
    assert short


def test_spread_widens_by_the_rows_norms() -> None:
    rows = _rows()[:4]
    spread = 1e-6
    norms = np.linalg.norm(rows, axis=1)
    widened = head_row_differences(rows, spread)
    plain = head_row_differences(rows, 0.0)
    assert np.all(widened >= plain + spread * (norms[:, None] + norms[None, :]) * (1 - 1e-12))


# --- the spec's per-logit and vector bounds (compose._certificate_spec) ---------------------


def _head_spec(weight: np.ndarray, divisor: float | None = None) -> CertificateSpec:
    """A float64 model x -> Gemm(weight^T) [-> Div(divisor)] -> logits, analysed."""
    count, dimension = weight.shape
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1)]
    inits = [numpy_helper.from_array(weight, "W")]
    if divisor is not None:
        nodes.append(helper.make_node("Div", ["h", "c"], ["logits"]))
        inits.append(numpy_helper.from_array(np.array(divisor, np.float64), "c"))
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", dimension])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["n", count])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = LoadOptions(input_shape=(dimension,))
    return analyse(load_from_proto(model, options, source="m", fmt="onnx").graph).spec


def _exact_rows(weight: np.ndarray, divisor: float | None) -> list[list[Fraction]]:
    scale = Fraction(1) / Fraction(divisor) if divisor is not None else Fraction(1)
    return [[Fraction(float(v)) * scale for v in row] for row in weight]


def _covers_largest_singular_value(bound: float, rows: list[list[Fraction]]) -> bool:
    """bound^2 >= the largest eigenvalue of the 2 x 2 Gram matrix [[a, b], [b, c]] of the
    exact rows: t >= (a + c) / 2 and (t - a)(t - c) >= b^2, with t = bound^2."""
    a, c = (sum((v * v for v in row), Fraction(0)) for row in rows)
    b = sum((u * v for u, v in zip(rows[0], rows[1], strict=True)), Fraction(0))
    t = Fraction(bound) ** 2
    return 2 * t >= a + c and (t - a) * (t - c) >= b * b


@pytest.mark.parametrize("divisor", [None, 3.0])
def test_logit_and_vector_bounds_of_rows_below_the_normal_range(divisor: float | None) -> None:
    """Rows of 1e-170: every square underflows to 0, and the per-logit bounds were 3e-323
    (np.linalg.norm of the rows), 1e-153 of the exact norms. Each must cover its exact row's
    norm; the vector bound the exact largest singular value (the body is the identity)."""
    weight = np.array([[3e-170, 1e-170, 0.0], [1e-170, -2e-170, 5e-171]])
    spec = _head_spec(weight, divisor)
    rows = _exact_rows(weight, divisor)
    assert len(spec.logit_bounds) == 2
    for bound, row in zip(spec.logit_bounds, rows, strict=True):
        assert Fraction(bound) ** 2 >= sum((v * v for v in row), Fraction(0))
    assert _covers_largest_singular_value(spec.lipschitz_bound, rows)
    single = _head_spec(weight[:1], divisor)
    assert Fraction(single.logit_bounds[0]) ** 2 >= sum((v * v for v in rows[0]), Fraction(0))


@pytest.mark.parametrize("divisor", [None, 3.0])
def test_logit_and_vector_bounds_of_ordinary_rows_stay_tight(divisor: float | None) -> None:
    """The look-alike: rows of ordinary size keep their bounds within 1e-9 of the exact norms
    (the underflow term is 1e-300 of them)."""
    weight = np.random.default_rng(5).normal(size=(2, 9))
    spec = _head_spec(weight, divisor)
    rows = _exact_rows(weight, divisor)
    for bound, row in zip(spec.logit_bounds, rows, strict=True):
        exact = sum((v * v for v in row), Fraction(0))
        assert exact <= Fraction(bound) ** 2 <= exact * Fraction(1 + 1e-9) ** 2
    assert _covers_largest_singular_value(spec.lipschitz_bound, rows)
    assert not _covers_largest_singular_value(spec.lipschitz_bound * (1 - 1e-9), rows)
