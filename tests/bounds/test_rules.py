"""The reference test of the rule table: every rule against an independent ground truth.

For each case of rule_cases (an ONNX model of one op), the bound lipcert composes for the
model must be at least the exact Lipschitz constant: the largest singular value of the
explicit operator matrix for linear ops, of the Jacobian at random and constructed points for
the others, both from a float64 torch reference checked against onnxruntime. Where the rule
says its bound is exact, the two must agree within EXACT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rule_cases import (
    RuleCase,
    all_cases,
    bump_points,
    dense_matrix,
    exact_lipschitz,
    f32,
    group_sort_nodes,
    i64,
    largest_singular_value,
    make_model,
    node,
    run_onnxruntime,
    sorted_pairs_constants,
    sorted_pairs_nodes,
)

from lipcert.bounds.compose import Analysis, LayerReport, analyse
from lipcert.bounds.registry import LayerBound, supported_ops
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.model import LoadOptions

SOUND = 1.0 - 1e-9  # bound >= exact * SOUND
EXACT = 1e-6  # relative tolerance where a rule claims its bound is exact

CASES = all_cases()

# Cases whose failure was a defect of lipcert; all fixed. A new one goes here with its
# reason while it is being fixed: pytest then reports it as an expected failure.
SOUNDNESS_BUGS: dict[str, str] = {}
TIGHTNESS_BUGS: dict[str, str] = {}


def load_graph(model: onnx.ModelProto) -> Graph:
    return load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph


@dataclass(frozen=True)
class Outcome:
    """What lipcert says about a case's model, and the ground truth."""

    analysis: Analysis
    layer: LayerReport
    bound: float  # composed bound of the model's output
    truth: float


_OUTCOMES: dict[str, Outcome] = {}


def outcome(case: RuleCase) -> Outcome:
    if case.id not in _OUTCOMES:
        graph = load_graph(case.model)
        analysis = analyse(graph)
        layers = [layer for layer in analysis.layers if layer.op == case.op]
        assert len(layers) == 1, f"expected one {case.op} layer, found {analysis.layers}"
        bound = analysis.tensor_bounds[graph.output_name]
        _OUTCOMES[case.id] = Outcome(analysis, layers[0], bound, exact_lipschitz(case))
    return _OUTCOMES[case.id]


def params(bugs: dict[str, str]) -> list[object]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=bugs[case.id])] if case.id in bugs else [],
        )
        for case in CASES
    ]


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_every_registered_op_has_a_case() -> None:
    assert {case.op for case in CASES} == set(supported_ops())


@pytest.mark.parametrize("case", params(SOUNDNESS_BUGS))
def test_bound_is_at_least_the_exact_norm(case: RuleCase) -> None:
    result = outcome(case)
    assert result.bound >= result.truth * SOUND, (result.bound, result.truth, result.layer.method)


@pytest.mark.parametrize("case", params(TIGHTNESS_BUGS))
def test_bound_is_tight_where_the_rule_says_exact(case: RuleCase) -> None:
    result = outcome(case)
    assert result.layer.exact == case.exact, f"rule claims exact={result.layer.exact}"
    if case.exact:
        assert abs(result.bound - result.truth) <= EXACT * result.truth, (
            result.bound,
            result.truth,
        )
    elif case.max_ratio is not None:
        assert result.bound <= case.max_ratio * result.truth, (result.bound, result.truth)


# --- the size-independent path -------------------------------------------------------------


def with_open_spatial_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its spatial input dims symbolic (the batch dim stays symbolic)."""
    opened = onnx.ModelProto()
    opened.CopyFrom(model)
    dims = opened.graph.input[0].type.tensor_type.shape.dim
    for axis, dim in enumerate(dims[2:]):
        dim.Clear()
        dim.dim_param = f"S{axis}"
    opened.graph.output[0].ClearField("type")
    inferred = onnx.shape_inference.infer_shapes(opened)
    opened.graph.output[0].CopyFrom(inferred.graph.output[0])
    return opened


def resized(case: RuleCase, model: onnx.ModelProto, spatial: tuple[int, ...]) -> RuleCase:
    """The case at another spatial size (the size-free cases are linear or pooling)."""
    shape = (case.input_shape[0], *spatial)

    def points() -> tuple[np.ndarray, ...]:
        return () if case.linear else bump_points(case.reference, shape)

    return dataclasses.replace(case, model=model, input_shape=shape, points=points)


_BY_ID = {case.id: case for case in CASES}
_SIZE_FREE = {
    "conv1d_k3_pad1": [(1,), (2,), (4,), (9,)],
    "conv3x3_pad1": [(1, 1), (2, 3), (4, 4), (7, 7)],
    "conv3x3_stride2_groups2_pad1": [(1, 1), (3, 3), (6, 6)],
    "conv2x3_dilation2x1": [(3, 3), (5, 4), (8, 8)],
    "convT3x3_stride2_pad1_outpad1": [(1, 1), (2, 2), (4, 5)],
    "avgpool3x3_pad1_exclude_pad": [(1, 1), (2, 2), (5, 5)],
    "avgpool3x3_stride2_ceil": [(3, 3), (4, 4), (7, 7)],
    "maxpool3x3_stride1_pad1": [(1, 1), (2, 2), (5, 5)],
    "maxpool2x2_dilation2": [(3, 3), (4, 4), (7, 7)],
    "lppool2_3x3_stride1": [(3, 3), (4, 5), (6, 6)],
    "l2pool3x3_stride1_overlap": [(3, 3), (5, 5), (7, 7)],
    "globalavgpool2d": [(1, 1), (2, 3), (5, 5)],
    "circular_conv3x3": [(2, 2), (3, 3), (5, 5)],
    "circular_conv3x3_stride2": [(2, 2), (4, 4), (5, 5)],
    "circular_conv3x3_stride3": [(3, 3), (4, 4), (6, 6)],
}
_SIZE_FREE_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("case_id", "sizes"),
    [
        pytest.param(
            case_id,
            sizes,
            id=case_id,
            marks=[pytest.mark.xfail(strict=True, reason=_SIZE_FREE_BUGS[case_id])]
            if case_id in _SIZE_FREE_BUGS
            else [],
        )
        for case_id, sizes in _SIZE_FREE.items()
    ],
)
def test_size_free_bound_holds_at_every_size(case_id: str, sizes: list[tuple[int, ...]]) -> None:
    case = _BY_ID[case_id]
    model = with_open_spatial_size(case.model)
    graph = load_graph(model)
    assert graph.size_known is False
    analysis = analyse(graph)
    bound = analysis.tensor_bounds[graph.output_name]
    for spatial in sizes:
        truth = exact_lipschitz(resized(case, model, spatial))
        assert bound >= truth * SOUND, (spatial, bound, truth)


# --- rounding declarations -----------------------------------------------------------------

# Every linear case of an op whose outputs are sums of products (each output a dot product of
# the input with one row of the operator).
_DOT_PRODUCT_OPS = frozenset(
    {
        "Gemm", "MatMul", "Conv", "ConvTranspose", "CircularConv", "AveragePool",
        "GlobalAveragePool", "ReduceMean", "ReduceSum", "Sum", "Mean", "BatchNormalization",
    }
)  # fmt: skip
_ROUNDING_CASES = [
    case.id
    for case in CASES
    if case.op in _DOT_PRODUCT_OPS
    and case.linear
    and case.id not in ("sum_x_and_constant", "mean_x_x")  # one addition: u of the result
]


def _layer_bound(analysis: Analysis, op: str) -> LayerBound:
    (bound,) = [layer for node, layer in analysis.node_bounds if node.op == op]
    return bound


@pytest.mark.parametrize("case_id", _ROUNDING_CASES)
def test_rounding_terms_are_the_length_of_the_sums(case_id: str) -> None:
    # Each output of a dot-product layer is a sum of as many products as the nonzeros of its
    # row in the operator matrix; the declaration adds a few operations (bias, scaling, the
    # division of a mean, a folded BatchNorm) but must not count anything else.
    case = _BY_ID[case_id]
    rounding = _layer_bound(outcome(case).analysis, case.op).rounding
    longest = int(np.count_nonzero(dense_matrix(case.reference, case.input_shape), axis=1).max())
    assert longest <= rounding.terms <= longest + 8, (rounding.terms, longest)


@pytest.mark.parametrize("case_id", _ROUNDING_CASES)
def test_rounding_input_gain_bounds_the_absolute_operator(case_id: str) -> None:
    # |fl(w.x) - w.x| <= gamma_n |w|.|x|: the gain must bound the operator of |weights|, whose
    # dense matrix is the entrywise absolute value of the operator's (one weight per entry).
    # For a sum of several data operands, the gain applies to the sum of their norms.
    case = _BY_ID[case_id]
    analysis = outcome(case).analysis
    (node,) = [node for node, _ in analysis.node_bounds if node.op == case.op]
    rounding = _layer_bound(analysis, case.op).rounding
    operands = len(analysis.graph.data_inputs(node))
    dense = dense_matrix(case.reference, case.input_shape)
    assert rounding.input_gain * operands >= largest_singular_value(np.abs(dense)) * SOUND


# --- refusals ------------------------------------------------------------------------------


def test_unknown_op_is_refused_naming_the_node_and_listing_supported_ops() -> None:
    graph = load_graph(make_model([node("Exp", ["x"])], [3]))
    with pytest.raises(UnsupportedOpError, match=r"node 'exp_node' has op 'Exp'") as error:
        analyse(graph)
    listed = str(error.value).split("supported ops: ", 1)[1]
    assert listed.split(", ") == supported_ops()


_REFUSALS = [
    pytest.param(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), node("Mul", ["x", "r"])],
        {},
        r"node 'mul_node' \(Mul\): a product of two data tensors",
        id="mul_of_two_data_tensors",
    ),
    pytest.param(
        [node("Mul", ["x", "x"])],
        {},
        r"node 'mul_node' \(Mul\): a product of two data",
        id="mul_x_x",
    ),
    pytest.param(
        [node("Div", ["c", "x"])],
        {"c": f32(1.0)},
        r"node 'div_node' \(Div\): division by a data",
        id="div_constant_by_data",
    ),
    pytest.param(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), node("Div", ["x", "r"])],
        {},
        r"node 'div_node' \(Div\): division by a data",
        id="div_data_by_data",
    ),
    pytest.param(
        [node("ReduceMax", ["x", "axes"])],
        {"axes": i64([0])},
        r"node 'reducemax_node' \(ReduceMax\): reducing over the batch axis",
        id="reducemax_batch",
    ),
    pytest.param(
        [
            helper.make_node("TopK", ["x", "k"], ["top", "indices"], name="topk", axis=1),
            node("Gather", ["x", "indices"], axis=1),
        ],
        {"k": i64([2])},
        r"node 'gather_node' \(Gather\)",
        id="gather_at_data_indices",
    ),
    pytest.param(
        [
            helper.make_node("Transpose", ["x"], ["xt"], name="transpose", perm=[0, 2, 1]),
            node("MatMul", ["x", "xt"]),
        ],
        {},
        r"node 'matmul_node' \(MatMul\): a product of two data tensors",
        id="matmul_x_xt",
    ),
    pytest.param(
        [node("Pow", ["x", "two"])],
        {"two": f32(2.0)},
        r"node 'pow_node' has op 'Pow'",
        id="pow_alone",
    ),
    pytest.param(
        [node("Cast", ["x"], to=TensorProto.FLOAT16)],
        {},
        r"node 'cast_node' \(Cast\): only casts to float32 or float64",
        id="cast_to_float16",
    ),
    pytest.param(
        [node("Shrink", ["x"], bias=0.0, lambd=0.5)],
        {},
        r"node 'shrink_node' \(Shrink\): shrink with bias 0.0 and lambd 0.5 is discontinuous",
        id="hard_shrink",
    ),
    pytest.param(
        [
            node("Unsqueeze", ["x", "axis"], ["image"]),
            node("LpPool", ["image"], kernel_shape=[1, 1], p=0),
        ],
        {"axis": i64([1])},
        r"node 'lppool_node' \(LpPool\): Lp pooling with p = 0.0 < 1 is not Lipschitz",
        id="lppool_p0",
    ),
    pytest.param(
        [node("Celu", ["x"], alpha=-0.5)],
        {},
        r"node 'celu_node' \(Celu\): CELU with alpha -0.5 <= 0 is not Lipschitz",
        id="celu_negative_alpha",
    ),
    pytest.param(
        [node("Dropout", ["x", "ratio", "training"])],
        {"ratio": f32(0.5), "training": np.array(True)},
        r"node 'dropout_node' \(Dropout\): Dropout in training mode",
        id="dropout_training",
    ),
    pytest.param(
        [node("Slice", ["x", "zero", "one", "one"], ["row"]), node("Mean", ["x", "row"])],
        {"zero": i64([0]), "one": i64([1])},
        r"node 'mean_node' \(Mean\): broadcasting the data branch 'row'",
        id="mean_of_a_broadcast_branch",
    ),
    pytest.param(
        sorted_pairs_nodes((0, 1), (1, 3)),
        sorted_pairs_constants((0, 1), (1, 3)),
        r"\(Max\): broadcasting the data branch",
        id="max_min_of_slices_of_unequal_sizes",
    ),
    pytest.param(
        [helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=1), node("Relu", ["p"])],
        {},
        r"node 'softmax' has op 'Softmax'",
        id="softmax_inside",
    ),
]


@pytest.mark.parametrize(("nodes", "constants", "message"), _REFUSALS)
def test_op_without_a_sound_bound_is_refused(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], message: str
) -> None:
    graph = load_graph(make_model(nodes, [3, 4], constants))
    with pytest.raises(UnsupportedOpError, match=message):
        analyse(graph)


def _mixing(
    op: str,
    nodes: list[onnx.NodeProto],
    constants: dict[str, np.ndarray],
    case_id: str,
    *,
    refused: bool = False,
) -> object:
    """A model whose op moves data across the batch axis; `refused` when a rule refuses it."""
    del op
    return pytest.param(nodes, constants, refused, id=case_id)


_MIXING = [
    _mixing("Concat", [node("Concat", ["x", "x"], axis=0)], {}, "concat_axis0", refused=True),
    _mixing(
        "TopK",
        [node("TopK", ["x", "k"], ["y", "i"], axis=0)],
        {"k": i64([1])},
        "topk_axis0",
        refused=True,
    ),
    _mixing(
        "Gather",
        [node("Gather", ["x", "i"], axis=0)],
        {"i": i64([0, 0])},
        "gather_axis0",
        refused=True,
    ),
    _mixing(
        "Expand",
        [node("Expand", ["x", "s"])],
        {"s": i64([2, 3, 4])},
        "expand_axis0",
        refused=True,
    ),
    _mixing("Transpose", [node("Transpose", ["x"], perm=[1, 0, 2])], {}, "transpose_batch_axis"),
    _mixing("Flatten", [node("Flatten", ["x"], axis=0)], {}, "flatten_axis0"),
    _mixing("Flatten", [node("Flatten", ["x"], axis=2)], {}, "flatten_axis2_into_batch"),
    _mixing("Reshape", [node("Reshape", ["x", "s"])], {"s": i64([-1, 4])}, "reshape_into_batch"),
    _mixing(
        "Tile", [node("Tile", ["x", "r"])], {"r": i64([2, 1, 1])}, "tile_axis0", refused=True
    ),
    _mixing(
        "Slice",
        [node("Slice", ["x", "s", "e", "a"])],
        {"s": i64([0]), "e": i64([1]), "a": i64([0])},
        "slice_axis0",
    ),
    _mixing("Pad", [node("Pad", ["x", "p"])], {"p": i64([1, 0, 0, 0, 0, 0])}, "pad_axis0"),
    _mixing(
        "Mul", [node("Mul", ["x", "c"])], {"c": f32([[[1.0]], [[2.0]]])}, "mul_broadcast_over_batch"
    ),
    _mixing(
        "GroupSort",
        group_sort_nodes(0),
        {"axis": i64([0])},
        "groupsort_pattern_axis0",
        refused=True,
    ),
]


@pytest.mark.parametrize(("nodes", "constants", "refused"), _MIXING)
def test_op_that_mixes_samples_is_refused_or_run_one_sample_at_a_time(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], refused: bool
) -> None:
    """Bounds hold for the function of one sample (the probe runs at batch 1). On a batch,
    such a model computes something else: it must be refused, or evaluated so that every
    sample gets exactly its one-sample logits (or refused by certify for its shape)."""
    from lipcert.errors import LipcertError
    from lipcert.frontends.onnx_file import load_from_proto
    from lipcert.model import LoadOptions
    from lipcert.runtime import OnnxRuntimeEvaluator

    model = make_model(nodes, [3, 4], constants)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    if refused:
        with pytest.raises(UnsupportedOpError, match="batch axis"):
            analyse(loaded.graph)
        return
    spec = analyse(loaded.graph).spec
    batch = np.random.default_rng(0).normal(size=(3, 3, 4)).astype(np.float32)
    evaluator = OnnxRuntimeEvaluator(loaded, spec=spec)
    try:
        together = evaluator.logits(batch)
    except LipcertError:
        return
    alone = np.concatenate([evaluator._run(batch[i : i + 1]) for i in range(3)])
    if together.shape[1] != spec.num_logits:
        return  # certify refuses logits of another count than the graph's
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("bias", "lambd"),
    [
        pytest.param(0.0, 0.5, id="hard_shrink"),
        pytest.param(-0.5, -0.5, id="negative_lambd"),
    ],
)
def test_discontinuous_shrink_is_refused(bias: float, lambd: float) -> None:
    model = make_model([node("Shrink", ["x"], bias=bias, lambd=lambd)], [2])
    at = abs(lambd)
    jump = run_onnxruntime(model, np.array([[at - 1e-3, at + 1e-3]], dtype=np.float32))
    assert abs(float(jump[0, 1] - jump[0, 0])) > 0.4  # no Lipschitz constant at all
    with pytest.raises(UnsupportedOpError, match=r"node 'shrink_node' \(Shrink\)"):
        analyse(load_graph(model))


def test_celu_with_negative_alpha_is_really_not_lipschitz() -> None:
    """The refusal above is not caution: onnxruntime's CELU(alpha=-0.5) is steep at x = -3."""
    model = make_model([node("Celu", ["x"], alpha=-0.5)], [2])
    y = run_onnxruntime(model, np.array([[-3.0, -3.001]], dtype=np.float32))
    assert abs(y[0, 0] - y[0, 1]) / 0.001 > 100
