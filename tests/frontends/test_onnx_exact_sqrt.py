"""onnx_exact._node_error for Sqrt: an input known to a relative error e <= 1 gets the bound
e / (1 + sqrt(1 - e)) (ground truth: the worst |sqrt(1 + d) - 1| over a dense grid of |d| <= e);
e > 1 (the exact input may be negative) is refused in one line saying so, not as "a negative
relative error" (the NaN of sqrt(1 - e) reaching _compose)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipcert.frontends.onnx_exact import _node_error


def _sqrt_error(error: float) -> float:
    node = helper.make_node("Sqrt", ["a"], ["b"])
    a = np.array([2.0, 5.0])
    out = np.sqrt(a)
    return _node_error(node, {"a": a, "b": out}, [error], error, out)


@pytest.mark.parametrize("error", [2.0**-30, 0.5, 1.0])
def test_sqrt_of_an_inexact_input_is_bounded(error: float) -> None:
    grid = np.linspace(-error, error, 10_001)
    assert _sqrt_error(error) >= float(np.max(np.abs(np.sqrt(1 + grid) - 1)))


@pytest.mark.parametrize("error", [1.5, float("nan")])
def test_sqrt_of_an_input_off_by_more_than_itself_is_refused(error: float) -> None:
    with pytest.raises(ValueError, match=r"relative error exceeds 1 .* not bounded relative to"):
        _sqrt_error(error)
