"""An unfolded BatchNormalization's rounding count covers the orders kernels compute it in.

The runtime computes g' = scale / sqrt(var + eps) (3 roundings), then y = x g' + (bias -
mean g') or y = (x - mean) g' + bias. Ground truth: numpy float32 emulations of both orders
against float64 (whose own error, ~1e-16, is far below the float32 errors compared), at
points where the roundings pile up; the rule's allowance gamma(terms) (input_gain |x| +
offset) per element must cover them. Counted order by order, |mean g| can carry 7 relative
roundings (the rule took 4); this random search reaches about 3, so it shows the allowance
covers real kernels' orders, not that 7 are reached.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, analyse, gamma
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

F = np.float32


def _emulations(x, scale, bias, mean, var, eps):  # type: ignore[no-untyped-def]
    g = F(scale) / F(np.sqrt(F(var) + F(eps)))
    first = F(x) * g + (F(bias) - F(mean) * g)
    second = (F(x) - F(mean)) * g + F(bias)
    return np.stack([first, second])


def test_batch_norm_rounding_covers_both_kernel_orders() -> None:
    rng = np.random.default_rng(0)
    channels = 64
    scale = rng.uniform(0.5, 2.0, channels).astype(F)
    bias = rng.uniform(-1, 1, channels).astype(F)
    mean = rng.uniform(-4, 4, channels).astype(F)
    var = rng.uniform(0.1, 3.0, channels).astype(F)
    eps = 1e-5
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=eps)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels])],
        [
            numpy_helper.from_array(scale, "s"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(mean, "m"),
            numpy_helper.from_array(var, "v"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    loaded = load_from_proto(model, LoadOptions(input_shape=(channels,)), source="m", fmt="onnx")
    ((_, layer),) = analyse(loaded.graph).node_bounds
    rounding = layer.rounding
    u = FLOAT32_UNIT_ROUNDOFF
    g64 = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + np.float64(F(eps)))
    worst_needed = 0.0
    for _ in range(200):
        # x close to mean (cancellation in x - mean) or large: both stress the counts
        x = (mean + rng.normal(scale=rng.choice([1e-3, 1.0, 30.0]), size=channels)).astype(F)
        exact = x.astype(np.float64) * g64 + (bias.astype(np.float64) - mean * g64)
        errors = np.abs(_emulations(x, scale, bias, mean, var, eps).astype(np.float64) - exact)
        per_element = np.abs(x) * g64 + np.abs(mean) * g64 + np.abs(bias)
        worst_needed = max(worst_needed, float((errors / (u * per_element)).max()))
        # the rule's allowance, elementwise form: gamma(terms) times the element's sizes
        allowed = gamma(rounding.terms, u) * per_element
        assert np.all(errors <= allowed)
    # the emulations need more than 2 roundings' worth somewhere (the count matters)
    assert worst_needed > 2.0
