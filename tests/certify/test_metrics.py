from __future__ import annotations

import numpy as np
import pytest

from lipcert.certify.command import parse_eps_list
from lipcert.certify.metrics import Eps, summarise
from lipcert.certify.radii import Certificates, Method, Status
from lipcert.errors import UsageError


def certificates(prediction: list[int], radius: list[float]) -> Certificates:
    n = len(prediction)
    return Certificates(
        prediction=np.array(prediction),
        runner_up=np.zeros(n, dtype=np.int64),
        margin=np.array(radius),
        radius=np.array(radius, dtype=np.float64),
        status=np.full(n, Status.CERTIFIED),
        method=Method.PAIRWISE,
    )


def test_summary_by_hand() -> None:
    labels = np.array([0, 1, 1, 2])
    certs = certificates([0, 1, 0, 2], [0.5, 0.1, 0.3, 0.2])
    summary = summarise(certs, labels, [Eps("0.1", 0.1), Eps("0.2", 0.2)])
    assert summary.accuracy == pytest.approx(0.75)
    # correct and radius strictly above eps: eps 0.1 -> samples 0 and 3; eps 0.2 -> sample 0
    assert [v for _, v in summary.certified_accuracy] == [pytest.approx(0.5), pytest.approx(0.25)]
    assert summary.mcr == pytest.approx((0.5 + 0.1 - 0.3 + 0.2) / 4)
    assert summary.mean_radius == pytest.approx(0.275)
    assert summary.median_radius == pytest.approx(0.25)
    rows = {row.label: row for row in summary.per_class}
    assert (
        rows[1].n == 2
        and rows[1].accuracy == pytest.approx(0.5)
        and rows[1].mcr == pytest.approx(-0.1)
    )


def test_parse_eps_list_keeps_labels_and_fractions() -> None:
    eps = parse_eps_list("36/255, 0.5,1")
    assert [e.label for e in eps] == ["36/255", "0.5", "1"]
    assert eps[0].value == pytest.approx(36 / 255)


@pytest.mark.parametrize("text", ["-0.1", "0", "1/0", "abc", "", "nan", "inf"])
def test_parse_eps_list_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="expected"):
        parse_eps_list(text)


@pytest.mark.parametrize("typed", ["36/255", "72/255", "108/255", "1/3", "0.1", "0.3", "2e-3", "1"])
def test_eps_is_the_smallest_float_not_below_the_typed_value(typed: str) -> None:
    """'radius > eps' must prove the radius exceeds the eps as typed, not half an ulp below."""
    from fractions import Fraction

    numerator, _, denominator = typed.partition("/")
    exact = Fraction(numerator) / Fraction(denominator or "1")
    value = parse_eps_list(typed)[0].value
    assert Fraction(value) >= exact
    assert Fraction(float(np.nextafter(value, -np.inf))) < exact
