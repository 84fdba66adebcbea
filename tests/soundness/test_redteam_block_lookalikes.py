"""Look-alikes of the blocks that are 1-Lipschitz only as a whole (SLL/CPL, Sandwich, BN folds).

Each model computes almost the graph of a real block, with one change the block's proof does
not allow; lipcert must either refuse it or give a bound at least its true constant. The real
block next to it keeps its tight bound.

Ground truth: onnxruntime's Jacobian of the ONNX file itself, by central differences at a
point where every ReLU is active with a wide margin (large biases): the model is affine
around it, so the differences are exact up to float32 rounding (far below the gaps tested,
which are 40 % to 50x). Its largest singular value by numpy's SVD.

Holes found here (each test fails with its fix undone):
- a block's op reading a data tensor the matcher never looked at (a Gemm's C computed from x,
  in an SLL block, a Sandwich block or a Gemm + BatchNormalization fold): the fused node
  bounded the block as a function of its one input and the other data path was dropped
  (bound 1.0 for a 49.5-Lipschitz model), also as both torch exporters write
  x - torch.addmm(k x, h, W^T); lipcert.graph.patterns.reads_only_its_inputs;
- an SLL block whose second op is a Conv with the flipped kernel: the mirrored padding of an
  asymmetric first conv was taken with begin and end swapped (same output size, but the
  adjoint shifted): bound 3.68 for a 5.31-Lipschitz block, while the true adjoint was left
  to the product of the layers;
- a BatchNormalization folded into a Gemm under the name the file gives another layer's
  weight ('g1/batchnorm_folded_weight'): that layer was bounded with the folded weight (2.0
  for a 101-Lipschitz model); lipcert.graph.ir.Graph.fresh_name.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from user_export import export_like_users

from lipcert.bounds.compose import Analysis, analyse
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

N, H = 6, 4
SOUND = 1 - 1e-4  # central differences in float32 at an affine point


def _model(
    nodes: list[onnx.NodeProto], arrays: dict[str, np.ndarray], shape: tuple[int, ...]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "lookalike",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, *shape])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _true_constant(model: onnx.ModelProto, shape: tuple[int, ...], step: float = 0.05) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = int(np.prod(shape))
    columns = []
    for i in range(size):
        delta = np.zeros(size, dtype=np.float32)
        delta[i] = step
        up, down = (
            session.run(None, {"x": (sign * delta).reshape(1, *shape)})[0].astype(np.float64)
            for sign in (1.0, -1.0)
        )
        columns.append((up - down).reshape(-1) / (2 * step))
    return float(np.linalg.norm(np.stack(columns, axis=1), 2))


def _analysis(model: onnx.ModelProto, shape: tuple[int, ...]) -> Analysis:
    loaded = load_from_proto(model, LoadOptions(input_shape=shape), source="m", fmt="onnx")
    return analyse(loaded.graph)


def _bound_or_refused(model: onnx.ModelProto, shape: tuple[int, ...]) -> float | None:
    try:
        return _analysis(model, shape).spec.lipschitz_bound
    except UnsupportedOpError:
        return None


def _block_ops(model: onnx.ModelProto, shape: tuple[int, ...]) -> list[str]:
    return [node.op for node in _analysis(model, shape).graph.nodes]


# --- a data tensor entering a block through an input its matcher did not read ----------------


def _dense_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(N, H)))
    return {
        "w": q * np.array([1.0, 0.9, 0.7, 0.5]),  # SLL: W with ||W|| = 1
        "w1": 0.3 * rng.normal(size=(N, H)),  # Sandwich: x W1 (operator W1^T)
        "w2": 0.3 * rng.normal(size=(H, N)),
        "w3": np.full((H, N), 0.1),
        "b": np.full(H, 10.0),  # keeps every unit active near x = 0
        "d": np.full((1, H), 0.5),
        "p": 50 * np.eye(N, H),  # x -> 50 x[:H]: the data bias
        "k": np.array(50.0),
        "gamma": np.ones(H),
        "beta": np.ones(H),
        "mean": np.zeros(H),
        "var": np.ones(H),
    }


def _sll(data_bias: str | None) -> onnx.ModelProto:
    """y = x - Gemm(0.5 relu(Gemm(x, W, b)), W^T, C2): SLL with ||W D^1/2||^2 = 0.5, or a
    look-alike whose first (C1 = 50 x[:H]) or second (C2 = 50 x) Gemm adds a data bias."""
    nodes = [
        helper.make_node("MatMul", ["x", "p"], ["c1"]),
        helper.make_node("Mul", ["x", "k"], ["c2"]),
        helper.make_node("Gemm", ["x", "w", "c1" if data_bias == "first" else "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Mul", ["a", "d"], ["h"]),
        helper.make_node(
            "Gemm", ["h", "w", *(["c2"] if data_bias == "second" else [])], ["t"], transB=1
        ),
        helper.make_node("Sub", ["x", "t"], ["y"]),
    ]
    return _model(nodes, _dense_weights(), (N,))


def _sandwich(data_bias: bool) -> onnx.ModelProto:
    """Gemm(0.5 relu(Gemm(x, W1, b)), W2): an LBDN-style sandwich, or with C1 = 50 x[:H]."""
    nodes = [
        helper.make_node("MatMul", ["x", "p"], ["c1"]),
        helper.make_node("Gemm", ["x", "w1", "c1" if data_bias else "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["a"]),
        helper.make_node("Mul", ["a", "d"], ["h"]),
        helper.make_node("Gemm", ["h", "w2"], ["y"]),
    ]
    return _model(nodes, _dense_weights(), (N,))


def _batchnorm_fold(data_bias: bool) -> onnx.ModelProto:
    """Gemm(relu(BN(Gemm(x, W1, C))), W3): the BN folds into the first Gemm's weight."""
    nodes = [
        helper.make_node("MatMul", ["x", "p"], ["c1"]),
        helper.make_node("Gemm", ["x", "w1", "c1" if data_bias else "b"], ["z"]),
        helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["a"]),
        helper.make_node("Gemm", ["a", "w3"], ["y"]),
    ]
    return _model(nodes, _dense_weights(), (N,))


DATA_BIAS = {
    "sll_first_gemm": lambda bias: _sll("first" if bias else None),
    "sll_second_gemm": lambda bias: _sll("second" if bias else None),
    "sandwich_first_gemm": _sandwich,
    "batchnorm_fold": _batchnorm_fold,
}
GENUINE_OP = {
    "sll_first_gemm": "SLLBlock",
    "sll_second_gemm": "SLLBlock",
    "sandwich_first_gemm": "SandwichBlock",
    "batchnorm_fold": "Gemm",
}


@pytest.mark.parametrize("family", sorted(DATA_BIAS))
def test_a_data_bias_inside_a_block_is_not_dropped(family: str) -> None:
    lookalike = DATA_BIAS[family](True)
    true = _true_constant(lookalike, (N,))
    bound = _bound_or_refused(lookalike, (N,))
    # Before the fix: 1.0 vs 49.5 (SLL, second Gemm), 1.0 vs 12.6 (first), 0.48 vs 16.0
    # (Sandwich), 0.55 vs 17.1 (the BN fold).
    assert bound is None or bound >= SOUND * true, (bound, true)


@pytest.mark.parametrize("family", sorted(DATA_BIAS))
def test_the_block_with_a_constant_bias_keeps_its_fusion(family: str) -> None:
    genuine = DATA_BIAS[family](False)
    ops = _block_ops(genuine, (N,))
    assert GENUINE_OP[family] in ops, ops
    true = _true_constant(genuine, (N,))
    bound = _analysis(genuine, (N,)).spec.lipschitz_bound
    assert bound >= SOUND * true
    if family.startswith("sll"):
        # max(1, ||W D^1/2||^2 - 1) = 1, attained (x orthogonal to W's columns is kept)
        assert bound <= 1 + 1e-9 and true >= 1 - 1e-4


# --- the SLL adjoint written as a Conv with the flipped kernel --------------------------------

C = 2


def _sll_flipped(
    pads_first: list[int], pads_second: list[int], spatial: tuple[int, ...]
) -> onnx.ModelProto:
    """y = x - Conv(relu(Conv(x, K) + 5), flip(K^T)): the adjoint needs the second conv's
    begin padding e - 1 - pb and end padding e - 1 - pe."""
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(C, C, *(3 for _ in spatial)))
    flipped = np.flip(np.swapaxes(kernel, 0, 1), axis=tuple(range(2, kernel.ndim)))
    nodes = [
        helper.make_node("Conv", ["x", "k1", "b1"], ["z"], pads=pads_first),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("Conv", ["h", "k2"], ["t"], pads=pads_second),
        helper.make_node("Sub", ["x", "t"], ["y"]),
    ]
    arrays = {"k1": kernel, "b1": np.full(C, 5.0), "k2": flipped.copy()}
    return _model(nodes, arrays, (C, *spatial))


FLIPPED = [
    # (pads of the first conv, the adjoint's pads, the swapped look-alike's, spatial size)
    pytest.param([2, 0], [0, 2], [2, 0], (6,), id="1d"),
    pytest.param([2, 0, 0, 1], [0, 2, 2, 1], [2, 1, 0, 2], (4, 5), id="2d"),
]


@pytest.mark.parametrize(("first", "adjoint", "swapped", "spatial"), FLIPPED)
def test_flipped_kernel_conv_needs_the_mirrored_padding(
    first: list[int], adjoint: list[int], swapped: list[int], spatial: tuple[int, ...]
) -> None:
    shape = (C, *spatial)
    lookalike = _sll_flipped(first, swapped, spatial)
    true = _true_constant(lookalike, shape, step=0.01)
    bound = _bound_or_refused(lookalike, shape)
    # Before the fix (1d): 3.68 for a 5.31-Lipschitz block.
    assert bound is None or bound >= SOUND * true, (bound, true)
    assert "SLLBlock" not in _block_ops(lookalike, shape)

    genuine = _sll_flipped(first, adjoint, spatial)
    assert "SLLBlock" in _block_ops(genuine, shape)
    true = _true_constant(genuine, shape, step=0.01)
    bound = _analysis(genuine, shape).spec.lipschitz_bound
    assert SOUND * true <= bound <= 1.001 * true, (bound, true)


def _sll_transposed(pads_first: list[int], pads_second: list[int]) -> onnx.ModelProto:
    """y = x - ConvTranspose(relu(Conv(x, K) + 5), K), stride 2 with asymmetric pads."""
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(C, C, 3))
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["z0"], pads=pads_first, strides=[2]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node(
            "ConvTranspose", ["h", "k"], ["t"], pads=pads_second, strides=[2], output_padding=[1]
        ),
        helper.make_node("Sub", ["x", "t"], ["y"]),
    ]
    return _model(nodes, {"k": kernel, "b": np.full((1, C, 1), 5.0)}, (C, 7))


def test_transposed_conv_adjoint_with_asymmetric_padding() -> None:
    """ConvTranspose with the Conv's own pads is its adjoint (ONNX defines it so): fused and
    tight; with the pads swapped (same output size) it is not, and is not fused."""
    shape = (C, 7)
    genuine = _sll_transposed([2, 1], [2, 1])
    assert "SLLBlock" in _block_ops(genuine, shape)
    true = _true_constant(genuine, shape, step=0.01)
    bound = _analysis(genuine, shape).spec.lipschitz_bound
    assert SOUND * true <= bound <= 1.001 * true, (bound, true)

    lookalike = _sll_transposed([2, 1], [1, 2])
    assert "SLLBlock" not in _block_ops(lookalike, shape)
    true = _true_constant(lookalike, shape, step=0.01)
    other = _bound_or_refused(lookalike, shape)
    assert other is None or other >= SOUND * true, (other, true)


# --- random geometries: every fused SLL conv pair is a conv and its adjoint ---------------------


def _random_pair(rng: np.random.Generator) -> tuple[onnx.ModelProto, tuple[int, ...], str]:
    """x - Second(relu(Conv(x) + 100)): a random Conv (rank 1 or 2, kernel, dilation, stride,
    asymmetric pads, groups) and, as the second op, a ConvTranspose of the same kernel with
    the same or other pads (and an output padding), or a Conv with the flipped kernel and
    the mirrored, swapped or random pads."""
    rank = int(rng.integers(1, 3))
    k, d, n = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(3, 7))
    extent = (k - 1) * d + 1
    pads = [int(v) for v in rng.integers(0, extent, size=2 * rank)]
    transposed = bool(rng.integers(0, 2))
    if transposed:
        groups = int(rng.choice([1, 2]))
        channels, inner = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        stride = int(rng.integers(1, 3))
    else:
        groups, stride = 1, 1
        channels = inner = int(rng.integers(1, 3))
    kernel = 0.7 * rng.normal(size=(inner, channels // groups, *([k] * rank)))
    if transposed:
        other = kernel
        random_pads = [int(v) for v in rng.integers(0, extent, size=2 * rank)]
        second_pads = pads if rng.integers(0, 2) else random_pads
        attrs: dict[str, Any] = {"strides": [stride] * rank, "group": groups}
        if stride > 1:
            attrs["output_padding"] = [int(v) for v in rng.integers(0, stride, size=rank)]
    else:
        other = np.flip(np.swapaxes(kernel, 0, 1), axis=tuple(range(2, kernel.ndim))).copy()
        begin, end = pads[:rank], pads[rank:]
        second_pads = [
            [extent - 1 - p for p in begin + end],  # the adjoint
            [extent - 1 - p for p in end + begin],  # begin and end swapped
            [int(v) for v in rng.integers(0, extent, size=2 * rank)],
        ][int(rng.integers(0, 3))]
        attrs = {}
    geometry: dict[str, Any] = {"dilations": [d] * rank}
    nodes = [
        helper.make_node(
            "Conv",
            ["x", "k1", "b"],
            ["z"],
            pads=pads,
            strides=[stride] * rank,
            group=groups,
            **geometry,
        ),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node(
            "ConvTranspose" if transposed else "Conv",
            ["h", "k2"],
            ["t"],
            pads=second_pads,
            **geometry,
            **attrs,
        ),
        helper.make_node("Sub", ["x", "t"], ["y"]),
    ]
    shape = (channels, *([n] * rank))
    arrays = {"k1": kernel, "b": np.full(inner, 100.0), "k2": other}
    return _model(nodes, arrays, shape), shape, "ConvTranspose" if transposed else "Conv"


def test_random_conv_pairs_fused_as_sll_are_adjoints() -> None:
    """With every unit active (bias 100, steps of 1), the Jacobian is I - W2 W1 exactly, and
    the SLL bound max(1, ||W1||^2 - 1) holds only when W2 = W1^T. Before the fix, 21 of
    262 such models had a fused bound below it (1.0 for 1.99, 1.79 for 3.69)."""
    rng = np.random.default_rng(0)
    fused = {"Conv": 0, "ConvTranspose": 0}
    for _ in range(120):
        model, shape, second = _random_pair(rng)
        try:
            onnx.checker.check_model(model, full_check=True)
            session = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            session.run(None, {"x": np.zeros((1, *shape), dtype=np.float32)})
        except Exception:  # a geometry ONNX or onnxruntime rejects: not a model
            continue
        try:
            analysis = _analysis(model, shape)
        except UnsupportedOpError:
            continue
        if "SLLBlock" not in [node.op for node in analysis.graph.nodes]:
            continue
        fused[second] += 1
        true = _true_constant(model, shape, step=1.0)
        assert analysis.spec.lipschitz_bound >= SOUND * true, (shape, true)
    assert fused["Conv"] >= 10 and fused["ConvTranspose"] >= 10, fused


# --- the same look-alike as torch users write it, through both exporters -----------------------


class _AddmmSLL(torch.nn.Module):
    """x - addmm(k x, 0.5 relu(addmm(b, x, W)), W^T): both exporters write the skip term k x
    as the second Gemm's C (TorchScript and dynamo alike)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        weight = torch.tensor(_dense_weights()["w"], dtype=torch.float32)
        self.w = torch.nn.Parameter(weight)
        self.b = torch.nn.Parameter(torch.full((H,), 10.0))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = 0.5 * torch.relu(torch.addmm(self.b, x, self.w))
        return x - torch.addmm(self.k * x, h, self.w.T)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_exported_addmm_skip_inside_an_sll_block(dynamo: bool) -> None:
    module = _AddmmSLL(50.0).eval()
    model = export_like_users(module, torch.zeros(1, N), dynamo, opset_version=17)
    double = copy.deepcopy(module).double()
    x = torch.zeros(1, N, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: double(v).reshape(-1), x)
    true = float(np.linalg.norm(jacobian.reshape(N, N).numpy(), 2))  # 49.5
    bound = _bound_or_refused(model, (N,))
    # Before the fix: 1.0 from both exporters.
    assert bound is None or bound >= SOUND * true, (bound, true)


# --- Taylor series of one convolution (SOC) and look-alikes: every candidate bound -------------


def _conv_series(rng: np.random.Generator) -> tuple[onnx.ModelProto, tuple[int, ...], Any]:
    """sum_j c_j A^j x for one stride-1 conv A (zero or wrap padding, symmetric or shifted
    pads, dilation, a kernel skew, skew up to 1e-7 or 1e-3, or not), coefficients among
    Taylor's and near them; and the series in float64 (torch, wrap padding by indices)."""
    rank, channels = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    k, d, n = int(rng.choice([1, 2, 3, 5])), int(rng.integers(1, 3)), int(rng.integers(3, 8))
    extent = (k - 1) * d + 1
    kernel = rng.normal(size=(channels, channels, *([k] * rank)))
    skew = (kernel - np.flip(np.swapaxes(kernel, 0, 1), axis=tuple(range(2, kernel.ndim)))) / 2
    kernel = [skew, skew + 1e-7 * rng.normal(size=skew.shape), skew * 1.001, kernel][
        int(rng.integers(0, 4))
    ]
    kernel = (kernel * rng.choice([0.1, 0.5, 1.0])).astype(np.float32)
    if rng.integers(0, 2) and extent % 2:
        pads = [extent // 2] * (2 * rank)
    else:
        begin = [int(v) for v in rng.integers(0, extent, size=rank)]
        pads = begin + [extent - 1 - b for b in begin]
    wrap = bool(rng.integers(0, 3) == 0)
    degree = int(rng.choice([1, 1, 2, 3, 5]))  # degree 1: a (scaled) residual c0 x + c1 A x
    coefficients = [
        float(v) for v in rng.choice([1, -1, 0.5, 2, 1 / 6, 1 / 24, 1.0001], degree + 1)
    ]
    nodes: list[onnx.NodeProto] = []
    arrays: dict[str, np.ndarray] = {"k": kernel}
    current, terms = "x", []
    for j, c in enumerate(coefficients):
        if j:
            source = current
            if wrap:
                arrays[f"p{j}"] = np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]])
                nodes.append(helper.make_node("Pad", [current, f"p{j}"], [f"w{j}"], mode="wrap"))
                source = f"w{j}"
            conv_pads: dict[str, Any] = {} if wrap else {"pads": pads}
            nodes.append(
                helper.make_node(
                    "Conv", [source, "k"], [f"a{j}"], dilations=[d] * rank, **conv_pads
                )
            )
            current = f"a{j}"
        arrays[f"c{j}"] = np.array(c)
        nodes.append(helper.make_node("Mul", [current, f"c{j}"], [f"t{j}"]))
        terms.append(f"t{j}")
    nodes.append(helper.make_node("Sum", terms, ["y"]))
    shape = (channels, *([n] * rank))
    model = _model(nodes, arrays, shape)
    for tensor in model.graph.initializer:  # Pad amounts are int64
        if tensor.name.startswith("p"):
            tensor.CopyFrom(numpy_helper.from_array(np.array(arrays[tensor.name]), tensor.name))
    weight = torch.tensor(kernel, dtype=torch.float64)
    conv = torch.nn.functional.conv1d if rank == 1 else torch.nn.functional.conv2d

    def series(v: torch.Tensor) -> torch.Tensor:
        total, power = float(np.float32(coefficients[0])) * v, v
        for c in coefficients[1:]:
            if wrap:
                for a in range(rank):
                    size = power.shape[2 + a]
                    index = np.arange(-pads[a], size + pads[rank + a]) % size
                    power = torch.index_select(power, 2 + a, torch.tensor(index))
            else:
                flat = [p for a in reversed(range(rank)) for p in (pads[a], pads[rank + a])]
                power = torch.nn.functional.pad(power, flat)
            power = conv(power, weight, dilation=d)
            total = total + float(np.float32(c)) * power
        return total

    return model, shape, series


def test_every_bound_of_a_conv_series_holds() -> None:
    """Each candidate of the AffineBlock rule (product, sum of |c_k| ||A||^k, skew-symmetric
    polynomial, identity folded into the kernel, per-frequency symbols) against the float64
    series' exact norm (its dense matrix, SVD)."""
    from lipcert.bounds import affine_operator as ops

    rng = np.random.default_rng(3)
    seen: dict[str, int] = {}
    for _ in range(60):
        model, shape, series = _conv_series(rng)
        try:
            analysis = _analysis(model, shape)
        except UnsupportedOpError:
            continue
        size = int(np.prod(shape))
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        matrix = series(basis).reshape(size, -1).T.numpy()
        true = float(np.linalg.norm(matrix, 2))
        graph = analysis.graph
        for node in graph.nodes:
            if node.op != "AffineBlock":
                continue
            bounds = ops.body_bounds(node, graph)
            candidates = [ops.product_bound(node, graph, bounds)]
            polynomial = ops.conv_polynomial(node, graph, bounds)
            if polynomial is not None:
                candidates += ops.polynomial_candidates(graph, polynomial)
            symbols = ops.circular_symbol_bound(node, graph)
            if symbols is not None:
                candidates.append(symbols)
            for candidate in candidates:
                key = candidate.method.split(":")[0][:29]
                seen[key] = seen.get(key, 0) + 1
                assert candidate.factor >= (1 - 1e-9) * true, (candidate.method, true)
        assert analysis.spec.lipschitz_bound >= (1 - 1e-9) * true
    assert seen.get("polynomial of a skew-symmetri", 0) >= 10, seen
    assert seen.get("identity folded into the conv", 0) >= 5, seen


# --- dense SLL and Sandwich blocks with activations inside and outside the slope range ----------

# (op, attributes, the smallest and largest slope): the blocks' proofs need slopes in [0, 1].
_ACTIVATIONS: list[tuple[str, dict[str, Any], float, float]] = [
    ("Relu", {}, 0.0, 1.0),
    ("LeakyRelu", {"alpha": 0.3}, 0.3, 1.0),
    ("LeakyRelu", {"alpha": 1.5}, 1.0, 1.5),
    ("LeakyRelu", {"alpha": -0.5}, -0.5, 1.0),
    ("Elu", {"alpha": 2.0}, 0.0, 2.0),
    ("HardSigmoid", {"alpha": 1.5, "beta": 0.5}, 0.0, 1.5),
]


def _dense_block(rng: np.random.Generator, sll: bool) -> tuple[onnx.ModelProto, int, float]:
    """An SLL block x - W D s(W^T x + b) or a sandwich W2 post s(pre W1 x + b) with random
    weights, multipliers of either sign and one activation of _ACTIVATIONS; and its true
    constant: the largest ||J|| over the vertices of the slope box (every slope pattern is
    reached: W1 has full row rank, the hidden units are at most the inputs)."""
    n = int(rng.integers(2, 7))
    hidden = int(rng.integers(1, n + 1))
    op, attrs, low, high = _ACTIVATIONS[int(rng.integers(0, len(_ACTIVATIONS)))]
    w1 = rng.normal(size=(n, hidden)) * rng.choice([0.3, 1.0, 2.0])
    pre = rng.choice([1.0, -1.0], size=(1, hidden)) * np.exp(rng.normal(size=(1, hidden)))
    post = np.abs(rng.normal(size=(1, hidden))) if sll else rng.normal(size=(1, hidden))
    w2 = w1.T if sll else rng.normal(size=(hidden, n))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["z0"]),
        helper.make_node("Mul", ["z0", "pre"], ["z1"]),
        helper.make_node("Add", ["z1", "b"], ["z"]),
        helper.make_node(op, ["z"], ["a"], **attrs),
        helper.make_node("Mul", ["a", "post"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["t" if sll else "y"]),
    ]
    if sll:
        nodes.append(helper.make_node("Sub", ["x", "t"], ["y"]))
    arrays = {"w1": w1, "w2": w2, "pre": pre, "post": post, "b": rng.normal(size=(1, hidden))}
    model = _model(nodes, arrays, (n,))
    one = (np.float32(w1).astype(np.float64) * np.float32(pre).astype(np.float64)).T
    two = np.float32(w2).astype(np.float64).T * np.float32(post).astype(np.float64)
    true = 0.0
    for slopes in itertools.product([low, high], repeat=hidden):
        jacobian = two @ np.diag(slopes) @ one
        if sll:
            jacobian = np.eye(n) - jacobian
        true = max(true, float(np.linalg.norm(jacobian, 2)))
    return model, n, true


@pytest.mark.parametrize("sll", [True, False], ids=["sll", "sandwich"])
def test_dense_blocks_against_their_slope_box(sll: bool) -> None:
    rng = np.random.default_rng(4)
    fused = 0
    for _ in range(60):
        model, n, true = _dense_block(rng, sll)
        analysis = _analysis(model, (n,))
        fused += any(node.op in ("SLLBlock", "SandwichBlock") for node in analysis.graph.nodes)
        assert analysis.spec.lipschitz_bound >= (1 - 1e-9) * true, true
    assert fused >= 15


# --- a weight lipcert derives, under a name the file gives another tensor ---------------------


def _fold_beside(second_weight: str) -> onnx.ModelProto:
    """y = relu(BN(Gemm(x, W))) + Gemm(x, 100 I): the second Gemm's weight named as lipcert
    once named the first's folded weight ('g1/batchnorm_folded_weight'), or otherwise."""
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["z"], name="g1"),
        helper.make_node("BatchNormalization", ["z", "gamma", "beta", "mean", "var"], ["n"]),
        helper.make_node("Relu", ["n"], ["a"]),
        helper.make_node("Gemm", ["x", second_weight], ["t"], name="g2"),
        helper.make_node("Add", ["a", "t"], ["y"]),
    ]
    arrays = {
        "w": np.eye(N),
        second_weight: 100 * np.eye(N),
        "gamma": np.ones(N),
        "beta": np.full(N, 10.0),  # every unit active near x = 0
        "mean": np.zeros(N),
        "var": np.ones(N),
    }
    return _model(nodes, arrays, (N,))


@pytest.mark.parametrize("second_weight", ["g1/batchnorm_folded_weight", "w100"])
def test_a_folded_weight_never_replaces_a_tensor_of_the_file(second_weight: str) -> None:
    model = _fold_beside(second_weight)
    true = _true_constant(model, (N,))  # 101
    result = _analysis(model, (N,))
    # Before Graph.fresh_name: the fold overwrote the file's 100 I, bound 2.0 for 101.
    assert result.spec.lipschitz_bound >= SOUND * true, (result.spec.lipschitz_bound, true)
    assert [node.op for node in result.graph.nodes if node.body] == ["Gemm"]  # still folded


@pytest.mark.parametrize("factor_name", ["bn/linear_scale", "fifty"])
def test_the_probed_linear_part_keeps_the_files_constants(factor_name: str) -> None:
    """relu(BN(x W1) * 50 W2): the affine block's probe ran its bias-free part with the
    BatchNorm's scale stored as 'bn/linear_scale', which replaced the file's constant of
    that name (the 50): the probe disagreed with the block and the bound fell back to the
    product of the layers, 785 for an exact 431. Ground truth: numpy's SVD of the block."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(2, N, N))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["n"]),
        helper.make_node("Mul", ["n", factor_name], ["s"], name="times50"),
        helper.make_node("MatMul", ["s", "w2"], ["t"], name="second"),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    nodes[1].name = "bn"
    arrays = {
        "w1": w1,
        "w2": w2,
        "gamma": np.ones(N),
        "beta": np.zeros(N),
        "mean": np.zeros(N),
        "var": np.ones(N),
        factor_name: np.full(N, 50.0),
    }
    model = _model(nodes, arrays, (N,))
    f32 = [np.asarray(arrays[k], dtype=np.float32).astype(np.float64) for k in ("w1", "w2")]
    scale = 50.0 / np.sqrt(1.0 + 1e-5)
    truth = float(np.linalg.norm(f32[0] @ (scale * f32[1]), 2))
    bound = _analysis(model, (N,)).spec.lipschitz_bound
    assert truth * (1 - 1e-6) <= bound <= truth * (1 + 1e-6), (bound, truth)


def test_a_match_not_taken_leaves_the_graph_as_it_was() -> None:
    """The Householder matcher rewrites the nodes of its match (its reflection constants)
    and notes it before its fused node is checked by reads_only_its_inputs: a node not taken
    must leave the model's own nodes, not the rewritten copies, to be bounded one by one."""
    import dataclasses

    from lipcert.graph.ir import Node
    from lipcert.graph.patterns import _fuse_until_fixed

    graph = load_from_proto(_sll(None), LoadOptions(input_shape=(N,)), source="m", fmt="onnx").graph
    nodes, notes = list(graph.nodes), list(graph.notes)

    def rewriting(graph: Any, node: Node) -> Node | None:
        if node.op != "Sub":
            return None
        graph.nodes = [dataclasses.replace(n) for n in graph.nodes]
        graph.notes.append("rewritten")
        # reads x, which is not among its inputs: not taken
        return Node("fake", "Fake", (), node.outputs, body=tuple(graph.nodes))

    _fuse_until_fixed(graph, (rewriting,))
    assert len(graph.nodes) == len(nodes)
    assert all(a is b for a, b in zip(graph.nodes, nodes, strict=True))
    assert graph.notes == notes
