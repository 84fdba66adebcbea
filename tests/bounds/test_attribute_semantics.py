"""Attributes that change an op's meaning: honoured, or refused with one line naming the node.

Each case is a model onnxruntime runs; where lipcert refuses, the test shows why the attribute
matters (onnxruntime computes something else than the rule or the executor would assume).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from rule_cases import f32, i64, make_model, run_onnxruntime

from lipcert.bounds.compose import analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadOptions


def _graph(model: object) -> Graph:
    return load_from_proto(model, LoadOptions(), source="t", fmt="onnx").graph  # type: ignore[arg-type]


def _top_k(k: int, **attrs: int) -> object:
    node = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk", axis=1, **attrs)
    return make_model([node], [6], {"k": i64([k])})


def test_top_k_without_sorting_is_refused_by_the_rule_and_the_executor() -> None:
    graph = _graph(_top_k(3, sorted=0))
    with pytest.raises(UnsupportedOpError, match=r"node 'topk' \(TopK\): TopK with sorted=0"):
        analyse(graph)
    with pytest.raises(UnsupportedOpError, match=r"node 'topk' \(TopK\): TopK with sorted=0"):
        GraphExecutor(graph)


@pytest.mark.parametrize(
    ("k", "attrs"),
    [
        pytest.param(1, {"sorted": 0}, id="k1_unsorted_is_a_max"),
        pytest.param(3, {"largest": 0}, id="three_smallest"),
        pytest.param(2, {}, id="two_largest"),
    ],
)
def test_sorted_top_k_is_one_lipschitz(k: int, attrs: dict[str, int]) -> None:
    """The values of a sorted TopK are the first k entries of the sorted axis: 1-Lipschitz.
    Checked on pairs of random points against onnxruntime's own outputs."""
    model = _top_k(k, **attrs)
    analysis = analyse(_graph(model))
    bound = analysis.spec.lipschitz_bound
    assert bound == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)).astype(np.float32)
    b = (a + rng.normal(scale=0.3, size=a.shape)).astype(np.float32)
    ratio = np.linalg.norm(run_onnxruntime(model, a) - run_onnxruntime(model, b), axis=1) / (
        np.linalg.norm(a - b, axis=1)
    )
    assert ratio.max() <= bound * (1 + 1e-5)


def test_batchnorm_with_spatial_0_is_refused() -> None:
    """Opset 7-8: spatial=0 takes statistics per position (shape C x H), not per channel."""
    c = np.ones((2, 3), np.float32)
    node = helper.make_node(
        "BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn", spatial=0
    )
    model = make_model([node], [2, 3], {"s": c * 3, "b": c, "m": c, "v": c}, opset=7)
    run_onnxruntime(model, np.zeros((1, 2, 3), np.float32))  # a model onnxruntime runs
    graph = _graph(model)
    with pytest.raises(UnsupportedOpError, match=r"node 'bn' \(BatchNormalization\): .*spatial=0"):
        analyse(graph)
    with pytest.raises(UnsupportedOpError, match=r"node 'bn' \(BatchNormalization\): .*spatial=0"):
        GraphExecutor(graph)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
def test_pooling_whose_onnxruntime_windows_differ_from_the_specification_is_refused(
    op: str,
) -> None:
    """With auto_pad SAME and a dilated kernel, onnxruntime pads as if the kernel were not
    dilated: its output has another size than the specification's, so its windows are not
    the ones lipcert's geometry would bound."""
    node = helper.make_node(
        op, ["x"], ["y"], name="pool", auto_pad="SAME_UPPER", kernel_shape=[2], dilations=[2]
    )
    model = make_model([node], [1, 4], opset=19)
    assert run_onnxruntime(model, np.zeros((1, 1, 4), np.float32)).shape == (1, 1, 3)
    graph = _graph(model)
    with pytest.raises(UnsupportedOpError, match=rf"node 'pool' \({op}\): onnxruntime computes"):
        analyse(graph)
    with pytest.raises(UnsupportedOpError, match=rf"node 'pool' \({op}\): onnxruntime computes"):
        GraphExecutor(graph)


def test_opset_10_pad_fills_with_its_value_attribute() -> None:
    node = helper.make_node("Pad", ["x"], ["y"], name="pad", pads=[0, 1, 0, 2], value=5.0)
    model = make_model([node], [3], opset=10)
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    expected = run_onnxruntime(model, x)
    np.testing.assert_array_equal(expected[:, 0], [5.0, 5.0])
    import torch

    with torch.no_grad():
        actual = GraphExecutor(_graph(model))(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(actual, expected)
    assert analyse(_graph(model)).spec.lipschitz_bound == pytest.approx(1.0, rel=1e-12)


def test_cast_to_an_integer_type_is_refused_by_the_executor() -> None:
    node = helper.make_node("Cast", ["x"], ["y"], name="cast", to=7)
    graph = _graph(make_model([node], [3]))
    with pytest.raises(UnsupportedOpError, match=r"node 'cast' \(Cast\)"):
        GraphExecutor(graph)


def test_reduce_l1_without_axes_keeps_its_absolute_value() -> None:
    """Opset 18, no axes and noop_with_empty_axes=1: no reduction, but |x| (the spec)."""
    node = helper.make_node("ReduceL1", ["x"], ["y"], name="l1", noop_with_empty_axes=1)
    model = make_model([node], [4], opset=18)
    x = f32([[-1.0, 2.0, -3.0, 4.0]])
    import torch

    with torch.no_grad():
        actual = GraphExecutor(_graph(model))(torch.as_tensor(x)).numpy()
    np.testing.assert_array_equal(actual, run_onnxruntime(model, x))
    np.testing.assert_array_equal(actual, np.abs(x))
