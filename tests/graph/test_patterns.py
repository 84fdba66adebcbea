"""Pattern fusion on real exports and on hand-built ONNX graphs.

deel-torchlip models are exported as real users export them (TorchScript exporter with a
dynamic batch, and torch.export with a static one, each of the module as trained and after
vanilla_model): the 1-Lipschitz activations must come out fused with bound 1, and the
composed bound must be at least the largest Jacobian norm the float64 torch module shows.
Hand-built graphs pin what must fuse, what must not, and what each fused bound is.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from user_export import export_like_users

from lipcert.bounds.compose import Analysis, analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.model import LoadOptions


def _rule_cases() -> ModuleType:
    """tests/bounds/rule_cases.py: model builders and the ground truth, shared with test_rules."""
    if "rule_cases" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "bounds" / "rule_cases.py"
        spec = importlib.util.spec_from_file_location("rule_cases", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["rule_cases"] = module
        spec.loader.exec_module(module)
    return sys.modules["rule_cases"]


rc = _rule_cases()
SOUND = 1.0 - 1e-9


def load_graph(model: onnx.ModelProto) -> Graph:
    return load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph


def ops(analysis: Analysis) -> list[str]:
    return [layer.op for layer in analysis.layers]


def bound_of(analysis: Analysis) -> float:
    return analysis.tensor_bounds[analysis.graph.output_name]


# --- deel-torchlip exports -----------------------------------------------------------------

INPUT_SHAPE = (2, 8, 8)
FIXED_BATCH = 2  # the batch size a torch.export (dynamo) export fixes


def _groupsort_l2pool_maxmin() -> torch.nn.Module:
    from deel import torchlip

    torch.manual_seed(0)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(2, 4, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.InvertibleDownSampling(2),
        torchlip.SpectralConv2d(16, 8, 1),
        torchlip.GroupSort(4),
        torchlip.ScaledAdaptiveAvgPool2d((1, 1)),
        torch.nn.Flatten(),
        torchlip.SpectralLinear(8, 6),
        torchlip.MaxMin(),
        torchlip.FrobeniusLinear(12, 3),
    ).eval()


def _fullsort_avgpool_upsampling() -> torch.nn.Module:
    from deel import torchlip

    torch.manual_seed(1)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(2, 4, 3, padding=1),
        torchlip.FullSort(),
        torchlip.ScaledAvgPool2d(2),
        torchlip.InvertibleUpSampling(2),
        torchlip.SpectralConv2d(1, 2, 3, padding=1),
        torch.nn.Flatten(),
        torchlip.SpectralLinear(128, 4),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(4, 3),
    ).eval()


DEEL_MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "groupsort_l2pool_maxmin": _groupsort_l2pool_maxmin,
    "fullsort_avgpool_upsampling": _fullsort_avgpool_upsampling,
}
# Ops each model must show fused, every one with bound 1.
FUSED_OPS = {
    "groupsort_l2pool_maxmin": {"GroupSort", "MaxMin", "L2NormPool"},
    "fullsort_avgpool_upsampling": {"GroupSort"},
}
EXPORTS = [
    (name, vanilla, dynamo)
    for name in DEEL_MODELS
    for vanilla in (False, True)
    for dynamo in (False, True)
]


def export_id(name: str, vanilla: bool, dynamo: bool) -> str:
    module = "vanilla" if vanilla else "lipschitz_module"
    return f"{name}-{module}-{'dynamo' if dynamo else 'torchscript'}"


EXPORT_IDS = [export_id(*export) for export in EXPORTS]


@functools.cache
def deel_module(name: str, vanilla: bool) -> torch.nn.Module:
    from deel import torchlip

    module = DEEL_MODELS[name]()
    return torchlip.vanilla_model(module) if vanilla else module


@functools.cache
def float64_module(name: str) -> torch.nn.Module:
    """The function of the model in float64 (vanilla: the normalised weights baked in)."""
    return copy.deepcopy(deel_module(name, True)).double().eval()


@functools.cache
def deel_export(name: str, vanilla: bool, dynamo: bool) -> onnx.ModelProto:
    example = torch.rand(FIXED_BATCH, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    return export_like_users(deel_module(name, vanilla), example, dynamo)


@functools.cache
def deel_analysis(name: str, vanilla: bool, dynamo: bool) -> Analysis:
    return analyse(load_graph(deel_export(name, vanilla, dynamo)))


def jacobians(module: torch.nn.Module, points: int = 12) -> list[np.ndarray]:
    """Jacobians of a float64 module at random points in [0, 1) (images)."""
    generator = torch.Generator().manual_seed(1)
    found = []
    for _ in range(points):
        x = torch.rand(1, *INPUT_SHAPE, dtype=torch.float64, generator=generator)
        matrix = torch.autograd.functional.jacobian(lambda v: module(v).reshape(-1), x)
        found.append(matrix.reshape(-1, x.numel()).numpy())
    return found


@pytest.mark.parametrize(("name", "vanilla", "dynamo"), EXPORTS, ids=EXPORT_IDS)
def test_deel_export_fuses_lipschitz_activations_with_bound_one(
    name: str, vanilla: bool, dynamo: bool
) -> None:
    analysis = deel_analysis(name, vanilla, dynamo)
    found = set(ops(analysis))
    assert FUSED_OPS[name] <= found, ops(analysis)
    for layer in analysis.layers:
        if layer.op in ("GroupSort", "MaxMin", "L2NormPool"):
            assert layer.bound == pytest.approx(1.0, rel=1e-12), layer
    # What the fused bodies hold is gone from the bounded path.
    assert not found & {"ReduceMin", "ReduceMax", "Pow", "Sign", "Neg", "Relu"}
    assert analysis.graph.batch_size == (FIXED_BATCH if dynamo else 1)


@pytest.mark.parametrize(("name", "vanilla", "dynamo"), EXPORTS, ids=EXPORT_IDS)
def test_deel_export_bound_is_at_least_the_modules_jacobian_norms(
    name: str, vanilla: bool, dynamo: bool
) -> None:
    spec = deel_analysis(name, vanilla, dynamo).spec
    found = jacobians(float64_module(name))
    largest = max(rc.largest_singular_value(matrix) for matrix in found)
    assert spec.lipschitz_bound >= largest * SOUND
    for i in range(spec.num_logits):
        assert spec.logit_bounds[i] >= max(np.linalg.norm(m[i]) for m in found) * SOUND
        for j in range(spec.num_logits):
            if i != j:
                pair = max(float(np.linalg.norm(m[i] - m[j])) for m in found)
                assert spec.pair_bound(i, j) >= pair * SOUND


# --- sorting pairs ---------------------------------------------------------------------------


def _model(
    nodes: list[onnx.NodeProto],
    shape: tuple[int, ...],
    constants: dict[str, np.ndarray] | None = None,
    opset: int = 18,
) -> onnx.ModelProto:
    return rc.make_model(nodes, list(shape), constants, opset=opset)


def _truth(
    model: onnx.ModelProto, reference: rc.Reference, shape: tuple[int, ...], *, linear: bool
) -> float:
    case = rc.RuleCase("pattern", "-", model, reference, shape, linear=linear, exact=False)
    return float(rc.exact_lipschitz(case))


def test_max_min_of_disjoint_slices_fuses_into_group_sort() -> None:
    first, second = (0, 2), (2, 4)
    model = _model(
        rc.sorted_pairs_nodes(first, second), (4, 3), rc.sorted_pairs_constants(first, second)
    )
    analysis = analyse(load_graph(model))
    assert ops(analysis) == ["GroupSort"]
    assert bound_of(analysis) == pytest.approx(1.0, rel=1e-12)


def test_max_min_of_overlapping_slices_does_not_fuse() -> None:
    first, second = (0, 2), (1, 3)
    model = _model(
        rc.sorted_pairs_nodes(first, second), (4, 3), rc.sorted_pairs_constants(first, second)
    )
    analysis = analyse(load_graph(model))
    assert "GroupSort" not in ops(analysis)
    # Raising x[:, 1] when it is the larger of both pairs moves two maxima: sqrt(2).
    truth = _truth(model, rc.sorted_pairs_reference(first, second), (4, 3), linear=False)
    assert truth == pytest.approx(math.sqrt(2), rel=1e-9)
    assert bound_of(analysis) >= truth * SOUND


def test_max_min_of_split_halves_fuses_into_group_sort() -> None:
    nodes = [
        helper.make_node("Split", ["x", "halves"], ["a", "b"], name="split", axis=1),
        helper.make_node("Max", ["a", "b"], ["high"], name="pair_max"),
        helper.make_node("Min", ["a", "b"], ["low"], name="pair_min"),
        helper.make_node("Concat", ["high", "low"], ["y"], name="sorted_pairs", axis=1),
    ]
    analysis = analyse(load_graph(_model(nodes, (4, 3), {"halves": rc.i64([2, 2])})))
    assert ops(analysis) == ["GroupSort"]
    assert bound_of(analysis) == pytest.approx(1.0, rel=1e-12)


def test_reduce_min_max_sharing_an_inner_tensor_does_not_fuse() -> None:
    # The minima also feed a second branch: fusing would hide that use.
    nodes = [
        *rc.group_sort_nodes(1)[:2],
        helper.make_node("Concat", ["low", "high"], ["sorted"], name="group_sort", axis=1),
        helper.make_node("Concat", ["low", "low"], ["twice"], name="twice", axis=1),
        helper.make_node("Add", ["sorted", "twice"], ["y"], name="add"),
    ]
    model = _model(nodes, (2, 3), {"axis": rc.i64([1])})
    analysis = analyse(load_graph(model))
    assert "GroupSort" not in ops(analysis)

    def reference(x: torch.Tensor) -> torch.Tensor:
        low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        return torch.cat([low, high], 1) + torch.cat([low, low], 1)

    assert bound_of(analysis) >= _truth(model, reference, (2, 3), linear=False) * SOUND


# --- MaxMin and SiLU -----------------------------------------------------------------------


def _max_min_nodes(negation: onnx.NodeProto) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Relu", ["x"], ["positive"], name="relu_pos"),
        negation,
        helper.make_node("Relu", ["minus_x"], ["negative"], name="relu_neg"),
        helper.make_node("Concat", ["positive", "negative"], ["y"], name="max_min", axis=1),
    ]


@pytest.mark.parametrize(
    ("negation", "constants"),
    [
        pytest.param(helper.make_node("Neg", ["x"], ["minus_x"], name="neg"), {}, id="neg"),
        pytest.param(
            helper.make_node("Mul", ["x", "minus_one"], ["minus_x"], name="mul"),
            {"minus_one": rc.f32(-1.0)},
            id="mul_minus_one",
        ),
    ],
)
def test_concat_of_relu_x_and_relu_minus_x_fuses_into_max_min(
    negation: onnx.NodeProto, constants: dict[str, np.ndarray]
) -> None:
    analysis = analyse(load_graph(_model(_max_min_nodes(negation), (3, 4), constants)))
    assert ops(analysis) == ["MaxMin"]
    assert bound_of(analysis) == pytest.approx(1.0, rel=1e-12)


def test_relu_of_a_scaled_negation_does_not_fuse_into_max_min() -> None:
    negation = helper.make_node("Mul", ["x", "minus_two"], ["minus_x"], name="mul")
    model = _model(_max_min_nodes(negation), (3, 4), {"minus_two": rc.f32(-2.0)})
    analysis = analyse(load_graph(model))
    assert "MaxMin" not in ops(analysis)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-2 * x)], 1)

    assert bound_of(analysis) >= _truth(model, reference, (3, 4), linear=False) * SOUND


def test_max_min_whose_negation_is_used_elsewhere_does_not_fuse() -> None:
    nodes = [
        *_max_min_nodes(helper.make_node("Neg", ["x"], ["minus_x"], name="neg"))[:3],
        helper.make_node("Concat", ["positive", "negative"], ["pair"], name="max_min", axis=1),
        helper.make_node("Concat", ["minus_x", "minus_x"], ["again"], name="again", axis=1),
        helper.make_node("Add", ["pair", "again"], ["y"], name="add"),
    ]
    model = _model(nodes, (3, 4))
    analysis = analyse(load_graph(model))
    assert "MaxMin" not in ops(analysis)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], 1) - torch.cat([x, x], 1)

    assert bound_of(analysis) >= _truth(model, reference, (3, 4), linear=False) * SOUND


def test_x_times_sigmoid_x_fuses_into_silu() -> None:
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["gate"], name="gate"),
        helper.make_node("Mul", ["gate", "x"], ["y"], name="silu"),
    ]
    analysis = analyse(load_graph(_model(nodes, (5,))))
    assert ops(analysis) == ["SiLU"]
    assert bound_of(analysis) == pytest.approx(1.099839321, rel=1e-12)


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param(
            [
                helper.make_node("Relu", ["x"], ["r"], name="relu"),
                helper.make_node("Sigmoid", ["r"], ["gate"], name="gate"),
                helper.make_node("Mul", ["x", "gate"], ["y"], name="silu"),
            ],
            id="x_times_sigmoid_of_another_tensor",
        ),
        pytest.param(
            [
                helper.make_node("Sigmoid", ["x"], ["gate"], name="gate"),
                helper.make_node("Mul", ["x", "gate"], ["product"], name="silu"),
                helper.make_node("Add", ["product", "gate"], ["y"], name="add"),
            ],
            id="sigmoid_also_used_elsewhere",
        ),
    ],
)
def test_product_that_is_not_silu_is_refused(nodes: list[onnx.NodeProto]) -> None:
    graph = load_graph(_model(nodes, (5,)))
    with pytest.raises(UnsupportedOpError, match=r"node 'silu' \(Mul\): a product of two data"):
        analyse(graph)


# --- L2-norm pooling -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "attrs", "scale", "expected"),
    [
        pytest.param((2, 2), {"strides": [2, 2]}, 4.0, 1.0, id="2x2_stride2_scaled"),
        pytest.param((2, 2), {"strides": [2, 2]}, None, 0.5, id="2x2_stride2_mean"),
        pytest.param((3, 3), {}, 9.0, 3.0, id="3x3_stride1_overlap_sqrt_m"),
        pytest.param((2, 2), {"strides": [1, 1]}, 4.0, 2.0, id="2x2_stride1_overlap_sqrt_m"),
    ],
)
def test_l2_pooling_fuses_with_bound_sqrt_c_m_over_divisor(
    kernel: tuple[int, int], attrs: dict[str, object], scale: float | None, expected: float
) -> None:
    constants = {"two": rc.f32(2.0)}
    if scale is not None:
        constants["scale"] = rc.f32(scale)
    model = _model(rc.l2_pool_nodes(kernel, scale=scale, **attrs), (2, 6, 6), constants)
    analysis = analyse(load_graph(model))
    assert ops(analysis) == ["L2NormPool"]
    assert bound_of(analysis) == pytest.approx(expected, rel=1e-12)


def test_l2_pooling_with_the_square_as_a_product_fuses() -> None:
    nodes = rc.l2_pool_nodes((2, 2), scale=4.0, strides=[2, 2])
    nodes[0] = helper.make_node("Mul", ["x", "x"], ["square"], name="square")
    model = _model(nodes, (2, 6, 6), {"scale": rc.f32(4.0)})
    analysis = analyse(load_graph(model))
    assert ops(analysis) == ["L2NormPool"]
    assert bound_of(analysis) == pytest.approx(1.0, rel=1e-12)


def test_l2_pooling_whose_average_is_used_elsewhere_is_not_fused() -> None:
    nodes = [
        *rc.l2_pool_nodes((2, 2), scale=None, strides=[2, 2]),
        helper.make_node("Add", ["y", "mean"], ["z"], name="add"),
    ]
    constants = {"two": rc.f32(2.0)}
    graph = load_graph(rc.make_model(nodes, [2, 6, 6], constants, output="z"))
    with pytest.raises(UnsupportedOpError, match=r"node 'square' has op 'Pow'"):
        analyse(graph)


def test_global_l2_pooling_fuses_with_bound_one_over_sqrt_size() -> None:
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["square"], name="square"),
        helper.make_node("GlobalAveragePool", ["square"], ["mean"], name="pool"),
        helper.make_node("Sqrt", ["mean"], ["y"], name="root"),
    ]
    model = _model(nodes, (2, 4, 4), {"two": rc.f32(2.0)})
    analysis = analyse(load_graph(model))
    assert ops(analysis) == ["L2NormPool"]
    assert bound_of(analysis) == pytest.approx(0.25, rel=1e-12)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean(dim=(2, 3), keepdim=True).sqrt()

    assert bound_of(analysis) == pytest.approx(
        _truth(model, reference, (2, 4, 4), linear=False), rel=1e-6
    )


# --- circular convolution ------------------------------------------------------------------


def test_wrap_pad_then_conv_fuses_into_an_exact_circular_conv() -> None:
    case = rc.circular_conv_case("circular_pattern", 2, 3, (5, 4), (3, 3))
    analysis = analyse(load_graph(case.model))
    assert ops(analysis) == ["CircularConv"]
    assert analysis.layers[0].exact
    truth = rc.exact_lipschitz(case)
    assert bound_of(analysis) == pytest.approx(truth, rel=1e-6)
    assert bound_of(analysis) >= truth * SOUND


def test_wrap_pad_wider_than_the_kernel_is_bounded_soundly() -> None:
    weight = rc.f32(rc.rng_for("wide_wrap").standard_normal((2, 2, 3, 3)))
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["wrapped"], name="wrap", mode="wrap"),
        helper.make_node("Conv", ["wrapped", "w"], ["y"], name="conv"),
    ]
    model = _model(
        nodes, (2, 5, 5), {"pads": rc.i64([0, 0, 2, 2, 0, 0, 2, 2]), "w": weight}, opset=19
    )

    def reference(x: torch.Tensor) -> torch.Tensor:
        wrapped = torch.nn.functional.pad(x, [2, 2, 2, 2], mode="circular")
        return torch.nn.functional.conv2d(wrapped, rc.t64(weight))

    analysis = analyse(load_graph(model))
    assert bound_of(analysis) >= _truth(model, reference, (2, 5, 5), linear=True) * SOUND


@functools.cache
def _circular_torch_conv() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").eval()


def _export_torch(
    module: torch.nn.Module, shape: tuple[int, ...], *, dynamo: bool, **options: object
) -> onnx.ModelProto:
    return export_like_users(module, torch.rand(1, *shape), dynamo, None, **options)


def _module_norm(module: torch.nn.Module, shape: tuple[int, ...]) -> float:
    double = copy.deepcopy(module).double()
    return float(rc.largest_singular_value(rc.dense_matrix(double, shape)))


def test_torch_circular_conv_exported_by_dynamo_is_an_exact_circular_conv() -> None:
    # torch.export writes padding_mode="circular" as Pad(mode="wrap") + Conv.
    module = _circular_torch_conv()
    analysis = analyse(load_graph(_export_torch(module, (2, 6, 6), dynamo=True)))
    assert ops(analysis) == ["CircularConv"]
    assert bound_of(analysis) == pytest.approx(_module_norm(module, (2, 6, 6)), rel=1e-6)


@pytest.mark.parametrize("opset", [18, 19])
def test_torch_circular_conv_exported_by_torchscript_is_bounded_soundly(opset: int) -> None:
    # The TorchScript exporter writes the wrap as Slice + Concat on each axis, even at opset
    # 19 where Pad has mode="wrap": fused into a circular conv (lipcert.graph.affine_blocks).
    module = _circular_torch_conv()
    model = _export_torch(module, (2, 6, 6), dynamo=False, opset_version=opset)
    analysis = analyse(load_graph(model))
    assert ops(analysis) == ["CircularConv"]
    norm = _module_norm(module, (2, 6, 6))
    assert bound_of(analysis) == pytest.approx(norm, rel=1e-6)


# --- BatchNormalization folding -----------------------------------------------------------


@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
def test_batchnorm_after_a_layer_is_folded_into_it(layer: str) -> None:
    case = rc.folded_batchnorm_case(f"fold_{layer}", layer)
    analysis = analyse(load_graph(case.model))
    assert ops(analysis) == [layer]
    assert analysis.layers[0].name.endswith("+bn")
    truth = rc.exact_lipschitz(case)
    assert bound_of(analysis) >= truth * SOUND
    # Folding bounds the combined operator, far below the product of the two norms.
    limit = 1 + 1e-6 if layer == "Gemm" else 1.15
    assert bound_of(analysis) <= limit * truth


def test_batchnorm_whose_input_has_another_consumer_is_not_folded() -> None:
    case = rc.folded_batchnorm_case("fold_shared", "Gemm")
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    bn = model.graph.node[1]
    bn.output[0] = "normalised"
    model.graph.node.append(helper.make_node("Add", ["normalised", "z"], ["y"], name="add"))
    analysis = analyse(load_graph(model))
    # x -> BN(Gemm(x)) + Gemm(x) is one affine block (lipcert.graph.affine_blocks); the
    # BatchNorm inside it stays unfolded.
    assert ops(analysis) == ["AffineBlock"]
    assert [n.op for n in analysis.graph.nodes[0].body] == ["Gemm", "BatchNormalization", "Add"]


@functools.cache
def _bn_torch_model() -> torch.nn.Module:
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1),
        torch.nn.BatchNorm2d(3),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 16, 4),
        torch.nn.BatchNorm1d(4),
    )
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(-2, 2)
    return model.eval()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, ["Conv", "Flatten", "Gemm"], id="exporter_folds_conv_bn"),
        pytest.param(
            {"do_constant_folding": False}, ["Conv", "Flatten", "Gemm"], id="no_constant_folding"
        ),
        pytest.param(
            {"training": torch.onnx.TrainingMode.PRESERVE},
            ["Conv", "Flatten", "Gemm"],
            id="training_mode_preserve",
        ),
    ],
)
def test_exported_batchnorm_is_folded(options: dict[str, object], expected: list[str]) -> None:
    module = _bn_torch_model()
    analysis = analyse(load_graph(_export_torch(module, (2, 4, 4), dynamo=False, **options)))
    assert ops(analysis) == expected
    truth = _module_norm(module, (2, 4, 4))
    assert truth * SOUND <= bound_of(analysis)
