"""Red team of the rules for ops that copy, overlap or re-index values (pooling windows,
padding modes, gathers, expands, concatenations of one tensor, slices).

Ground truth is onnxruntime itself, never lipcert's code: the model of one op is run on
every unit vector (and zero), in float32, which is exact for copies and maxima; for a
linear op (average pooling, copies) the largest singular value of that dense Jacobian is
the Lipschitz constant, for MaxPool and LpPool the largest column norm ||f(e_i) - f(0)||
is a lower bound of it (one input element moved by 1 moves every window holding it).
lipcert must refuse the model with one line naming the node, or bound it at least as high,
and then its float64 executor must compute what onnxruntime computes.

Found: onnxruntime pads pooling with auto_pad SAME as if the kernel were not dilated and
does not clamp a negative total (a kernel shorter than the stride), so its windows start
elsewhere than the specification's even where the output sizes agree (the one thing
checked before). A dilated MaxPool whose specification window reads only padding got a
bound of 1.5e-323 where onnxruntime's window reads x[0] (a 1-Lipschitz output); in a model
that hides it behind Neg, Relu and a Concat with x[0], `lipcert certify` passed the load-time
cross-check (its probes keep x[0] >= 0) and certified a radius of 0.141 at a point whose
class onnxruntime flips at distance 0.101.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadOptions

# onnxruntime's averages are float32 quotients (1/9 rounded): its Jacobian is the exact one
# within float32's rounding, which lipcert's allowance (not its bound) covers.
SOUND = 1.0 - 1e-6
TIGHT = 1e-6
REFUSED = r"node 'pool' \({op}\): onnxruntime computes pads"


def make_model(
    nodes: Sequence[onnx.NodeProto],
    sample_shape: Sequence[int],
    constants: dict[str, np.ndarray] | None = None,
    *,
    opset: int = 18,
) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])]
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in (constants or {}).items()]
    graph = helper.make_graph(
        list(nodes), "redteam", inputs, [onnx.ValueInfoProto(name="y")], tensors
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x.astype(np.float32)})[0], dtype=np.float64)


def unit_responses(model: onnx.ModelProto, sample_shape: Sequence[int]) -> np.ndarray:
    """f(e_i) - f(0) for every unit vector e_i, one row each, from onnxruntime."""
    size = int(np.prod(sample_shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *sample_shape)
    zero = run_onnxruntime(model, np.zeros((1, *sample_shape), dtype=np.float32))
    return (run_onnxruntime(model, basis) - zero).reshape(size, -1)


def load(model: onnx.ModelProto) -> Graph:
    return load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx").graph


def bound_of(graph: Graph) -> float:
    return float(analyse(graph).tensor_bounds[graph.output_name])


def assert_executor_matches(model: onnx.ModelProto, graph: Graph, shape: Sequence[int]) -> None:
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    with torch.no_grad():
        ours = GraphExecutor(graph)(torch.as_tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, run_onnxruntime(model, x), rtol=1e-6, atol=1e-6)


def pool(op: str, shape: Sequence[int], opset: int = 18, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)  # type: ignore[arg-type]
    return make_model([node], shape, opset=opset)


def lower_bound(op: str, model: onnx.ModelProto, shape: Sequence[int]) -> float:
    """The Lipschitz constant onnxruntime's op has (AveragePool: exact; else a lower bound)."""
    responses = unit_responses(model, shape)
    if op == "AveragePool":
        return float(np.linalg.svd(responses, compute_uv=False)[0])
    return float(np.sqrt(np.max(np.sum(responses**2, axis=1))))


# (op, sample shape, attributes, opset): onnxruntime's SAME windows start elsewhere than the
# specification's while the output sizes agree.
_SHIFTED = [
    pytest.param(
        "MaxPool",
        (1, 2),
        {"kernel_shape": [2], "strides": [3], "dilations": [3], "auto_pad": "SAME_LOWER"},
        18,
        id="maxpool_dilated_window_in_padding",  # bound 1.5e-323, onnxruntime reads x[0]
    ),
    pytest.param(
        "MaxPool",
        (1, 2),
        {"kernel_shape": [3], "strides": [3], "dilations": [2], "auto_pad": "SAME_LOWER"},
        22,
        id="maxpool_dilated_reads_another_element",
    ),
    pytest.param(
        "LpPool",
        (1, 2),
        {"kernel_shape": [2], "strides": [3], "dilations": [3], "auto_pad": "SAME_UPPER", "p": 2},
        18,
        id="lppool_dilated_window_in_padding",
    ),
    pytest.param(
        "MaxPool",
        (1, 3, 2),
        {"kernel_shape": [1, 2], "strides": [1, 3], "dilations": [1, 3], "auto_pad": "SAME_LOWER"},
        18,
        id="maxpool_2d_dilated_window_in_padding",
    ),
    pytest.param(
        "AveragePool",
        (1, 6),
        {"kernel_shape": [1], "strides": [3], "auto_pad": "SAME_UPPER", "ceil_mode": 1},
        19,
        id="avgpool_negative_same_padding",  # onnxruntime reads x[1], x[4]; spec x[0], x[3]
    ),
]


@pytest.mark.parametrize(("op", "shape", "attrs", "opset"), _SHIFTED)
def test_pooling_whose_onnxruntime_windows_are_shifted_is_refused(
    op: str, shape: tuple[int, ...], attrs: dict[str, object], opset: int
) -> None:
    model = pool(op, shape, opset, **attrs)
    truth = lower_bound(op, model, shape)
    assert truth > 0.5  # onnxruntime's windows read the input
    with pytest.raises(UnsupportedOpError, match=REFUSED.format(op=op)):
        bound_of(load(model))


def _l2_pool(shape: Sequence[int], opset: int, **attrs: object) -> onnx.ModelProto:
    """Pow 2 -> AveragePool -> Mul 2 -> Sqrt: lipcert fuses it into one L2NormPool node
    that carries the pool's attributes (and its own op name)."""
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["square"]),
        helper.make_node("AveragePool", ["square"], ["mean"], name="pool", **attrs),  # type: ignore[arg-type]
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Sqrt", ["scaled"], ["y"], name="root"),
    ]
    constants = {"two": np.float32(2.0), "scale": np.float32(2.0)}
    return make_model(nodes, shape, {k: np.asarray(v) for k, v in constants.items()}, opset=opset)


@pytest.mark.parametrize(
    ("shape", "attrs", "refused"),
    [
        # bound 2e-323: the specification's window reads only padding, onnxruntime's x[0]
        pytest.param(
            (1, 2),
            {"kernel_shape": [2], "strides": [3], "dilations": [3], "auto_pad": "SAME_LOWER"},
            True,
            id="dilated_window_in_padding",
        ),
        pytest.param(
            (1, 6),
            {"kernel_shape": [1], "strides": [3], "auto_pad": "SAME_UPPER", "ceil_mode": 1},
            True,
            id="negative_same_padding",
        ),
        pytest.param(
            (1, 5),
            {"kernel_shape": [2], "strides": [1], "auto_pad": "SAME_UPPER"},
            False,
            id="look_alike_undilated",
        ),
    ],
)
def test_fused_l2_pooling_is_checked_like_its_average_pool(
    shape: tuple[int, ...], attrs: dict[str, object], refused: bool
) -> None:
    model = _l2_pool(shape, 19, **attrs)
    graph = load(model)
    responses = unit_responses(model, shape)
    truth = float(np.sqrt(np.max(np.sum(responses**2, axis=1))))  # a lower bound
    assert truth > 1.0
    if refused:
        with pytest.raises(UnsupportedOpError, match=r"\(L2NormPool\): onnxruntime computes pads"):
            bound_of(graph)
        return
    assert bound_of(graph) >= truth * SOUND
    assert_executor_matches(model, graph, shape)


# Look-alikes: the same ops where onnxruntime's windows are the specification's; they keep
# their exact bound and the executor computes what onnxruntime does.
_SAME_WINDOWS = [
    pytest.param(
        "MaxPool",
        (1, 7),
        {"kernel_shape": [3], "strides": [1], "auto_pad": "SAME_LOWER"},
        18,
        id="maxpool_same_lower_undilated",
    ),
    pytest.param(
        "MaxPool",
        (1, 6, 5),
        {"kernel_shape": [3, 2], "strides": [2, 1], "auto_pad": "SAME_UPPER"},
        22,
        id="maxpool_2d_same_upper_undilated",
    ),
    pytest.param(
        "LpPool",
        (1, 5),
        {"kernel_shape": [2], "strides": [1], "auto_pad": "SAME_UPPER", "p": 2},
        18,
        id="lppool_same_upper_undilated",
    ),
    pytest.param(
        "MaxPool",
        (1, 7),
        {"kernel_shape": [2], "strides": [1], "dilations": [2], "pads": [1, 1]},
        18,
        id="maxpool_dilated_explicit_pads",
    ),
    pytest.param(
        "AveragePool",
        (1, 6),
        {"kernel_shape": [1], "strides": [2], "auto_pad": "SAME_UPPER"},
        19,
        id="avgpool_negative_same_padding_at_the_end_only",  # (0, -1): the same windows
    ),
    pytest.param(
        "AveragePool",
        (1, 5, 5),
        {"kernel_shape": [3, 3], "strides": [1, 1], "auto_pad": "SAME_LOWER"},
        19,
        id="avgpool_same_lower_overlapping",
    ),
]


@pytest.mark.parametrize(("op", "shape", "attrs", "opset"), _SAME_WINDOWS)
def test_pooling_with_the_specified_windows_keeps_its_exact_bound(
    op: str, shape: tuple[int, ...], attrs: dict[str, object], opset: int
) -> None:
    model = pool(op, shape, opset, **attrs)
    graph = load(model)
    bound = bound_of(graph)
    truth = lower_bound(op, model, shape)
    assert bound >= truth * SOUND
    assert bound <= truth * (1 + TIGHT)  # sqrt(m) is attained; the average pool's SVD exact
    assert_executor_matches(model, graph, shape)


def _hidden_shift_model() -> onnx.ModelProto:
    """logit 0 - logit 1 = x0 - relu(-x0) + 0.2 as onnxruntime runs it, slope 2 for x0 < 0;
    the specification's (and lipcert's) MaxPool window reads only padding, so lipcert read
    x0 + 0.2, slope 1, and agreed with onnxruntime on its probes (x0 >= 0 in each)."""
    nodes = [
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node(
            "MaxPool",
            ["n"],
            ["p"],
            name="pool",
            kernel_shape=[1, 2],
            strides=[1, 3],
            dilations=[1, 3],
            auto_pad="SAME_LOWER",
        ),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("Slice", ["x", "start", "end", "axis"], ["x0"]),
        helper.make_node("Concat", ["r", "x0"], ["c"], axis=3),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"]),
    ]
    constants: dict[str, np.ndarray] = {
        "w": np.array([[-1.0, 0.0], [1.0, 0.0]], np.float32),
        "b": np.array([0.2, 0.0], np.float32),
        "start": np.array([0], np.int64),
        "end": np.array([1], np.int64),
        "axis": np.array([3], np.int64),
    }
    return make_model(nodes, (1, 1, 2), constants)


def test_shifted_pooling_hidden_from_the_cross_check_is_refused() -> None:
    model = _hidden_shift_model()
    # onnxruntime: class 0 with margin 0.2 at x = 0, class 1 at distance 0.101
    at_zero = run_onnxruntime(model, np.zeros((1, 1, 1, 2)))[0]
    moved = run_onnxruntime(model, np.array([[[[-0.101, 0.0]]]]))[0]
    assert at_zero[0] - at_zero[1] == pytest.approx(0.2, abs=1e-6)
    assert moved[0] < moved[1]
    # a certified radius of margin / K must stay below 0.101: K >= 0.2 / 0.101 = 1.98
    with pytest.raises(UnsupportedOpError, match=REFUSED.format(op="MaxPool")):
        bound_of(load(model))


def _prelu_lipschitz(model: onnx.ModelProto, shape: Sequence[int]) -> float:
    """PRelu is linear where every element keeps its sign: the largest singular value of
    onnxruntime's Jacobian at all-positive and at all-negative points (each input element
    feeds its own outputs, so no mixed sign pattern does better)."""
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    best = 0.0
    for sign in (1.0, -1.0):
        base = np.full((1, *shape), 10.0 * sign, dtype=np.float32)
        at_base = run_onnxruntime(model, base)
        columns = run_onnxruntime(model, base + basis) - at_base
        jacobian = columns.reshape(size, -1).T
        best = max(best, float(np.linalg.svd(jacobian, compute_uv=False)[0]))
    return best


_PRELU = [
    # onnxruntime broadcasts x (1, 4) to the slope's (3, 4): 3 copies of each element, all of
    # slope 1 where positive; the rule said max(1, max |slope|) = 1.30 for sqrt(3) = 1.73
    pytest.param((1, 4), (3, 4), 0.5, id="x_broadcast_to_small_slopes"),
    pytest.param((1, 4), (3, 4), 3.0, id="x_broadcast_to_large_slopes"),
    pytest.param((2, 1, 4), (3, 1), 0.1, id="x_broadcast_on_a_middle_axis"),
    # look-alikes: the slope broadcasts to x (the specification's case): max(1, max |slope|)
    pytest.param((3, 4), (3, 1), 2.0, id="slope_per_channel"),
    pytest.param((3, 4), (3, 4), 2.0, id="slope_per_element"),
    pytest.param((3, 4), (), 0.3, id="scalar_slope"),
]


@pytest.mark.parametrize(("shape", "slope_shape", "scale"), _PRELU)
def test_prelu_bound_counts_the_copies_onnxruntime_broadcasts_x_to(
    shape: tuple[int, ...], slope_shape: tuple[int, ...], scale: float
) -> None:
    slope = (np.random.default_rng(5).normal(size=slope_shape) * scale).astype(np.float32)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"], name="prelu")
    model = make_model([node], shape, {"slope": slope})
    graph = load(model)
    bound = bound_of(graph)
    truth = _prelu_lipschitz(model, shape)
    assert bound >= truth * SOUND
    assert bound <= truth * (1 + TIGHT)
    assert_executor_matches(model, graph, shape)


@pytest.mark.parametrize(
    ("op", "axes"),
    [
        pytest.param("ReduceSum", [1, 1], id="sum_axis_twice"),
        pytest.param("ReduceMean", [2, -2], id="mean_axis_and_its_negative"),
        pytest.param("ReduceMax", [1, -3, 2], id="max_axis_and_its_negative"),
    ],
)
def test_reduction_over_a_repeated_axis_runs_as_onnxruntime_reduces_it_once(
    op: str, axes: list[int]
) -> None:
    """onnxruntime reduces a repeated axis once (the rule counts it once); lipcert's executor
    failed (torch refuses a repeated dim), so the load-time cross-check asked for a report."""
    shape = (2, 3, 2)
    node = helper.make_node(op, ["x", "axes"], ["y"], name="reduce", keepdims=0)
    model = make_model([node], shape, {"axes": np.array(axes, np.int64)})
    graph = load(model)
    assert_executor_matches(model, graph, shape)
    if op != "ReduceMax":
        bound = bound_of(graph)
        truth = float(np.linalg.svd(unit_responses(model, shape), compute_uv=False)[0])
        assert truth * SOUND <= bound <= truth * (1 + TIGHT)


@pytest.mark.parametrize(
    ("nodes", "constants", "refused"),
    [
        pytest.param(
            [helper.make_node("Where", ["mask", "x", "zero"], ["y"], name="where")],
            {"mask": np.array([True, False, True, True]), "zero": np.zeros(4, np.float32)},
            True,
            id="constant_mask",  # IndexError in the select matcher before
        ),
        pytest.param(
            [helper.make_node("Where", ["mask", "x", "x"], ["y"], name="where")],
            {"mask": np.array([True, False, True, True])},
            True,
            id="constant_mask_same_tensor_twice",
        ),
        pytest.param(
            [
                helper.make_node("Greater", ["x", "zero"], ["positive"]),
                helper.make_node("Where", ["positive", "x", "zero"], ["y"], name="where"),
            ],
            {"zero": np.zeros(1, np.float32)},
            False,
            id="look_alike_relu_select",
        ),
    ],
)
def test_where_on_a_constant_condition_is_refused_in_one_line(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], refused: bool
) -> None:
    model = make_model(nodes, (4,), constants)
    graph = load(model)
    if refused:
        with pytest.raises(UnsupportedOpError, match=r"node 'where' has op 'Where'"):
            bound_of(graph)
        return
    truth = float(np.sqrt(np.max(np.sum(unit_responses(model, (4,)) ** 2, axis=1))))
    assert truth == 1.0
    assert bound_of(graph) == pytest.approx(1.0, rel=TIGHT)
    assert_executor_matches(model, graph, (4,))


# --- samples of a batch: the check of the first batch looked at values, not at the batch axis


def _straddling_model() -> onnx.ModelProto:
    """Reshape (N, 1, 1, 4) -> (1, 1, 4 N) (a constant target), MaxPool k 3 pads 1, back to
    (N, 4), logits (p_0, p_3): at batch 1 each sample's own windows, in a batch p_3 of a
    sample also reads the next sample's first value."""
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["f"]),
        helper.make_node("MaxPool", ["f"], ["p"], kernel_shape=[3], pads=[1, 1]),
        helper.make_node("Reshape", ["p", "rows"], ["r"]),
        helper.make_node("Gemm", ["r", "w"], ["y"]),
    ]
    constants: dict[str, np.ndarray] = {
        "flat": np.array([1, 1, -1], np.int64),
        "rows": np.array([-1, 4], np.int64),
        "w": np.eye(4, dtype=np.float32)[:, [0, 3]],
    }
    return make_model(nodes, (1, 1, 4), constants)


def test_samples_mixed_beyond_the_first_ones_are_run_one_at_a_time() -> None:
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    model = _straddling_model()
    loaded = load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")
    spec = analyse(loaded.graph).spec
    # the first four samples do not show the mixing; the fifth gets the sixth's 0.9 in a
    # batch (class 1, its label in the test that found it) and is class 0 on its own
    rows = [[0.2, 0.6, 0.3, 0.1]] * 4 + [[0.5, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0]]
    batch = np.array(rows, np.float32).reshape(6, 1, 1, 4)
    alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in range(6)])
    assert np.argmax(alone[4]) == 0
    assert np.argmax(run_onnxruntime(model, batch)[4]) == 1  # onnxruntime's batch mixes
    logits = OnnxRuntimeEvaluator(loaded, spec=spec).logits(batch)
    np.testing.assert_allclose(logits, alone, rtol=1e-6, atol=1e-6)


def test_samples_merged_into_the_leading_axis_still_run_as_a_batch() -> None:
    """Look-alike: (N, 4) -> (2 N, 2) -> Relu -> (N, 4), as Fourier layers merge the batch
    with channels: every sample keeps its own rows, so batches stay batches."""
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    nodes = [
        helper.make_node("Reshape", ["x", "pairs"], ["f"]),
        helper.make_node("Relu", ["f"], ["r"]),
        helper.make_node("Reshape", ["r", "rows"], ["g"]),
        helper.make_node("Gemm", ["g", "w"], ["y"]),
    ]
    constants: dict[str, np.ndarray] = {
        "pairs": np.array([-1, 2], np.int64),
        "rows": np.array([-1, 4], np.int64),
        "w": np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32),
    }
    model = make_model(nodes, (4,), constants)
    loaded = load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")
    evaluator = OnnxRuntimeEvaluator(loaded, spec=analyse(loaded.graph).spec)
    batch = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in range(6)])
    np.testing.assert_allclose(evaluator.logits(batch), alone, rtol=1e-6, atol=1e-6)
    assert not evaluator.one_at_a_time


@pytest.mark.parametrize(
    ("nodes", "constants", "message"),
    [
        pytest.param(
            # rows i of (2 N, 4) hold samples i mod N: a Reshape to (N, 8) pairs samples 2j
            # and 2j + 1, at a size that scales with the batch
            [
                helper.make_node("Tile", ["x", "twice"], ["t"], name="tile"),
                helper.make_node("Reshape", ["t", "rows"], ["y"]),
            ],
            {"twice": np.array([2, 1], np.int64), "rows": np.array([-1, 8], np.int64)},
            r"node 'tile' \(Tile\): tiling along the batch axis",
            id="tile_then_merge",
        ),
        pytest.param(
            # the halves of (2 N, 2) at batch N are whole samples, not halves of each
            [
                helper.make_node("Reshape", ["x", "pairs"], ["f"]),
                helper.make_node("Split", ["f"], ["a", "b"], name="split", axis=0, num_outputs=2),
                helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
            ],
            {"pairs": np.array([-1, 2], np.int64)},
            r"node 'split' \(Split\): splitting the batch axis",
            id="split_merged_batch_axis",
        ),
        pytest.param(
            [
                helper.make_node(
                    "Slice", ["x", "last", "first", "zero", "back"], ["y"], name="slice"
                )
            ],
            {
                "last": np.array([-1], np.int64),
                "first": np.array([-(2**62)], np.int64),
                "zero": np.array([0], np.int64),
                "back": np.array([-1], np.int64),
            },
            r"node 'slice' \(Slice\): slicing the batch axis with a step",
            id="reversed_batch",
        ),
    ],
)
def test_ops_that_reorder_a_scaled_batch_axis_are_refused(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], message: str
) -> None:
    model = make_model(nodes, (4,), constants, opset=18)
    batch = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in range(4)])
    assert not np.allclose(run_onnxruntime(model, batch).reshape(4, -1), alone.reshape(4, -1))
    with pytest.raises(UnsupportedOpError, match=message):
        bound_of(load(model))


# --- copies: the strongest attacks that found nothing, kept as regression tests ------------
# Each model copies elements to several places; the bound must reach the largest singular
# value of onnxruntime's dense Jacobian, and where lipcert says exact, equal it. Checked by
# hand while writing them: each Pad / Gather / Tile / Expand case (and the Sum) fails with
# the rule's copy count lowered by one (sqrt(max copies - 1)), the Concat case with the
# Concat rule's factor at 0.9.

_I = np.int64
_COPIES = [
    pytest.param(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
        {"p": np.array([0, 0, 4, 0, 0, 3, 1, 5], _I)},
        (2, 3, 3),
        True,
        id="edge_pad_corner_copied_5x7",
    ),
    pytest.param(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
        {"p": np.array([0, 0, 2, 3, 0, 0, 2, 3], _I)},
        (1, 3, 4),
        True,
        id="reflect_pad_both_axes",
    ),
    pytest.param(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="wrap")],
        {"p": np.array([0, 5, 0, 6], _I)},
        (3,),
        True,
        id="wrap_pad_wrapping_four_times",
    ),
    pytest.param(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=2)],
        {"i": np.array([[0, -3, 2], [-1, 0, 0]], _I)},
        (2, 3),
        True,
        id="gather_repeats_with_negative_indices",
    ),
    pytest.param(
        [
            helper.make_node("Tile", ["x", "r"], ["t"]),
            helper.make_node("Expand", ["t", "s"], ["y"]),
        ],
        {"r": np.array([1, 1, 3], _I), "s": np.array([1, 2, 6], _I)},
        (1, 2),
        False,
        id="tile_then_expand",
    ),
    pytest.param(
        [
            helper.make_node("Slice", ["x", "s0", "e0", "a"], ["left"]),
            helper.make_node("Slice", ["x", "s1", "e1", "a"], ["right"]),
            helper.make_node("Concat", ["left", "x", "right"], ["y"], axis=1),
        ],
        {
            "s0": np.array([0], _I),
            "e0": np.array([4], _I),
            "s1": np.array([2], _I),
            "e1": np.array([6], _I),
            "a": np.array([1], _I),
        },
        (6,),
        False,
        id="concat_of_overlapping_slices_and_x",
    ),
    pytest.param(
        [
            helper.make_node("Pad", ["x", "p"], ["padded"], mode="edge"),
            helper.make_node("Slice", ["padded", "s", "e", "a"], ["y0"]),
            helper.make_node("Sum", ["y0", "x", "x"], ["y"]),
        ],
        {
            "p": np.array([0, 2, 0, 0], _I),
            "s": np.array([0], _I),
            "e": np.array([5], _I),
            "a": np.array([1], _I),
        },
        (5,),
        False,
        id="sum_of_x_twice_and_an_edge_padded_shift",
    ),
]


@pytest.mark.parametrize(("nodes", "constants", "shape", "exact"), _COPIES)
def test_copies_are_bounded_by_their_dense_norm(
    nodes: list[onnx.NodeProto],
    constants: dict[str, np.ndarray],
    shape: tuple[int, ...],
    exact: bool,
) -> None:
    model = make_model(nodes, shape, constants)
    graph = load(model)
    bound = bound_of(graph)
    truth = float(np.linalg.svd(unit_responses(model, shape), compute_uv=False)[0])
    assert bound >= truth * SOUND
    if exact:
        assert bound <= truth * (1 + TIGHT)
    assert_executor_matches(model, graph, shape)


# --- a Squeeze of the batch axis -------------------------------------------------------------


class _SqueezedHead(torch.nn.Module):
    """A Linear head after x.squeeze() (or x.squeeze((2, 3)), the look-alike)."""

    def __init__(self, dims: tuple[int, ...] | None) -> None:
        super().__init__()
        self.dims = dims
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = (
            x.squeeze() if self.dims is None else x.squeeze(self.dims[1]).squeeze(self.dims[0])
        )
        return self.linear(squeezed)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_squeeze_without_axes_is_refused_in_one_line(dynamo: bool) -> None:
    """Both exporters write x.squeeze() as a Squeeze without axes, which removes the batch
    axis at batch 1: the graph's tensors lost their batch axis and a pattern matcher raised
    IndexError (an internal error) on this two-layer model."""
    from user_export import export_like_users

    torch.manual_seed(0)
    example = torch.rand(1, 4, 1, 1)
    model = export_like_users(_SqueezedHead(None).eval(), example, dynamo)
    assert any(n.op_type == "Squeeze" for n in model.graph.node)
    with pytest.raises(UnsupportedOpError, match=r"\(Squeeze\) removes the batch axis"):
        load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")


def test_squeeze_of_the_data_axes_keeps_its_exact_bound() -> None:
    from user_export import export_like_users

    torch.manual_seed(0)
    head = _SqueezedHead((2, 3)).eval()
    model = export_like_users(head, torch.rand(1, 4, 1, 1), False)
    bound = bound_of(load(model))
    truth = float(np.linalg.svd(head.linear.weight.detach().double().numpy())[1][0])
    assert truth * SOUND <= bound <= truth * (1 + 1e-5)  # float32 weights: exact SVD


@pytest.mark.parametrize(
    ("op", "shape", "attrs"),
    [
        ("MaxPool", [1, 2, 2], {"strides": [4, 3], "dilations": [2, 2], "kernel_shape": [2, 2]}),
        ("AveragePool", [1, 3], {"strides": [3], "kernel_shape": [4]}),
    ],
)
def test_a_window_longer_than_the_padded_input_is_refused_in_one_line(
    op: str, shape: list[int], attrs: dict[str, object]
) -> None:
    """With ceil_mode, onnxruntime gives a window longer than the padded input an output
    (checked here); lipcert stopped with 'expected the padded input (2) to hold the pooling
    window (3) on axis 0', a message naming no node."""
    model = pool(op, shape, auto_pad="VALID", ceil_mode=1, **attrs)
    assert run_onnxruntime(model, np.ones((1, *shape), dtype=np.float32)).size > 0
    with pytest.raises(UnsupportedOpError, match=rf"node 'pool' \({op}\): its window"):
        bound_of(load(model))


def test_a_flattened_batch_axis_does_not_crash_the_block_matchers() -> None:
    """Reshape(x, [-1]) drops the batch axis at the probe's batch of 1 as x.squeeze() does;
    the Sandwich block matcher then indexed the missing unit axis (IndexError, an internal
    error). The model is bounded at least by ||W|| (numpy's SVD)."""
    weight = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["r"], name="flatten"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="head"),
    ]
    model = make_model(nodes, [4], {"flat": np.array([-1], dtype=np.int64), "w": weight})
    truth = float(np.linalg.svd(weight.astype(np.float64), compute_uv=False)[0])
    assert bound_of(load(model)) >= truth * SOUND


@pytest.mark.parametrize(
    "value", [5e-324, 1.5e-323, 3.1e-300, 1.2345678e295, 1.7976931348623157e308]
)
def test_extreme_bounds_are_shown_rounded_up(value: float) -> None:
    """A model whose output reads only padding, or x * 0, has a bound of a few 1e-324:
    `lipcert verify` stopped with an internal OverflowError formatting it."""
    from fractions import Fraction

    from lipcert.reports.format import bound_text

    text = bound_text(value)
    assert Fraction(text) >= Fraction(value)
    assert Fraction(text) <= Fraction(value) * Fraction(100001, 100000)  # six digits


@pytest.mark.parametrize(
    ("n", "kernel", "stride", "auto_pad", "refused"),
    [
        # total -3: onnxruntime's begin is -1 (its window reads x[1]); lipcert's executor
        # read x[0] (the bound, one tap, is the same: the load-time cross-check caught it)
        pytest.param(4, 1, 4, "SAME_UPPER", True, id="one_tap_stride4_shifted"),
        pytest.param(9, 2, 5, "SAME_UPPER", True, id="two_taps_stride5_shifted"),
        # total -1: begin 0 either way, the specification's windows
        pytest.param(4, 1, 2, "SAME_UPPER", False, id="one_tap_stride2_same_windows"),
        pytest.param(6, 2, 3, "SAME_LOWER", False, id="two_taps_stride3_same_windows"),
    ],
)
def test_conv_whose_onnxruntime_same_windows_are_shifted_is_refused(
    n: int, kernel: int, stride: int, auto_pad: str, refused: bool
) -> None:
    weight = np.random.default_rng(n).normal(size=(2, 1, kernel)).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], name="conv", strides=[stride], auto_pad=auto_pad
    )
    model = make_model([node], (1, n), {"w": weight})
    graph = load(model)
    if refused:
        with pytest.raises(UnsupportedOpError, match=r"node 'conv' \(Conv\): onnxruntime computes"):
            bound_of(graph)
        return
    truth = float(np.linalg.svd(unit_responses(model, (1, n)), compute_uv=False)[0])
    bound = bound_of(graph)
    assert truth * SOUND <= bound <= truth * (1 + TIGHT)
    assert_executor_matches(model, graph, (1, n))


@pytest.mark.parametrize(
    ("attrs", "refused"),
    [
        # taps at -1 and 2 on an input of 2: onnxruntime outputs -3.4e38 there, lipcert's
        # executor -inf, which the load-time cross-check reported as a misreading
        pytest.param({"dilations": [3], "pads": [1, 1]}, True, id="dilated_window_in_padding"),
        pytest.param({"dilations": [1], "pads": [1, 1]}, False, id="look_alike_undilated"),
    ],
)
def test_maxpool_window_reading_only_padding_is_refused(
    attrs: dict[str, object], refused: bool
) -> None:
    model = pool("MaxPool", (1, 2), 19, kernel_shape=[2], strides=[1], **attrs)
    graph = load(model)
    if refused:
        assert float(run_onnxruntime(model, np.ones((1, 1, 2)))[0, 0, 0]) < -1e38
        with pytest.raises(UnsupportedOpError, match=r"\(MaxPool\): window 0 .* only padding"):
            bound_of(graph)
        return
    truth = lower_bound("MaxPool", model, (1, 2))
    assert truth * SOUND <= bound_of(graph) <= truth * (1 + TIGHT)
    assert_executor_matches(model, graph, (1, 2))


def test_rows_sliced_across_samples_are_run_one_at_a_time() -> None:
    """(N, 4) -> (4 N, 1) -> rows [2, 6) -> (N, 2): at batch 1 rows 2 and 3 of the sample,
    at batch 2 rows 2, 3 of the first and 0, 1 of the second: the rows double with the
    batch, so the shapes alone keep it a batch; the Slice of the leading axis does not."""
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    nodes = [
        helper.make_node("Reshape", ["x", "column"], ["f"]),
        helper.make_node("Slice", ["f", "two", "six", "zero"], ["s"], name="slice"),
        helper.make_node("Reshape", ["s", "rows"], ["y"]),
    ]
    constants: dict[str, np.ndarray] = {
        "column": np.array([-1, 1], np.int64),
        "two": np.array([2], np.int64),
        "six": np.array([6], np.int64),
        "zero": np.array([0], np.int64),
        "rows": np.array([-1, 2], np.int64),
    }
    model = make_model(nodes, (4,), constants)
    loaded = load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")
    evaluator = OnnxRuntimeEvaluator(loaded, spec=analyse(loaded.graph).spec)
    # a first batch of two samples with x[:2] = x[2:] shows nothing; the next one does
    first = np.array([[1, 2, 1, 2], [3, 4, 3, 4]], np.float32)
    np.testing.assert_allclose(
        run_onnxruntime(model, first), run_onnxruntime(model, first[::-1])[::-1]
    )
    evaluator.logits(first)
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)  # at batch 2 the rows double
    alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in range(2)])
    assert not np.allclose(run_onnxruntime(model, batch), alone)  # onnxruntime's batch mixes
    np.testing.assert_allclose(evaluator.logits(batch), alone)


def _batch_size_model(into: str) -> onnx.ModelProto:
    """y = x W with W = I, x first multiplied by 1 + 10 relu(N - 2) relu(4 - N) (N = the
    batch size from Shape(x)[0]; `into` "values") or reshaped to (N, a, b) (a, b) = (4, 1),
    or (2, 2) at N = 3, transposed and flattened back (`into` "target"): the identity at
    batches 1, 2 and 4, not at 3."""
    n = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Sub", ["n", "two"], ["e1"]),
        helper.make_node("Relu", ["e1"], ["r1"]),
        helper.make_node("Sub", ["four", "n"], ["e2"]),
        helper.make_node("Relu", ["e2"], ["r2"]),
        helper.make_node("Mul", ["r1", "r2"], ["bump"]),  # 1 at N = 3, else 0
    ]
    constants: dict[str, np.ndarray] = {
        "zero": np.array(0, np.int64),
        "two": np.array(2, np.int64),
        "four": np.array(4, np.int64),
        "w": np.eye(4, dtype=np.float32),
    }
    if into == "values":
        constants.update(ten=np.array(10.0, np.float32), one=np.array(1.0, np.float32))
        nodes = [
            *n,
            helper.make_node("Cast", ["bump"], ["b"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["b", "ten"], ["b10"]),
            helper.make_node("Add", ["b10", "one"], ["factor"]),
            helper.make_node("Mul", ["x", "factor"], ["xs"]),
            helper.make_node("MatMul", ["xs", "w"], ["y"]),
        ]
    else:
        constants.update(k4=np.array([4], np.int64), k1=np.array([1], np.int64))
        constants.update(minus=np.array([-1], np.int64), ax=np.array([0], np.int64))
        nodes = [
            *n,
            helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
            helper.make_node("Unsqueeze", ["bump", "ax"], ["bump1"]),
            helper.make_node("Add", ["bump1", "k1"], ["bdim"]),  # 1, or 2 at N = 3
            helper.make_node("Div", ["k4", "bdim"], ["adim"]),  # 4, or 2 at N = 3
            helper.make_node("Concat", ["n1", "adim", "bdim"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Concat", ["n1", "minus"], ["rows"], axis=0),
            helper.make_node("Reshape", ["t", "rows"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["y"]),
        ]
    return make_model(nodes, (4,), constants)


@pytest.mark.parametrize("into", ["values", "target"])
def test_the_batch_size_reaching_the_values_runs_samples_one_at_a_time(into: str) -> None:
    """Shapes at batches 1 and 2 and values at 1, 2 and 4 show nothing: a last batch of 3
    got other logits (certify gave three samples a certified class their own logits do not
    have). Ground truth: onnxruntime one sample at a time."""
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    model = _batch_size_model(into)
    loaded = load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")
    evaluator = OnnxRuntimeEvaluator(loaded, spec=analyse(loaded.graph).spec)
    rng = np.random.default_rng(3)
    first, last = (rng.normal(size=(n, 4)).astype(np.float32) for n in (4, 3))
    for batch in (first, last):
        rows = range(len(batch))
        alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in rows])
        np.testing.assert_allclose(alone, batch, rtol=1e-6)  # the identity, one at a time
        np.testing.assert_allclose(evaluator.logits(batch), alone, rtol=1e-6)
    assert not np.allclose(run_onnxruntime(model, last), last)  # onnxruntime's batch of 3
    assert evaluator.one_at_a_time


def test_a_target_of_the_batch_size_still_runs_as_a_batch() -> None:
    """Look-alike: Reshape to (N, -1) and (N C, 2) with N from Shape(x)[0], as torch exports
    x.view(x.size(0), -1) and x.reshape(b * c, h): batches stay batches."""
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Mul", ["n1", "k2"], ["n2"]),
        helper.make_node("Concat", ["n2", "k2"], ["pairs"], axis=0),
        helper.make_node("Reshape", ["x", "pairs"], ["p"]),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("Concat", ["n1", "minus"], ["rows"], axis=0),
        helper.make_node("Reshape", ["r", "rows"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    constants: dict[str, np.ndarray] = {
        "zero": np.array(0, np.int64),
        "ax": np.array([0], np.int64),
        "k2": np.array([2], np.int64),
        "minus": np.array([-1], np.int64),
        "w": np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32),
    }
    model = make_model(nodes, (4,), constants)
    loaded = load_from_proto(model, LoadOptions(), source="redteam", fmt="onnx")
    evaluator = OnnxRuntimeEvaluator(loaded, spec=analyse(loaded.graph).spec)
    for n in (4, 3):
        batch = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
        alone = np.concatenate([run_onnxruntime(model, batch[i : i + 1]) for i in range(n)])
        np.testing.assert_allclose(evaluator.logits(batch), alone, rtol=1e-6, atol=1e-7)
    assert not evaluator.one_at_a_time
