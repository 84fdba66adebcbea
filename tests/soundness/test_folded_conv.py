"""Constants computed by a Conv, ConvTranspose or Gemm on weights (SLL's conv(K, K)).

onnxruntime has no float64 Conv: the front-end recomputes such constants with its own float64
evaluator (onnx's numpy reference, torch's float64 convolutions) and bounds the distance of
the float64 value to the exact one by a forward error analysis. Ground truth: the exact
rational value of the file's computation on its float32 weights (fractions.Fraction), by a
naive loop written from the ONNX definition of the op.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import onnx
import pytest
from hostile_models import load, make, tensor
from onnx import helper

from lipcert.errors import LipcertError


def _exact_conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: list[int], group: int
) -> dict[tuple[int, ...], Fraction]:
    """ONNX Conv (2-D, stride 1) in exact rationals: y[n, o, i, j] = b[o] +
    sum_{c, p, q} x[n, g * C + c, i + p - pad_top, j + q - pad_left] w[o, c, p, q]."""
    n_batch, _, height, width = x.shape
    c_out, c_in, kh, kw = w.shape
    out_h = height + pads[0] + pads[2] - kh + 1
    out_w = width + pads[1] + pads[3] - kw + 1
    per_group = c_out // group
    result: dict[tuple[int, ...], Fraction] = {}
    for n, o, i, j in itertools.product(range(n_batch), range(c_out), range(out_h), range(out_w)):
        g = o // per_group
        total = Fraction(float(b[o])) if b is not None else Fraction(0)
        for c, p, q in itertools.product(range(c_in), range(kh), range(kw)):
            row, col = i + p - pads[0], j + q - pads[1]
            if 0 <= row < height and 0 <= col < width:
                total += Fraction(float(x[n, g * c_in + c, row, col])) * Fraction(
                    float(w[o, c, p, q])
                )
        result[(n, o, i, j)] = total
    return result


def _conv_scaled_model(
    v: np.ndarray, k: np.ndarray, bias: np.ndarray | None, pads: list[int], group: int
) -> tuple[onnx.ModelProto, int]:
    """logits = x * Reshape(Conv(V, K, bias)): a constant conv on the weights read by a Mul."""
    inputs = ["v", "k", "b"] if bias is not None else ["v", "k"]
    conv = helper.make_node("Conv", inputs, ["kk"], name="fold", pads=pads, group=group)
    c_out, _, kh, kw = k.shape
    height = v.shape[2] + pads[0] + pads[2] - kh + 1
    width = v.shape[3] + pads[1] + pads[3] - kw + 1
    size = v.shape[0] * c_out * height * width
    nodes = [
        conv,
        helper.make_node("Reshape", ["kk", "shape"], ["c"], name="flat"),
        helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"),
    ]
    inits = [
        onnx.numpy_helper.from_array(k, "k"),
        onnx.numpy_helper.from_array(v, "v"),
        tensor("shape", [1, size], np.int64),
    ]
    if bias is not None:
        inits.append(onnx.numpy_helper.from_array(bias, "b"))
    return make(nodes, inits, [1, size], [1, size]), size


@pytest.mark.parametrize(
    ("seed", "with_bias", "pads", "group"),
    [
        (0, False, [1, 1, 1, 1], 1),
        (1, True, [1, 1, 1, 1], 1),
        (2, True, [0, 1, 1, 0], 1),
        (3, False, [1, 0, 1, 1], 2),
    ],
)
def test_conv_of_weights_is_recomputed_in_float64_within_its_bound(
    seed: int, with_bias: bool, pads: list[int], group: int
) -> None:
    rng = np.random.default_rng(seed)
    channels = 2
    k = rng.standard_normal((channels, channels // group, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32) if with_bias else None
    # conv(K, K) as SLL computes it; with groups, a 2-channel constant image instead of K
    v = rng.standard_normal((1, 2, 3, 3)).astype(np.float32) if group > 1 else k
    model, size = _conv_scaled_model(v, k, bias, pads, group)
    loaded = load(model)
    assert loaded.graph.inexact_constants == {"c"}
    rho = loaded.graph.folded_error["c"]
    assert 0 < rho < 2.0**-30
    exact = _exact_conv(v, k, bias, pads, group)
    computed = loaded.graph.constant("c").reshape(-1)
    assert computed.dtype == np.float64 and computed.size == size == len(exact)
    for index, key in enumerate(sorted(exact)):
        value = Fraction(float(computed[index]))
        assert abs(value - exact[key]) <= Fraction(rho) * abs(exact[key])
    # the runtime reads the float32 rounding of the float64 value as a weight
    runnable = onnx.load_from_string(loaded.onnx_bytes)
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in runnable.graph.initializer}
    np.testing.assert_array_equal(
        folded["c__folded_in_float64"].reshape(-1), computed.astype(np.float32)
    )


def test_conv_transpose_and_gemm_of_weights_within_their_bounds() -> None:
    """c = Gemm(A, B, C) (transB, alpha 0.5) + ConvTranspose(v, u) (stride 2) summed."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1, 5)).astype(np.float32)
    b = rng.standard_normal((6, 5)).astype(np.float32)
    bias = rng.standard_normal((1, 6)).astype(np.float32)
    v = rng.standard_normal((1, 2, 2)).astype(np.float32)  # (N, C_in, L)
    u = rng.standard_normal((2, 1, 2)).astype(np.float32)  # (C_in, C_out, k)
    nodes = [
        helper.make_node("Gemm", ["a", "b", "bias"], ["g"], transB=1, alpha=0.5, name="gemm"),
        helper.make_node("ConvTranspose", ["v", "u"], ["t"], strides=[2], name="transposed"),
        helper.make_node("Reshape", ["t", "shape"], ["tf"], name="flat"),
        helper.make_node("Mul", ["x", "g"], ["xg"], name="scale_g"),
        helper.make_node("Mul", ["xg", "tf"], ["logits"], name="scale_t"),
    ]
    inits = [
        onnx.numpy_helper.from_array(arr, name)
        for arr, name in [(a, "a"), (b, "b"), (bias, "bias"), (v, "v"), (u, "u")]
    ] + [tensor("shape", [1, 4], np.int64)]
    # the transposed conv has length (2 - 1) * 2 + 2 = 4; the Gemm 6: Mul broadcasts (1, 6)
    # against (1, 4) only if the shapes agree, so the ConvTranspose output is padded to 6
    nodes[2] = helper.make_node("Pad", ["t", "pads"], ["tp"], name="pad")
    nodes.insert(3, helper.make_node("Reshape", ["tp", "shape"], ["tf"], name="flat"))
    inits[-1] = tensor("shape", [1, 6], np.int64)
    inits.append(tensor("pads", [0, 0, 1, 0, 0, 1], np.int64))
    loaded = load(make(nodes, inits, [1, 6], [1, 6]))
    assert loaded.graph.inexact_constants == {"g", "tf"}
    rho_g, rho_t = loaded.graph.folded_error["g"], loaded.graph.folded_error["tf"]
    assert 0 < rho_g < 2.0**-30 and 0 < rho_t < 2.0**-30
    for j in range(6):
        exact = Fraction(1, 2) * sum(
            Fraction(float(a[0, i])) * Fraction(float(b[j, i])) for i in range(5)
        ) + Fraction(float(bias[0, j]))
        value = Fraction(float(loaded.graph.constant("g")[0, j]))
        assert abs(value - exact) <= Fraction(rho_g) * abs(exact)
    transposed = [Fraction(0)] * 4  # y[o, i * 2 + q] += v[c, i] * u[c, o, q]
    for c, i, q in itertools.product(range(2), range(2), range(2)):
        transposed[i * 2 + q] += Fraction(float(v[0, c, i])) * Fraction(float(u[c, 0, q]))
    computed = loaded.graph.constant("tf").reshape(-1)
    assert computed[0] == 0 and computed[5] == 0
    for index in range(4):
        value = Fraction(float(computed[index + 1]))
        assert abs(value - transposed[index]) <= Fraction(rho_t) * abs(transposed[index])


def test_conv_of_weights_that_cancels_in_float64_is_refused() -> None:
    """The look-alike: (1e20, 1, -1e20) * (1, 1, 1) is 1 exactly, 0 in float64 and float32."""
    nodes = [
        helper.make_node("Conv", ["v", "w"], ["s"], name="fold"),
        helper.make_node("Reshape", ["s", "shape"], ["c"], name="flat"),
        helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"),
    ]
    inits = [
        tensor("v", [[[1e20, 1.0, -1e20]]]),
        tensor("w", [[[1.0, 1.0, 1.0]]]),
        tensor("shape", [1, 1], np.int64),
    ]
    with pytest.raises(LipcertError, match=r"node 'fold' \(Conv\).*not bounded.*cancel"):
        load(make(nodes, inits, [1, 1], [1, 1]))


def _nearly_cancelling(consumer: list[onnx.NodeProto]) -> onnx.ModelProto:
    """s = Conv((1, 1 + 2^-23, 3), (1, -1)) = (-2^-23, 2^-23 - 2): its first entry cancels."""
    nodes = [
        helper.make_node("Conv", ["v", "w"], ["s"], name="fold"),
        *consumer,
        helper.make_node("Mul", ["x", "c"], ["logits"], name="scale"),
    ]
    inits = [
        tensor("v", [[[1.0, 1.0 + 2.0**-23, 3.0]]]),
        tensor("w", [[[1.0, -1.0]]]),
        tensor("axes", [2], np.int64),
        tensor("shape", [1, 2], np.int64),
    ]
    return make(nodes, inits, [1, 1], [1, 1])


def test_cancelling_entry_weighs_by_its_size_in_a_sum_of_absolute_values() -> None:
    """SLL's T = 1 / sum |conv(K, K)|: the absolute error bound of the Conv (gamma(2) times
    |terms|, 2^-52 relative to its tiny first entry) is carried through Abs and ReduceSum, and
    the sum is known to 1e-15 of itself: accepted, within its bound of the exact rational."""
    model = _nearly_cancelling(
        [
            helper.make_node("Abs", ["s"], ["a"], name="magnitude"),
            helper.make_node("ReduceSum", ["a", "axes"], ["r"], keepdims=0, name="total"),
            helper.make_node("Reciprocal", ["r"], ["c"], name="inverse"),
        ]
    )
    loaded = load(model)
    rho = loaded.graph.folded_error["c"]
    assert 0 < rho < 1e-14
    exact = 1 / (Fraction(2) ** -23 + abs(1 + Fraction(2) ** -23 - 3))
    value = Fraction(float(loaded.graph.constant("c").reshape(-1)[0]))
    assert abs(value - exact) <= Fraction(rho) * exact


def test_cancelling_entry_read_directly_is_refused() -> None:
    """The look-alike: 1 / max(s) = 1 / s[0] is only known to 4e-9 of itself (above 2^-30)."""
    model = _nearly_cancelling(
        [
            helper.make_node("Reshape", ["s", "shape"], ["flat"], name="flat"),
            helper.make_node("ReduceMax", ["flat"], ["m"], keepdims=1, name="largest"),
            helper.make_node("Reciprocal", ["m"], ["c"], name="inverse"),
        ]
    )
    with pytest.raises(LipcertError, match=r"not bounded"):
        load(model)


def test_folded_constant_allowance_scales_with_the_unit() -> None:
    """The float64 value's own error rho is a relative error at every unit: counting it as
    rho / u64 roundings (lipcert did) made the float32 allowance about 2^29 rho too large.
    Ground truth: the float32 runtime's and the float64 executor's errors against the exact
    rational products, within their allowances; and the float32 allowance close to the
    closed form 2u L (input) + (gamma(3) + rho) L (the Mul's rounding, its copy of c, rho)."""
    import torch

    from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF, analyse, gamma
    from lipcert.graph.execute import GraphExecutor
    from lipcert.runtime import OnnxRuntimeEvaluator

    rng = np.random.default_rng(11)
    k = rng.standard_normal((2, 2, 2, 2)).astype(np.float32)
    model, size = _conv_scaled_model(k, k, None, [1, 1, 1, 1], 1)
    loaded = load(model)
    rho = loaded.graph.folded_error["c"]
    assert rho > 16 * FLOAT64_UNIT_ROUNDOFF  # where the old count was far too large
    analysis = analyse(loaded.graph)
    exact_c = [value for _, value in sorted(_exact_conv(k, k, None, [1, 1, 1, 1], 1).items())]
    lipschitz = float(max(abs(value) for value in exact_c))
    u = FLOAT32_UNIT_ROUNDOFF
    spec32 = analysis.spec
    assert spec32.fp_error_slope <= (2 * u + gamma(3, u) + rho) * lipschitz * (1 + 1e-6)
    assert spec32.fp_error_slope < (gamma(3 + int(rho / FLOAT64_UNIT_ROUNDOFF), u)) * lipschitz
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    evaluator = OnnxRuntimeEvaluator(loaded, threads=1, spec=spec32)
    executor = GraphExecutor(analysis.graph, dtype=torch.float64)
    for _ in range(5):
        x = (rng.standard_normal((1, size)) * 10).astype(np.float32)
        exact = [Fraction(float(x[0, i])) * exact_c[i] for i in range(size)]
        norm = float(np.linalg.norm(x.astype(np.float64)))
        got32 = evaluator.logits(x).astype(np.float64)[0]
        with torch.no_grad():
            got64 = executor(torch.as_tensor(x, dtype=torch.float64)).numpy()[0]
        for got, spec in ((got32, spec32), (got64, spec64)):
            square = sum((Fraction(float(g)) - e) ** 2 for g, e in zip(got, exact, strict=True))
            allowance = spec.fp_error_constant + spec.fp_error_slope * norm
            assert float(square) ** 0.5 <= allowance
