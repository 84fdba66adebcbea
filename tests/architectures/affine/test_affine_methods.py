"""The methods behind affine blocks, each against ground truth, and the look-alikes that must
not get them.

The probed matrix makes every small block exact, so the tests of the other methods (the
polynomial of a skew-symmetric conv, the identity folded into a kernel) turn probing off, as
a block too large to probe would.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from affine_zoo import SOC, LiResBlock, MaxMin, dense_matrix, exact_norm, export
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lipcert.bounds import affine_operator
from lipcert.bounds.affine_operator import skew_polynomial_bound
from lipcert.bounds.compose import Analysis, analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

SOUND = 1 - 1e-6


def analysis_of(model: onnx.ModelProto) -> Analysis:
    return analyse(load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph)


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(affine_operator, "PROBE_MAX_ENTRIES", 0)


def block_rows(analysis: Analysis) -> list[tuple[str, str]]:
    return [(layer.op, layer.method) for layer in analysis.layers]


def taylor(terms: int) -> np.ndarray:
    return np.array([1.0 / np.prod(np.arange(1, k + 1)) for k in range(terms + 1)])


# --- the polynomial of a skew-symmetric operator -----------------------------------------------


def _skew(n: int, norm: float, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, n))
    s = a - a.T
    return s * (norm / np.linalg.norm(s, 2))


def _poly(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    result = np.zeros_like(a)
    power = np.eye(len(a))
    for ck in c:
        result = result + ck * power
        power = power @ a
    return result


@pytest.mark.parametrize("norm", [0.3, 1.0, 2.5, 6.0])
@pytest.mark.parametrize("terms", [2, 6, 12])
def test_skew_polynomial_bound_holds_and_is_the_maximum_on_the_imaginary_axis(
    norm: float, terms: int
) -> None:
    c = taylor(terms)
    s = _skew(10, norm, seed=terms)
    exact = np.linalg.norm(_poly(c, s), 2)
    bound = skew_polynomial_bound(c, norm)
    assert bound >= exact * (1 - 1e-12)
    t = np.linspace(-norm, norm, 200001)
    on_axis = np.abs(np.polynomial.polynomial.polyval(1j * t, c)).max()
    assert bound <= on_axis * (1 + 1e-6)


def test_a_truncated_exponential_of_a_small_skew_matrix_is_orthogonal_within_its_truncation() -> (
    None
):
    # SOC's claim: 12 terms of exp(S) with ||S|| <= 1 are orthogonal up to 1/13!.
    bound = skew_polynomial_bound(taylor(12), 1.0)
    assert 1.0 <= bound <= 1 + 1e-9


@pytest.mark.parametrize("epsilon", [1e-4, 1e-2, 0.3])
def test_skew_polynomial_bound_covers_a_symmetric_perturbation(epsilon: float) -> None:
    c = taylor(8)
    s = _skew(8, 1.5, seed=1)
    e = np.random.default_rng(2).standard_normal((8, 8))
    e = (e + e.T) * (epsilon / np.linalg.norm(e + e.T, 2))
    exact = np.linalg.norm(_poly(c, s + e), 2)
    assert skew_polynomial_bound(c, 1.5, epsilon) >= exact * (1 - 1e-12)


# --- SOC: skew kernels get the method, other kernels do not -------------------------------------


def _soc_with_kernel(kernel: torch.Tensor, circular: bool = False) -> SOC:
    module = SOC(4, 3, 40, circular=circular)
    with torch.no_grad():
        module.weight.copy_(kernel)
    return module.eval()


@pytest.mark.parametrize("circular", [False, True], ids=["zero_padding", "circular"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_soc_too_large_to_probe_gets_the_skew_polynomial_bound(
    no_probe: None, circular: bool, dynamo: bool
) -> None:
    module = SOC(4, 3, 41, circular=circular).eval()
    analysis = analysis_of(export(module, (4, 6, 6), dynamo))
    ((op, method),) = block_rows(analysis)
    # With circular padding the (exact) symbols may come out a few ulps below.
    assert op == "AffineBlock" and ("skew" in method or (circular and "symbols" in method))
    truth = exact_norm(module, (4, 6, 6))
    assert truth * SOUND <= analysis.spec.lipschitz_bound <= 1.05 * truth


def test_soc_look_alike_with_a_kernel_that_is_not_skew_gets_no_skew_bound(no_probe: None) -> None:
    kernel = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(3)) * 0.15
    module = _soc_with_kernel(kernel)
    analysis = analysis_of(export(module, (4, 6, 6), dynamo=False))
    ((op, method),) = block_rows(analysis)
    assert op == "AffineBlock" and "skew" not in method
    assert analysis.spec.lipschitz_bound >= exact_norm(module, (4, 6, 6)) * SOUND


def test_soc_look_alike_whose_kernel_is_almost_skew_is_still_bounded_soundly(
    no_probe: None,
) -> None:
    # A symmetric part of 1e-3 of the skew part: beyond the tolerance, no skew method; the
    # bound must still hold (it does for any kernel: the perturbation term is added).
    skew = SOC(4, 3, 42).weight.detach()
    noise = torch.randn(4, 4, 3, 3, generator=torch.Generator().manual_seed(4))
    symmetric = noise + torch.flip(noise.transpose(0, 1), [2, 3])
    kernel = skew + 1e-3 * symmetric * (skew.norm() / symmetric.norm())
    module = _soc_with_kernel(kernel)
    analysis = analysis_of(export(module, (4, 6, 6), dynamo=False))
    assert "skew" not in analysis.layers[0].method
    assert analysis.spec.lipschitz_bound >= exact_norm(module, (4, 6, 6)) * SOUND


def test_a_conv_series_with_two_different_kernels_is_not_a_polynomial(no_probe: None) -> None:
    class TwoKernels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = SOC(4, 3, 43).weight
            self.b = SOC(4, 3, 44).weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + F.conv2d(F.conv2d(x, self.a, padding=1), self.b, padding=1) / 2

    module = TwoKernels().eval()
    analysis = analysis_of(export(module, (4, 6, 6), dynamo=False))
    ((op, method),) = block_rows(analysis)
    assert op == "AffineBlock" and method.startswith("product")
    assert analysis.spec.lipschitz_bound >= exact_norm(module, (4, 6, 6)) * SOUND


def test_skew_kernel_with_even_size_and_one_sided_padding_gets_no_skew_bound(
    no_probe: None,
) -> None:
    # A 2x2 kernel equal to minus its flipped transpose, padded (0, 1): the operator is not
    # skew-symmetric (its adjoint pads the other side).
    v = np.random.default_rng(5).standard_normal((2, 2, 2, 2))
    kernel = 0.2 * (v - np.flip(v.transpose(1, 0, 2, 3), axis=(2, 3)))
    nodes = [helper.make_node("Conv", ["x", "k"], ["h1"], pads=[0, 0, 1, 1])]
    nodes.append(helper.make_node("Conv", ["h1", "k"], ["h2"], pads=[0, 0, 1, 1]))
    nodes.append(helper.make_node("Mul", ["h2", "half"], ["h3"]))
    nodes.append(helper.make_node("Add", ["x", "h1"], ["s"]))
    nodes.append(helper.make_node("Add", ["s", "h3"], ["y"]))
    model = _model(nodes, (2, 5, 5), {"k": kernel, "half": np.array(0.5)})
    analysis = analysis_of(model)
    ((op, method),) = block_rows(analysis)
    assert op == "AffineBlock" and "skew" not in method
    truth = _onnx_norm(model, (2, 5, 5))
    assert analysis.spec.lipschitz_bound >= truth * SOUND


# --- the identity folded into the kernel ------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_liresnet_block_too_large_to_probe_is_one_folded_conv(no_probe: None, dynamo: bool) -> None:
    module = LiResBlock(4, 3, 45).eval()
    analysis = analysis_of(export(module, (4, 8, 8), dynamo))
    ((op, method),) = block_rows(analysis)
    assert op == "AffineBlock" and "folded" in method
    truth = exact_norm(module, (4, 8, 8))
    # Op by op it would be 1 + ||conv||; folded, within the zero-padding FFT bound's slack.
    assert truth * SOUND <= analysis.spec.lipschitz_bound <= 1.05 * truth


def test_residual_whose_branch_is_not_affine_is_no_block() -> None:
    class ReluBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = LiResBlock(4, 3, 46)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.relu(F.conv2d(x, self.block.weight, padding=1))

    module = ReluBranch().eval()
    analysis = analysis_of(export(module, (4, 6, 6), dynamo=False))
    assert "AffineBlock" not in [op for op, _ in block_rows(analysis)]
    conv = next(layer for layer in analysis.layers if layer.op == "Conv")
    assert analysis.spec.lipschitz_bound == pytest.approx(1 + conv.bound, rel=1e-12)


# --- circular padding written as Slice + Concat -----------------------------------------------


def _model(
    nodes: list[onnx.NodeProto], shape: tuple[int, ...], constants: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(
                np.asarray(v, dtype=np.int64 if np.asarray(v).dtype.kind == "i" else np.float32), k
            )
            for k, v in constants.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    model.graph.output[0].CopyFrom(inferred.graph.output[0])
    return model


def _onnx_norm(model: onnx.ModelProto, shape: tuple[int, ...]) -> float:
    """Largest singular value of the model's matrix, probed with onnxruntime (affine models)."""
    session = ort.InferenceSession(model.SerializeToString())
    n = int(np.prod(shape))
    basis = np.eye(n, dtype=np.float32).reshape(n, *shape)
    (at_basis,) = session.run(None, {"x": basis})
    (at_zero,) = session.run(None, {"x": np.zeros((1, *shape), np.float32)})
    matrix = (at_basis - at_zero).reshape(n, -1).T.astype(np.float64)
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _wrap_nodes(first: tuple[int, int], last: tuple[int, int]) -> list[onnx.NodeProto]:
    """Concat(x[last], x, x[first]) on axis 3, then a 3-wide conv (1 x 3 kernel)."""
    return [
        helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["before"]),
        helper.make_node("Slice", ["x", "s1", "e1", "ax"], ["after"]),
        helper.make_node("Concat", ["before", "x", "after"], ["wrapped"], axis=3),
        helper.make_node("Conv", ["wrapped", "k"], ["y"]),
    ]


def _wrap_constants(first: tuple[int, int], last: tuple[int, int]) -> dict[str, np.ndarray]:
    kernel = np.random.default_rng(6).standard_normal((2, 2, 1, 3))
    return {
        "k": kernel,
        "s0": np.array([last[0]]),
        "e0": np.array([last[1]]),
        "s1": np.array([first[0]]),
        "e1": np.array([first[1]]),
        "ax": np.array([3]),
    }


@pytest.mark.parametrize(
    ("last", "first", "circular"),
    [
        pytest.param((-1, 2**62), (0, 1), True, id="wrap"),
        pytest.param((4, 5), (0, 1), True, id="wrap_positive_indices"),
        pytest.param((1, 2), (0, 1), False, id="wrong_offset_before"),
        pytest.param((-1, 2**62), (1, 2), False, id="wrong_offset_after"),
        pytest.param((-2, -1), (0, 1), False, id="second_to_last"),
    ],
)
def test_sliced_padding_is_circular_only_with_the_right_offsets(
    last: tuple[int, int], first: tuple[int, int], circular: bool
) -> None:
    model = _model(_wrap_nodes(first, last), (2, 3, 5), _wrap_constants(first, last))
    analysis = analysis_of(model)
    truth = _onnx_norm(model, (2, 3, 5))
    assert ("CircularConv" in [op for op, _ in block_rows(analysis)]) == circular
    assert analysis.spec.lipschitz_bound >= truth * (1 - 1e-5)
    if circular:
        assert analysis.spec.lipschitz_bound <= truth * (1 + 1e-5)


def test_sliced_padding_whose_wrapped_tensor_is_used_elsewhere_is_not_fused() -> None:
    first, last = (0, 1), (-1, 2**62)
    nodes = _wrap_nodes(first, last)
    nodes[-1] = helper.make_node("Conv", ["wrapped", "k"], ["c"])
    nodes.append(helper.make_node("Relu", ["wrapped"], ["r"]))
    nodes.append(helper.make_node("Concat", ["c", "r"], ["y"], axis=3))
    model = _model(nodes, (2, 3, 5), _wrap_constants(first, last))
    assert "CircularConv" not in [op for op, _ in block_rows(analysis_of(model))]


# --- the rounding allowance of a fused block holds -----------------------------------------------


def test_float32_error_of_a_soc_network_is_within_its_allowance() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.soc = SOC(4, 3, 47)
            self.act = MaxMin(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.soc(x)).flatten(1)

    module = Net().eval()
    model = export(module, (4, 6, 6), dynamo=False)
    spec = analysis_of(model).spec
    session = ort.InferenceSession(model.SerializeToString())
    x = np.random.default_rng(7).random((16, 4, 6, 6)).astype(np.float32)
    (computed,) = session.run(None, {"x": x})
    with torch.no_grad():
        exact = module.double()(torch.as_tensor(x, dtype=torch.float64)).numpy()
    errors = np.linalg.norm(computed.reshape(16, -1) - exact.reshape(16, -1), axis=1)
    allowance = spec.fp_allowance(np.linalg.norm(x.reshape(16, -1), axis=1))
    assert np.all(errors <= allowance), (errors.max(), allowance.min())
    # ... and is not absurdly loose (a fused block's allowance is op by op inside it).
    assert allowance.max() < 1e-2


def test_probe_matches_onnxruntime_on_a_fourier_layer() -> None:
    from affine_zoo import FourierLayer, lot_symbol

    module = FourierLayer(lot_symbol(2, 4, 8)).eval()
    model = export(module, (2, 4, 4), dynamo=True)
    analysis = analysis_of(model)
    truth = _onnx_norm_any_input(model, (2, 4, 4))
    assert analysis.spec.lipschitz_bound == pytest.approx(truth, rel=1e-5)
    assert np.allclose(dense_matrix(module, (2, 4, 4)).shape, (32, 32))


def _onnx_norm_any_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> float:
    """As _onnx_norm, one unit vector at a time (a dynamo export fixes the batch size)."""
    session = ort.InferenceSession(model.SerializeToString())
    name = session.get_inputs()[0].name
    n = int(np.prod(shape))
    zero = session.run(None, {name: np.zeros((1, *shape), np.float32)})[0].reshape(-1)
    columns = []
    for j in range(n):
        e = np.zeros(n, np.float32)
        e[j] = 1
        columns.append(session.run(None, {name: e.reshape(1, *shape)})[0].reshape(-1) - zero)
    return float(np.linalg.svd(np.array(columns, dtype=np.float64).T, compute_uv=False)[0])


# --- per-frequency symbols of circular convolutions -------------------------------------------


class CircularResidualPair(nn.Module):
    """x + c2(s * c1(x)) with two different circular kernels and a per-channel scale: neither
    a polynomial of one conv nor skew; exact through the symbols."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(9)
        self.c1 = nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")
        self.c2 = nn.Conv2d(6, 4, 3, padding=1, padding_mode="circular", bias=False)
        with torch.no_grad():
            for conv in (self.c1, self.c2):
                conv.weight.copy_(0.2 * torch.randn(conv.weight.shape, generator=g))
        self.scale = nn.Parameter(torch.rand(1, 6, 1, 1, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(self.scale * self.c1(x))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_circular_convs_too_large_to_probe_are_exact_through_their_symbols(
    no_probe: None, dynamo: bool
) -> None:
    module = CircularResidualPair().eval()
    analysis = analysis_of(export(module, (4, 6, 5), dynamo))
    ((op, method),) = block_rows(analysis)
    assert op == "AffineBlock" and "symbols" in method
    truth = exact_norm(module, (4, 6, 5))
    assert truth * SOUND <= analysis.spec.lipschitz_bound <= truth * (1 + 1e-6)
    assert analysis.layers[0].exact


def test_soc_with_circular_padding_gets_the_exact_symbol_bound_too(no_probe: None) -> None:
    module = SOC(4, 3, 48, circular=True).eval()
    model = export(module, (4, 6, 6), dynamo=False)
    graph = load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph
    from lipcert.graph.patterns import fuse_patterns

    fuse_patterns(graph)
    (block,) = [n for n in graph.nodes if n.op == "AffineBlock"]
    candidate = affine_operator.circular_symbol_bound(block, graph)
    assert candidate is not None
    truth = exact_norm(module, (4, 6, 6))
    assert truth * SOUND <= candidate.factor <= truth * (1 + 1e-9)


def test_zero_padded_convs_get_no_symbol_bound(no_probe: None) -> None:
    module = LiResBlock(4, 3, 49).eval()
    model = export(module, (4, 6, 6), dynamo=False)
    graph = load_from_proto(model, LoadOptions(), source="test", fmt="onnx").graph
    from lipcert.graph.patterns import fuse_patterns

    fuse_patterns(graph)
    (block,) = [n for n in graph.nodes if n.op == "AffineBlock"]
    assert affine_operator.circular_symbol_bound(block, graph) is None
