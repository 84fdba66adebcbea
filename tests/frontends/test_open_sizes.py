"""Models that leave H, W open, loaded without --input-shape: the bound must hold at every size.

For each op, the model is loaded at its open size (lipcert probes one size) and its stated
bound is compared with the true constant of the same model file at several sizes: the norm
of its dense operator matrix, probed with onnxruntime on unit vectors, for linear ops; a
lower bound from Jacobians at random points for the others. Ops without a size-free bound
must ask for --input-shape instead, naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from threadpoolctl import threadpool_limits

from lipcert.bounds.compose import analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

SIZES = [(1, 1), (2, 2), (3, 5), (8, 8), (32, 32)]
# The dense matrix at 64x64 has 4096 columns: only for ops with few outputs.
LARGE = (64, 64)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "open",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", "Ho", "Wo"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _const(name: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _dense_norm(model: onnx.ModelProto, size: tuple[int, int]) -> float:
    """||A||_2 of the model's linear map at input size (1, H, W): unit vectors, then SVD."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n = size[0] * size[1]
    eye = np.eye(n, dtype=np.float32).reshape(n, 1, *size)
    zero = np.zeros((1, 1, *size), np.float32)
    columns = session.run(None, {"x": eye})[0].reshape(n, -1)
    offset = session.run(None, {"x": zero})[0].reshape(1, -1)
    matrix = (columns - offset).astype(np.float64).T
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    with threadpool_limits(limits=1):
        return float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0)))


def _stated_bound(model: onnx.ModelProto) -> float:
    loaded = load_from_proto(model, LoadOptions(), source="open.onnx", fmt="onnx")
    assert not loaded.graph.size_known
    return analyse(loaded.graph).spec.lipschitz_bound


def _reduce_mean() -> onnx.ModelProto:
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1, name="mean")]
    return _model(nodes, [])


def _global_average() -> onnx.ModelProto:
    return _model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")], [])


def _pad(mode: str, pads: list[int]) -> onnx.ModelProto:
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], mode=mode, name="pad")]
    return _model(nodes, [_const("pads", pads)])


def _average_pool(**attrs: object) -> onnx.ModelProto:
    nodes = [helper.make_node("AveragePool", ["x"], ["y"], name="pool", **attrs)]
    return _model(nodes, [])


LINEAR_MODELS = [
    pytest.param(_reduce_mean, True, id="reduce_mean_spatial"),
    pytest.param(_global_average, True, id="global_average_pool"),
    pytest.param(lambda: _pad("edge", [0, 0, 3, 2, 0, 0, 1, 4]), False, id="pad_edge"),
    pytest.param(lambda: _pad("reflect", [0, 0, 1, 1, 0, 0, 1, 1]), False, id="pad_reflect"),
    pytest.param(lambda: _pad("constant", [0, 0, 1, 1, 0, 0, 1, 1]), False, id="pad_constant"),
    pytest.param(
        lambda: _average_pool(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
        False,
        id="avgpool_same_upper",
    ),
    pytest.param(
        lambda: _average_pool(kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_LOWER"),
        False,
        id="avgpool_same_lower_overlap",
    ),
    pytest.param(
        lambda: _average_pool(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        False,
        id="avgpool_ceil",
    ),
]


@pytest.mark.parametrize(("build", "large"), LINEAR_MODELS)
def test_open_size_bound_holds_at_every_size(build, large: bool) -> None:  # type: ignore[no-untyped-def]
    model = build()
    try:
        stated = _stated_bound(model)
    except UnsupportedOpError as exc:  # asking for the size is the other sound answer
        assert "pass input_shape= (--input-shape)" in str(exc)
        return
    sizes = [*SIZES, LARGE] if large else SIZES
    for size in sizes:
        if "Pad" in str(model.graph.node) and "reflect" in str(model.graph.node) and min(size) < 2:
            continue  # reflect padding needs more than the padded amount
        true = _dense_norm(model, size)
        assert stated >= true * (1 - 1e-6), f"at {size}: stated {stated} < true {true}"


@pytest.mark.parametrize(
    ("build", "probe_size_bound"),
    [
        pytest.param(_reduce_mean, 1 / 32, id="reduce_mean"),
        pytest.param(lambda: _pad("edge", [0, 0, 3, 2, 0, 0, 1, 4]), np.sqrt(4 * 5), id="edge"),
        pytest.param(
            lambda: _average_pool(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
            0.5,
            id="avgpool_same",
        ),
    ],
)
def test_probe_size_bound_was_too_small(build, probe_size_bound: float) -> None:  # type: ignore[no-untyped-def]
    """The counterexample: the bound at the probe's 32x32 is below the true one elsewhere."""
    model = build()
    worst = max(_dense_norm(model, size) for size in SIZES)
    assert worst > probe_size_bound * 1.2
    assert _stated_bound(model) >= worst * (1 - 1e-6)


def test_reduce_sum_over_an_open_axis_asks_for_the_size() -> None:
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1, name="total")]
    model = _model(nodes, [_const("axes", [2, 3])])
    with pytest.raises(UnsupportedOpError, match=r"node 'total' \(ReduceSum\).*--input-shape"):
        _stated_bound(model)
    # the same model with its size given is bounded at that size
    loaded = load_from_proto(model, LoadOptions(input_shape=(1, 3, 5)), source="m", fmt="onnx")
    bound = analyse(loaded.graph).spec.lipschitz_bound
    assert bound >= _dense_norm(model, (3, 5)) * (1 - 1e-9)


def test_constant_computed_from_the_open_size_is_refused() -> None:
    """y = x * H: the scale is folded at the probe's size (32); at H = 40 it is 40."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "two"], ["h"], axis=0, name="h"),
        helper.make_node("Cast", ["h"], ["h_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["x", "h_f"], ["y"], name="scale"),
    ]
    model = _model(nodes, [_const("two", 2)])
    assert _dense_norm(model, (40, 1)) == pytest.approx(40.0)
    with pytest.raises(UnsupportedOpError, match=r"node 'scale' \(Mul\).*input's size"):
        _stated_bound(model)


def test_conv_net_with_open_size_still_loads() -> None:
    """The look-alike: a conv net whose ops all have size-free bounds."""
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="mp"),
        helper.make_node("GlobalAveragePool", ["p"], ["y"], name="gap"),
    ]
    stated = _stated_bound(_model(nodes, [weight]))
    assert np.isfinite(stated) and stated > 0


def _l2_pool() -> onnx.ModelProto:
    """sqrt(AveragePool(x^2)) with SAME padding not counted: L2 pooling as torch exports it."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"], name="square"),
        helper.make_node(
            "AveragePool",
            ["sq"],
            ["avg"],
            kernel_shape=[2, 2],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
            name="pool",
        ),
        helper.make_node("Sqrt", ["avg"], ["y"], name="root"),
    ]
    return _model(nodes, [_const("two", 2.0, np.float32)])


def _local_constant(model: onnx.ModelProto, size: tuple[int, int], seed: int = 0) -> float:
    """A lower bound of the Lipschitz constant (up to float32 noise, ~1e-3 relative):
    Jacobian norms at random points, by finite differences of the file's own function."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n = size[0] * size[1]
    rng = np.random.default_rng(seed)
    best = 0.0
    h = 1e-2
    for _ in range(3):
        point = (rng.standard_normal((1, 1, *size)) + 3.0).astype(np.float32)
        base = session.run(None, {"x": point})[0].reshape(-1).astype(np.float64)
        steps = (point + h * np.eye(n, dtype=np.float32).reshape(n, 1, *size)).astype(np.float32)
        out = session.run(None, {"x": steps})[0].reshape(n, -1).astype(np.float64)
        columns = (out - base) / h
        best = max(best, float(np.linalg.norm(columns.T, 2)))
    return best


def test_l2_pooling_with_same_padding_holds_at_every_size() -> None:
    model = _l2_pool()
    try:
        stated = _stated_bound(model)
    except UnsupportedOpError as exc:
        assert "pass input_shape= (--input-shape)" in str(exc)
        return
    for size in [(1, 1), (2, 2), (3, 5), (8, 8)]:
        true = _local_constant(model, size)
        assert stated >= true * (1 - 1e-2), f"at {size}: stated {stated} < {true}"
    # at 1x1 a window holds one value: |x| has constant 1, twice the 1/2 of 32x32
    assert _local_constant(model, (1, 1)) > 0.98
