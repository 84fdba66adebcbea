"""Certified radii against closed forms: a linear classifier's exact distance to its boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.radii import Method, Status, certify_logits, choose_method
from lipcert.errors import UsageError


def spec_for(weight: np.ndarray, body: float = 1.0, head: bool = True) -> CertificateSpec:
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[0]
    pairwise = None
    if head and k > 1:
        pairwise = np.array(
            [[np.linalg.norm(w[i] - w[j]) * body for j in range(k)] for i in range(k)]
        )
    norm = float(np.linalg.svd(w, compute_uv=False)[0]) * body
    return CertificateSpec(
        lipschitz_bound=norm,
        logit_bounds=tuple(float(np.linalg.norm(r)) * body for r in w),
        pairwise_bounds=pairwise,
        num_logits=k,
        input_shape=(w.shape[1],),
        size_known=True,
    )


def test_pairwise_radius_is_the_distance_to_a_linear_boundary() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 7))
    b = rng.normal(size=5)
    x = rng.normal(size=(200, 7))
    logits = x @ w.T + b
    result = certify_logits(logits, spec_for(w), Method.PAIRWISE, np.zeros(200))
    expected = []
    for row in logits:
        p = int(np.argmax(row))
        expected.append(
            min((row[p] - row[j]) / np.linalg.norm(w[p] - w[j]) for j in range(5) if j != p)
        )
    np.testing.assert_allclose(result.radius, expected, rtol=1e-12)
    assert np.all(result.prediction == np.argmax(logits, axis=1))


def test_global_radius_is_top2_margin_over_sqrt2_l() -> None:
    w = np.diag([1.0, 2.0, 0.5])
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 2.0]])
    result = certify_logits(logits, spec_for(w, head=False), Method.GLOBAL, np.zeros(2))
    np.testing.assert_allclose(
        result.radius, [2.0 / (math.sqrt(2) * 2.0), 1.5 / (math.sqrt(2) * 2.0)], rtol=1e-12
    )
    assert list(result.runner_up) == [1, 1]


def test_binary_radius_is_the_distance_to_the_hyperplane() -> None:
    w = np.array([[3.0, 4.0]])  # ||w|| = 5
    logits = np.array([[10.0], [-2.5], [0.0]])
    result = certify_logits(logits, spec_for(w), Method.BINARY, np.zeros(3))
    np.testing.assert_allclose(result.radius, [2.0, 0.5, 0.0])
    assert list(result.prediction) == [1, 0, 0]
    assert result.status[2] == Status.TIE


def test_allowance_is_taken_off_each_margin() -> None:
    w = np.array([[1.0, 0.0], [0.0, 1.0]])  # ||w_0 - w_1|| = sqrt(2)
    logits = np.array([[1.0, 0.0], [0.1, 0.0]])
    allowance = np.array([0.05 / math.sqrt(2), 0.2])
    result = certify_logits(logits, spec_for(w), Method.PAIRWISE, allowance)
    # margin 1 - sqrt(2) * allowance = 0.95, divided by sqrt(2)
    assert result.radius[0] == pytest.approx(0.95 / math.sqrt(2), rel=1e-12)
    assert result.radius[0] < 0.95 / math.sqrt(2)  # rounded down, never up
    assert result.radius[1] == 0.0
    assert result.status[1] == Status.WITHIN_ALLOWANCE


@pytest.mark.parametrize("method", [Method.PAIRWISE, Method.GLOBAL], ids=["pairwise", "global"])
def test_ties_and_non_finite_logits_are_never_certified(method: Method) -> None:
    w = np.eye(3)
    logits = np.array([[1.0, 1.0, 0.0], [np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [2.0, 0.0, 0.0]])
    result = certify_logits(logits, spec_for(w), method, np.zeros(4))
    assert list(result.status) == [
        Status.TIE,
        Status.NON_FINITE,
        Status.NON_FINITE,
        Status.CERTIFIED,
    ]
    assert list(result.radius[:3]) == [0.0, 0.0, 0.0]
    assert result.radius[3] > 0
    assert result.prediction[1] == -1 and result.prediction[2] == -1


@pytest.mark.parametrize("method", [Method.PAIRWISE, Method.GLOBAL], ids=["pairwise", "global"])
def test_a_nan_or_infinite_allowance_is_never_certified(method: Method) -> None:
    logits = np.array([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]])
    result = certify_logits(logits, spec_for(np.eye(3)), method, np.array([np.nan, np.inf]))
    assert list(result.status) == [Status.WITHIN_ALLOWANCE, Status.WITHIN_ALLOWANCE]
    assert list(result.radius) == [0.0, 0.0]


def test_binary_nan_is_not_certified() -> None:
    result = certify_logits(
        np.array([[np.nan], [1.0]]), spec_for(np.array([[1.0]])), Method.BINARY, np.zeros(2)
    )
    assert (
        result.status[0] == Status.NON_FINITE
        and result.radius[0] == 0.0
        and result.prediction[0] == -1
    )


def test_pairwise_is_tighter_than_global_and_sound_for_a_per_logit_head() -> None:
    # A FrobeniusLinear-like head: unit rows, not orthogonal: each logit is 1-Lipschitz but
    # the vector is not; margin / sqrt(2) would over-claim, the pairwise radius is exact.
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 6))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    x = rng.normal(size=(300, 6))
    logits = x @ w.T
    pairwise = certify_logits(logits, spec_for(w), Method.PAIRWISE, np.zeros(300))
    naive = np.sort(logits, axis=1)
    over_claim = (naive[:, -1] - naive[:, -2]) / math.sqrt(2)  # assumes a 1-Lipschitz vector
    exact = []
    for row in logits:
        p = int(np.argmax(row))
        exact.append(
            min((row[p] - row[j]) / np.linalg.norm(w[p] - w[j]) for j in range(4) if j != p)
        )
    np.testing.assert_allclose(pairwise.radius, exact, rtol=1e-12)
    assert np.any(over_claim > np.array(exact) * (1 + 1e-9))  # the trap is real
    assert np.all(
        pairwise.radius >= (naive[:, -1] - naive[:, -2]) / 2 * (1 - 1e-12)
    )  # and tighter than /2


def test_choose_method() -> None:
    w = np.eye(3)
    assert choose_method(spec_for(w), "auto") is Method.PAIRWISE
    assert choose_method(spec_for(w, head=False), "auto") is Method.GLOBAL
    assert choose_method(spec_for(np.array([[1.0, 2.0]])), "auto") is Method.BINARY
    with pytest.raises(UsageError, match="needs a linear head"):
        choose_method(spec_for(w, head=False), "pairwise")
    with pytest.raises(UsageError, match="expected certificate auto, pairwise or global"):
        choose_method(spec_for(w), "bogus")


def test_global_certificate_ignores_the_pairwise_bounds_of_a_head() -> None:
    """--certificate global on a model with a head uses sqrt(2) L for every pair, never the
    pairwise bound of one particular pair."""
    w = np.array([[1.0, 0.0], [0.9, 0.0], [-1.0, 0.0]])
    spec = spec_for(w)
    assert spec.pairwise_bounds is not None and spec.pairwise_bounds[0, 1] < 0.2
    logits = np.array([[0.2, 0.1, -0.5]])
    result = certify_logits(logits, spec, Method.GLOBAL, np.zeros(1))
    assert result.radius[0] == pytest.approx(0.1 / (math.sqrt(2) * spec.lipschitz_bound), rel=1e-12)


def test_a_head_error_bounds_each_margin_by_its_row_difference() -> None:
    """Through a linear head, the margin f_0 - f_j is off by ||w_0 - w_j|| e_body + sqrt(2)
    e_rest: smaller than sqrt(2) E for close rows, never used where larger."""
    from lipcert.evaluators import HeadError

    w = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    spec = spec_for(w)
    logits = np.array([[1.0, 0.9, -1.0]])
    differences = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=2)
    body, rest = 0.01, 0.001
    allowance = np.array([3 * body + rest])  # a bound of the whole logit vector's error
    head = HeadError(np.array([body]), np.array([rest]), differences)
    plain = certify_logits(logits, spec, Method.PAIRWISE, allowance)
    finer = certify_logits(logits, spec, Method.PAIRWISE, allowance, head)
    # Pair (0, 1) bounds the radius: its margin 0.1 loses D_01 e_body + sqrt(2) e_rest, not
    # sqrt(2) E.
    d01 = differences[0, 1]
    expected = (0.1 - (d01 * body + math.sqrt(2) * rest)) / spec.pairwise_bounds[0, 1]
    assert finer.radius[0] == pytest.approx(expected, rel=1e-9)
    assert finer.radius[0] <= expected
    assert plain.radius[0] == pytest.approx(
        (0.1 - math.sqrt(2) * allowance[0]) / spec.pairwise_bounds[0, 1], rel=1e-9
    )
    assert finer.radius[0] > plain.radius[0]
    # A head error of the wrong size (another model's head) is not used.
    wrong = HeadError(np.array([body]), np.array([rest]), np.zeros((2, 2)))
    assert (
        certify_logits(logits, spec, Method.PAIRWISE, allowance, wrong).radius[0]
        == (plain.radius[0])
    )
    # Where the row difference is large, sqrt(2) E stays the bound (the minimum of both).
    huge = HeadError(np.array([1.0]), np.array([rest]), differences)
    assert (
        certify_logits(logits, spec, Method.PAIRWISE, allowance, huge).radius[0]
        == (plain.radius[0])
    )
