"""SLL, CPL, Sandwich and comparison-select blocks: fused, bounded near their true constant.

Every family of nonlinear_zoo is exported by both torch exporters (TorchScript with a dynamic
batch, dynamo with a fixed one) and loaded as `lipcert verify` loads it. Ground truth:
- SLL/CPL block: sup over activation slopes L in [0, 1]^n of ||I - M L M^T||, M = W D^1/2
  built from the float32 weights with torch's own conv (autograd probe, float64): the closed
  form max(1, ||M||^2 - 1), itself checked against an enumeration of the vertices of the box
  on tiny sizes;
- Sandwich block: sup over L of ||W2 L W1|| by enumeration of the vertices;
- whole network: at most 1.05 times the product of the blocks' constants (and the exact norms
  of the other layers), and never below the largest Jacobian norm of the float64 module.
Look-alikes (V != W, a negative D, activations with slopes outside [0, 1], a select that
jumps, repeated scatter indices) must not get a block bound.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from nonlinear_zoo import (
    FIXED_BATCH,
    IMAGE,
    CPLConv,
    CPLLinear,
    Jump,
    SandwichFc,
    SLLConv,
    SLLLinear,
    cayley,
    cpl_net,
    export,
    largest_jacobian_norm,
    min_max_net,
    n_activation_net,
    sandwich_constant_by_vertices,
    sandwich_matrices,
    sandwich_net,
    sll_constant_by_vertices,
    sll_constant_closed_form,
    sll_conv_net,
    sll_dense_net,
    sll_factor,
)
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from lipcert.bounds.compose import Analysis, analyse
from lipcert.bounds.rules.blocks import lipsdp_bound
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph
from lipcert.model import LoadOptions

# The exported constants (SLL's T, CPL's h) are computed by onnxruntime in float32, the ground
# truth in float64 from the same float32 parameters: they agree to a few float32 ulps.
SOUND = 1 - 1e-5
TARGET = 1.05

FAMILIES = {
    "sll_conv": lambda: sll_conv_net(),
    "sll_dense": lambda: sll_dense_net(),
    "sll_conv_scaled": lambda: sll_conv_net(seed=1, t_scale=1.7),
    "sll_dense_scaled": lambda: sll_dense_net(seed=1, t_scale=1.7),
    "sll_conv_scaled5": lambda: sll_conv_net(seed=1, t_scale=5.0),
    "cpl": lambda: cpl_net(),
    "cpl_stride2": lambda: cpl_net(seed=1, stride=2),
    "sll_conv_flipped": lambda: sll_conv_net(seed=2, flipped=True),
    "sandwich": lambda: sandwich_net(),
    "minmax_where": lambda: min_max_net(),
    "n_activation": lambda: n_activation_net(),
}
BLOCK_OP = {
    "sll_conv": "SLLBlock",
    "sll_dense": "SLLBlock",
    "sll_conv_scaled": "SLLBlock",
    "sll_dense_scaled": "SLLBlock",
    "sll_conv_scaled5": "SLLBlock",
    "cpl": "SLLBlock",
    "cpl_stride2": "SLLBlock",
    "sll_conv_flipped": "SLLBlock",
    "sandwich": "SandwichBlock",
    "minmax_where": "GroupSort",
    "n_activation": "PiecewiseLinear",
}
CASES = [(name, dynamo) for name in FAMILIES for dynamo in (False, True)]
IDS = [f"{name}-{'dynamo' if dynamo else 'torchscript'}" for name, dynamo in CASES]


@functools.cache
def module(name: str) -> nn.Module:
    torch.set_num_threads(1)
    return FAMILIES[name]()


@functools.cache
def analysis(name: str, dynamo: bool) -> Analysis:
    return analyse(load_graph(export(module(name), dynamo)))


def load_graph(model: onnx.ModelProto) -> Graph:
    return load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph


def block_truths(name: str) -> list[float]:
    """The exact constant of each block of the network, in order."""
    net = module(name)
    truths = []
    shape: tuple[int, ...] = (4, *IMAGE[1:]) if name.startswith("sll_conv") else IMAGE
    for layer in net:
        if isinstance(layer, SLLConv | CPLConv):
            truths.append(sll_constant_closed_form(sll_factor(layer, shape)))
        elif isinstance(layer, SLLLinear | CPLLinear):
            size = layer.weight.shape[1] if isinstance(layer, SLLLinear) else layer.weights.shape[1]
            truths.append(sll_constant_closed_form(sll_factor(layer, (size,))))
        elif isinstance(layer, SandwichFc):
            truths.append(sandwich_constant_by_vertices(*sandwich_matrices(layer)))
    return truths


def other_layers_norm(name: str) -> float:
    """Exact norms of the layers outside the blocks (average pooling, the head, the conv)."""
    net = module(name)
    head = float(np.linalg.norm(net[-1].weight.detach().double().numpy(), 2))
    if name.startswith("sll_conv"):
        return 0.5 * head  # 2x2 average pooling, stride 2: exactly 1/2
    if name in ("minmax_where", "n_activation"):
        return float(np.linalg.norm(net[1].weight.detach().double().numpy(), 2)) * head
    return head


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_blocks_are_fused_and_bounded_within_five_percent(name: str, dynamo: bool) -> None:
    found = analysis(name, dynamo)
    blocks = [layer for layer in found.layers if layer.op == BLOCK_OP[name]]
    truths = block_truths(name)
    if name in ("minmax_where", "n_activation"):
        assert len(blocks) == 1 and blocks[0].bound == pytest.approx(1.0, rel=1e-12)
        assert not {"Greater", "Where"} & {layer.op for layer in found.layers}
        return
    assert len(blocks) == len(truths), [layer.op for layer in found.layers]
    for layer, truth in zip(blocks, truths, strict=True):
        assert layer.bound >= truth * SOUND, (layer, truth)
        # a 1-Lipschitz block gets at most 1.05; any block at most 1.05 x its constant
        assert layer.bound <= TARGET * max(truth, 1.0 if name == "sandwich" else truth), (
            layer,
            truth,
        )


@pytest.mark.parametrize(("name", "dynamo"), CASES, ids=IDS)
def test_network_bound_between_jacobian_norms_and_product_of_blocks(
    name: str, dynamo: bool
) -> None:
    bound = analysis(name, dynamo).spec.lipschitz_bound
    product = float(np.prod(block_truths(name) or [1.0])) * other_layers_norm(name)
    if name == "sandwich":
        product = max(product, other_layers_norm(name))  # blocks are 1-Lipschitz by design
    assert bound <= TARGET * product
    shape = IMAGE
    assert bound >= largest_jacobian_norm(module(name), shape) * SOUND


@pytest.mark.parametrize("name", ["sll_conv", "sll_dense", "cpl_stride2", "sandwich"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_executing_the_fused_graph_reproduces_the_module(name: str, dynamo: bool) -> None:
    """The fused nodes run their bodies (ScatterND, ConvTranspose...): same logits as torch,
    at the exported batch size and, for TorchScript's dynamic batch, at batch 3."""
    import copy

    from lipcert.graph.execute import GraphExecutor

    graph = analysis(name, dynamo).graph
    batch = FIXED_BATCH if dynamo else 3
    x = torch.rand(batch, *IMAGE, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = copy.deepcopy(module(name)).double()(x).detach().numpy()
    found = GraphExecutor(graph, torch.float64)(x).detach().numpy()
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sll_dense_scaled", "sll_conv_scaled5"])
def test_scaled_sll_blocks_exceed_one(name: str) -> None:
    """A larger T takes ||M||^2 past 2: the bound is ||M||^2 - 1, not 1 (for convs the
    row-sum bound is then replaced by the explicit operator's norm: tight)."""
    truths = block_truths(name)
    assert max(truths) > 1.1
    blocks = [layer for layer in analysis(name, True).layers if layer.op == "SLLBlock"]
    for layer, truth in zip(blocks, truths, strict=True):
        assert truth * SOUND <= layer.bound <= truth * (1 + 1e-5)


def test_closed_form_agrees_with_vertex_enumeration() -> None:
    """The ground truth's closed form against enumerating L in {0, 1}^n (tiny layers)."""
    torch.manual_seed(4)
    for scale in (1.0, 1.8):
        dense = SLLLinear(6, 8, t_scale=scale)
        factor = sll_factor(dense, (6,))
        assert sll_constant_closed_form(factor) == pytest.approx(
            sll_constant_by_vertices(factor), rel=1e-9
        )
        conv = SLLConv(2, 2, t_scale=scale)
        factor = sll_factor(conv, (2, 2, 2))
        assert sll_constant_closed_form(factor) == pytest.approx(
            sll_constant_by_vertices(factor), rel=1e-9
        )


# --- look-alikes ------------------------------------------------------------------------------

LOOK_ALIKES = {
    "other_weight": {"other": True},
    "negative_d": {"negative_unit": True},
    "leaky_negative_slope": {"activation": nn.LeakyReLU(-0.5)},
    "leaky_slope_two": {"activation": nn.LeakyReLU(2.0)},
}


@pytest.mark.parametrize("dense", [False, True], ids=["conv", "dense"])
@pytest.mark.parametrize("look", list(LOOK_ALIKES), ids=list(LOOK_ALIKES))
def test_look_alikes_get_no_sll_bound(look: str, dense: bool) -> None:
    build = sll_dense_net if dense else sll_conv_net
    net = build(seed=2, **LOOK_ALIKES[look])
    for dynamo in (False, True):
        found = analyse(load_graph(export(net, dynamo)))
        assert "SLLBlock" not in {layer.op for layer in found.layers}
        # op by op the bound stays sound
        assert found.spec.lipschitz_bound >= largest_jacobian_norm(net, IMAGE, points=6) * SOUND


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_n_activation_on_channels_is_one_lipschitz(dynamo: bool) -> None:
    found = analyse(load_graph(export(n_activation_net(seed=3, conv=True), dynamo)))
    layers = [layer for layer in found.layers if layer.op == "PiecewiseLinear"]
    assert len(layers) == 1 and layers[0].bound == pytest.approx(1.0, rel=1e-12)


class _LeakyWhere(nn.Module):
    """where(x > 0, x, 0.3 x): a leaky ReLU (continuous, slope 1) and its jumping variant."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, 0.3 * x + self.shift)


def test_continuity_is_checked_exactly() -> None:
    """A shift of 2^-20 makes the select jump: no longer fused, refused."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 4), _LeakyWhere(0.0), nn.Linear(4, 2)).eval()
    found = analyse(load_graph(export(net, False)))
    layer = next(layer for layer in found.layers if layer.op == "PiecewiseLinear")
    assert layer.bound == pytest.approx(1.0, rel=1e-12)
    net[2].shift = 2.0**-20
    with pytest.raises(UnsupportedOpError, match=r"has op '(Greater|Where)'"):
        analyse(load_graph(export(net, False)))


def test_tanh_is_slope_restricted() -> None:
    net = sll_dense_net(seed=2, activation=nn.Tanh())
    found = analyse(load_graph(export(net, False)))
    assert [layer.op for layer in found.layers].count("SLLBlock") == 2


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_select_that_jumps_is_refused_naming_the_node(dynamo: bool) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 4), Jump(), nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedOpError, match=r"node '.*' has op '(Greater|Where)'"):
        analyse(load_graph(export(net, dynamo)))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_householder_activation_is_fused(dynamo: bool) -> None:
    """Bounded as the exact reflection, its float32 constants' jump in the allowance
    (lipcert.graph.householder; tests/architectures/test_householder.py)."""
    from nonlinear_zoo import HouseHolder

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 4), HouseHolder(4), nn.Linear(4, 2)).eval()
    ops = [layer.op for layer in analyse(load_graph(export(net, dynamo))).layers]
    assert "Householder" in ops and not {"Greater", "LessOrEqual"} & set(ops)


def test_sandwich_without_multiplier_is_left_as_layers() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(32, 6), nn.ReLU(), nn.Linear(6, 5), nn.Linear(5, 3)
    ).eval()
    found = analyse(load_graph(export(net, False)))
    assert "SandwichBlock" not in {layer.op for layer in found.layers}


class _SandwichSlopeTwo(SandwichFc):
    """LBDN's layer with a LeakyReLU of slope 2 below zero: the LipSDP sector does not hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fout = self.weight.shape[0]
        if self.Q is None:
            with torch.no_grad():
                self.Q = cayley(self.alpha * self.weight / self.weight.norm())
        q = self.Q.to(x.dtype)
        x = F.linear(x, q[:, fout:]) * torch.exp(-self.psi) * (2**0.5) + self.bias
        x = F.leaky_relu(x, 2.0) * torch.exp(self.psi)
        return 2**0.5 * F.linear(x, q[:, :fout].T)


def test_sandwich_with_a_slope_above_one_gets_no_sandwich_bound() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), _SandwichSlopeTwo(32, 10), nn.Linear(10, 3)).eval()
    net(torch.zeros(1, *IMAGE))
    for dynamo in (False, True):
        found = analyse(load_graph(export(net, dynamo)))
        assert "SandwichBlock" not in {layer.op for layer in found.layers}
        assert found.spec.lipschitz_bound >= largest_jacobian_norm(net, IMAGE, points=6) * SOUND


# --- the LipSDP certificate on its own ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_lipsdp_is_sound_on_random_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    first = rng.normal(size=(7, 5))
    second = rng.normal(size=(4, 7))
    bound, _ = lipsdp_bound(first, second)
    truth = sandwich_constant_by_vertices(first, second)
    assert bound >= truth * (1 - 1e-12)
    product = np.linalg.norm(first, 2) * np.linalg.norm(second, 2)
    assert bound <= product * (1 + 1e-9)


def test_lipsdp_certifies_the_sandwich_structure_at_one() -> None:
    """[A B] with orthonormal rows, Psi arbitrary: sqrt2 A^T Psi . sqrt2 Psi^-1 B is 1-Lipschitz."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(14, 6)))
    rows = q.T  # 6 x 14, orthonormal rows
    a, b = rows[:, :6], rows[:, 6:]
    psi = np.exp(rng.normal(size=6))
    first = np.sqrt(2) * b / psi[:, None]
    second = np.sqrt(2) * a.T * psi[None, :]
    bound, _ = lipsdp_bound(first, second, hint=psi**2)
    assert 1.0 - 1e-12 <= bound <= 1.0 + 1e-9
    assert sandwich_constant_by_vertices(first, second) <= bound


# --- ScatterND --------------------------------------------------------------------------------


def scatter_model(
    indices: np.ndarray, data_shape: tuple[int, ...], **attrs: object
) -> onnx.ModelProto:
    """y = ScatterND(zeros(data_shape), indices, Relu(x)) with x shaped as the updates."""
    updates_shape = list(indices.shape[:-1]) + list(data_shape[indices.shape[-1] :])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ScatterND", ["data", "indices", "r"], ["y"], name="scatter", **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "scatter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, updates_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(data_shape))],
        [
            numpy_helper.from_array(np.zeros(data_shape, dtype=np.float32), "data"),
            numpy_helper.from_array(indices.astype(np.int64), "indices"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_scatter_of_channels_into_zeros_is_an_isometry() -> None:
    indices = np.array([[[0, 0], [0, 2]]])  # (1, 2, 2): sample 0, channels 0 and 2
    found = analyse(load_graph(scatter_model(indices, (1, 4, 3))))
    layer = next(layer for layer in found.layers if layer.op == "ScatterND")
    assert layer.bound == 1.0 and layer.exact


def test_scatter_with_repeated_indices_is_refused() -> None:
    indices = np.array([[[0, 1], [0, 1]]])
    with pytest.raises(UnsupportedOpError, match=r"'scatter'.*repeated indices"):
        analyse(load_graph(scatter_model(indices, (1, 4, 3))))


def test_scatter_with_mul_reduction_scales_by_the_data() -> None:
    indices = np.array([[[0, 1], [0, 3]]])
    model = scatter_model(indices, (1, 4, 3), reduction="mul")
    data = np.arange(12, dtype=np.float32).reshape(1, 4, 3) - 5
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(data, "data"))
    found = analyse(load_graph(model))
    layer = next(layer for layer in found.layers if layer.op == "ScatterND")
    assert layer.bound == pytest.approx(max(abs(data[0, 1]).max(), abs(data[0, 3]).max()))


def test_scatter_moving_elements_between_samples_is_refused() -> None:
    """With a fixed batch of 2, an update of sample 0 written into sample 1."""
    indices = np.array([[[1, 0]], [[0, 1]]])  # (2, 1, 2): sample 0 -> slot (1, 0)
    model = scatter_model(indices, (2, 2, 3))
    with pytest.raises(UnsupportedOpError, match="samples of a batch"):
        analyse(load_graph(model))


def test_dynamo_batch_of_the_zoo_is_fixed() -> None:
    assert analysis("sll_conv", True).graph.batch_size == FIXED_BATCH


# --- the bounds of the conv SLL block on their own -----------------------------------------------

CONV_GEOMETRIES = [
    pytest.param(1, 1, 1, 1, id="3x3_pad1"),
    pytest.param(2, 1, 1, 1, id="stride2"),
    pytest.param(1, 2, 2, 1, id="dilation2"),
    pytest.param(1, 1, 0, 2, id="groups2_valid"),
]


@pytest.mark.parametrize(("stride", "dilation", "padding", "groups"), CONV_GEOMETRIES)
def test_conv_gram_row_bound_holds_against_the_explicit_operator(
    stride: int, dilation: int, padding: int, groups: int
) -> None:
    from lipcert.bounds.rules.blocks import conv_gram_row_bound

    rng = np.random.default_rng(stride + 3 * dilation + 7 * groups)
    kernel = rng.normal(size=(4, 4 // groups, 3, 3))
    diagonal = rng.uniform(0.1, 2.0, size=4)
    weight = torch.as_tensor(kernel)
    for size in (3, 5, 8):
        x = torch.zeros(1, 4, size, size, dtype=torch.float64)
        matrix = (
            torch.autograd.functional.jacobian(
                lambda v: torch.nn.functional.conv2d(
                    v, weight, stride=stride, padding=padding, dilation=dilation, groups=groups
                ).reshape(-1),
                x,
            )
            .reshape(-1, x.numel())
            .numpy()
        )
        units = matrix.shape[0] // 4
        scaled = np.repeat(np.sqrt(diagonal), units)[:, None] * matrix
        exact = float(np.linalg.norm(scaled, 2)) ** 2
        assert conv_gram_row_bound(kernel, diagonal, (dilation, dilation), groups) >= exact


def test_conv_matrix_matches_torch() -> None:
    from lipcert.bounds.rules.blocks import conv_matrix
    from lipcert.graph.geometry import Window

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 2, 3, 3))
    win = Window(
        kernel=(3, 3), strides=(2, 1), dilations=(1, 2), pads_begin=(1, 2), pads_end=(0, 2)
    )
    x = torch.zeros(1, 4, 5, 6, dtype=torch.float64)
    weight = torch.as_tensor(kernel)

    def reference(v: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(v, (2, 2, 1, 0))
        out = torch.nn.functional.conv2d(padded, weight, stride=(2, 1), dilation=(1, 2), groups=2)
        return out.reshape(-1)

    expected = torch.autograd.functional.jacobian(reference, x).reshape(-1, x.numel()).numpy()
    assert np.array_equal(conv_matrix(kernel, (5, 6), win, 2), expected)


class _ConvSandwich(nn.Module):
    """W2 post relu(pre W1 x + b) with 3x3 convs, per-channel multipliers (2x2 maps)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.first = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.second = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.pre = nn.Parameter(torch.rand(1, 2, 1, 1) + 0.5)
        self.post = nn.Parameter(torch.rand(1, 2, 1, 1) + 0.5)
        self.bias = nn.Parameter(torch.randn(1, 2, 1, 1) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.first(x) * self.pre + self.bias) * self.post
        return self.second(hidden)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_conv_sandwich_is_certified_on_its_explicit_matrices(dynamo: bool) -> None:
    from nonlinear_zoo import conv_operator

    net = nn.Sequential(_ConvSandwich(), nn.Flatten(), nn.Linear(12, 2)).eval()
    found = analyse(load_graph(export(net, dynamo, shape=(2, 2, 2))))
    (layer,) = [layer for layer in found.layers if layer.op == "SandwichBlock"]
    block = net[0]
    first = conv_operator(block.first.weight, (2, 2, 2), 1)
    pre = np.repeat(block.pre.detach().double().numpy().reshape(-1), 4)
    post = np.repeat(block.post.detach().double().numpy().reshape(-1), 4)
    second = conv_operator(block.second.weight, (2, 2, 2), 1)
    truth = sandwich_constant_by_vertices(pre[:, None] * first, second * post[None, :])
    product = np.linalg.norm(pre[:, None] * first, 2) * np.linalg.norm(second * post, 2)
    assert truth * SOUND <= layer.bound <= product * (1 + 1e-9)


class _SelectOfThree(nn.Module):
    """where(a > b, a, c) with c != b: Max's shape, but it jumps where a = b and c != b."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.c = nn.Linear(32, 4), nn.Linear(32, 4), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        a, b = self.a(x), self.b(x)
        return torch.where(a > b, a, self.c(x))


class _SelectNotSwapped(nn.Module):
    """cat(where(a > b, a, b), where(a > b, a, b)): two Max halves, not a MinMax pair."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :2], x[:, 2:]
        high = torch.where(a > b, a, b)
        return torch.cat([high, torch.where(a > b, a, b) * 1.0], dim=1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_a_select_of_a_third_branch_is_not_a_max(dynamo: bool) -> None:
    net = nn.Sequential(_SelectOfThree(), nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedOpError, match=r"node '.*' has op '(Greater|Where)'"):
        analyse(load_graph(export(net, dynamo)))


def test_unswapped_selects_are_not_a_groupsort() -> None:
    """Each half is a Max (1-Lipschitz); the pair must not be read as one MinMax (bound 1):
    the concatenation of the same Max twice has constant sqrt(2)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 4), _SelectNotSwapped(), nn.Linear(4, 2))
    found = analyse(load_graph(export(net.eval(), False)))
    assert "GroupSort" not in [layer.op for layer in found.layers]
