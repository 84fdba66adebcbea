from __future__ import annotations

import math

import pytest

from lipcert.reports.format import bound_text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.00000"),
        (math.nextafter(1.0, 2.0), "1.00000"),  # an ulp of safe rounding is not shown
        (1.0000012, "1.00001"),  # a real excess is rounded up, never down
        (0.8239551, "0.823956"),
        (2.5e-7, "2.50000e-07"),
        (0.0, "0"),
    ],
)
def test_bound_text_rounds_up_to_six_digits(value: float, text: str) -> None:
    assert bound_text(value) == text
