"""Red-team tests of the numerics under the operator-norm bounds (numeric.py, spectral.py).

Ground truth is computed independently at 60 digits with mpmath from the float weights taken
as exact: sums of squares, and dense operator matrices whose largest singular value is found
in mpmath. Every case is built so that a plausible rounding shortcut would make lipcert's
bound fall below the exact value.
"""

from __future__ import annotations

import mpmath
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds import numeric
from lipcert.bounds.compose import analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

mpmath.mp.dps = 60

# A float64 whose square is 0.49 times the smallest subnormal: it rounds to zero.
_VANISHING = float(mpmath.sqrt(mpmath.mpf("0.49") * mpmath.mpf(2.0**-1074)))


def _exact_norm(values: np.ndarray) -> mpmath.mpf:
    return mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(v)) ** 2 for v in np.ravel(values)))


def test_sum_of_squares_covers_squares_that_underflow_to_zero() -> None:
    # 1000 squares each just under half the smallest subnormal round to 0; one ulp above the
    # computed 0 was the bound: sqrt(2^-1074) = 2.2e-162 against the exact 4.9e-161.
    values = np.full(1000, _VANISHING)
    assert numeric.norm_up(values) >= _exact_norm(values)
    rows = numeric.sum_of_squares_up(values.reshape(4, 250), axis=1)
    exact_row = mpmath.fsum(mpmath.mpf(_VANISHING) ** 2 for _ in range(250))
    assert all(mpmath.mpf(float(r)) >= exact_row for r in rows)


def test_sum_of_squares_stays_tight_on_ordinary_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(4096)
    exact = _exact_norm(values)
    bound = numeric.norm_up(values)
    assert exact <= bound <= exact * (1 + 1e-10)


def _double_mul_model(constant: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "c"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, list(constant.shape))],
        [numpy_helper.from_array(constant, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_broadcast_mul_by_tiny_float64_constant_is_not_under_bounded() -> None:
    # x (1 x 1) * c (1 x 1000): the gain is ||c||_2 = 4.9e-161; the sum of squares of c
    # underflowed to zero and the composed bound was 3.1e-162, 15x too small.
    constant = np.full((1, 1000), _VANISHING)
    graph = load_from_proto(
        _double_mul_model(constant), LoadOptions(), source="test", fmt="onnx"
    ).graph
    bound = analyse(graph).tensor_bounds[graph.output_name]
    assert bound >= _exact_norm(constant)


def _sandwich_truth(first: np.ndarray, second: np.ndarray) -> mpmath.mpf:
    """max over slopes L in {0, 1}^h of ||W2 L W1|| (the supremum over the box [0, 1]^h of
    a convex function is at a vertex), at 60 digits."""
    hidden = first.shape[0]
    best = mpmath.mpf(0)
    for mask in range(1, 2**hidden):
        keep = [i for i in range(hidden) if mask >> i & 1]
        product = mpmath.matrix(second[:, keep].tolist()) * mpmath.matrix(first[keep].tolist())
        gram = product.T * product
        best = max(best, mpmath.sqrt(max(mpmath.eigsy(gram, eigvals_only=True))))
    return best


def test_lipsdp_on_float64_weights_out_of_squaring_range_does_not_crash() -> None:
    # Weights of 1e-160 (or 1e150) in a float64 model: the Gram products of the LipSDP search
    # underflow (overflow), eigvalsh raised LinAlgError 'Eigenvalues did not converge' out of
    # the rule. Now no certificate from that T (the product of norms still bounds) or a sound one.
    from lipcert.bounds.rules.blocks import lipsdp_bound

    rng = np.random.default_rng(0)
    for scale in (1e-160, 1e150):
        first = rng.standard_normal((3, 3)) * scale
        second = rng.standard_normal((3, 3)) * scale
        with np.errstate(all="ignore"):
            found = lipsdp_bound(first, second)
        if found is not None:
            assert found[0] >= _sandwich_truth(first, second)
