"""The rewrite into affine steps and ReLUs computes the model exactly, and refuses the rest."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from local_support import run_network
from nets_2d import KINDS, Recipe, build, recipes
from soundness_support import export, load, reference
from torch import nn

from lipcert.bounds.compose import Analysis, analyse
from lipcert.graph.execute import GraphExecutor
from lipcert.local.network import LocalUnsupported, build_network

# Kinds whose every op has a rewrite; the others hold an op with no relaxation.
SUPPORTED = {
    "affine",
    "relu",
    "leaky_relu",
    "leaky_relu_slope2",
    "groupsort2",
    "abs",
    "maxmin",
    "deel_maxmin",
    "concat",
    "batchnorm",
    "normalise",
    "batchnorm_head",
    "scaled_head",
    "unit_rows_head",
    "frobenius_head",
}
REFUSED = set(KINDS) - SUPPORTED
RECIPES = recipes(per_kind=2)


@functools.cache
def _prepared(recipe: Recipe) -> tuple[Analysis, torch.nn.Module]:
    logits, exported = build(recipe)
    loaded = load(exported, (2,), recipe.opset)
    return analyse(loaded.graph), reference(logits)


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, id=r.id) for r in RECIPES if r.kind in SUPPORTED]
)
def test_rewrite_computes_the_model(recipe: Recipe) -> None:
    analysis, ref = _prepared(recipe)
    network = build_network(analysis.graph, analysis.tensor_bounds)
    points = np.random.default_rng(recipe.seed).uniform(-3, 3, size=(64, 2))
    with torch.no_grad():
        # The graph's own ops in float64 (the file's float32 attributes, e.g. a LeakyReLU
        # slope, as stored), and the torch module (its Python-float slope): same function
        # up to the float32 rounding of such attributes.
        executed = GraphExecutor(analysis.graph)(torch.as_tensor(points)).reshape(64, -1)
        module = ref(torch.as_tensor(points)).reshape(64, -1).numpy()
    got = run_network(network, points)
    np.testing.assert_allclose(got, executed.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, module, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.id) for r in RECIPES if r.kind in REFUSED])
def test_ops_without_relaxation_are_refused(recipe: Recipe) -> None:
    analysis, _ = _prepared(recipe)
    with pytest.raises(LocalUnsupported, match="node "):
        build_network(analysis.graph, analysis.tensor_bounds)


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class _MaxOfThree(nn.Module):
    """A look-alike of GroupSort2: the max over groups of three is not a pair."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 2, 3).amax(dim=2, keepdim=True).reshape(-1, 2)


class _MaxBroadcast(nn.Module):
    """Max of a tensor and a broadcast slice of itself: not a pair of matching elements."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, x[:, :1])


@pytest.mark.parametrize(
    ("module", "match"),
    [
        pytest.param(_Square(), "product of two data tensors", id="mul_of_data"),
        pytest.param(_MaxOfThree(), "axis of size 2", id="reduce_max_of_three"),
        pytest.param(_MaxBroadcast(), "broadcast", id="max_with_broadcast"),
    ],
)
def test_look_alikes_are_refused(module: nn.Module, match: str) -> None:
    loaded = load(nn.Sequential(nn.Linear(6, 6), module).eval(), (6,))
    with pytest.raises(LocalUnsupported, match=match):
        build_network(loaded.graph)


def test_pairs_share_one_relu() -> None:
    """GroupSort2's min and max of a pair use the same relu(a - b): one ReLU per pair."""
    from lipcert.zoo import GroupSort2

    module = nn.Sequential(nn.Linear(4, 6), GroupSort2(), nn.Linear(6, 3)).eval()
    proto_model = load(module, (4,))
    analysis = analyse(proto_model.graph)
    network = build_network(analysis.graph, analysis.tensor_bounds)
    relus = network.relu_inputs()
    assert len(relus) == 1
    assert network.numel(relus[0]) == 3
    assert export is not None


def test_conv_lipnet_rewrite_matches_onnxruntime() -> None:
    """The small GroupSort2 LipNet fixture: the rewrite against onnxruntime (float32 file)."""
    from pathlib import Path

    import onnxruntime as ort

    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    path = Path(__file__).parent / "fixtures" / "fmnist_small_groupsort2.onnx"
    loaded = load_model(path, LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    network = build_network(analysis.graph, analysis.tensor_bounds)
    x = np.random.default_rng(0).uniform(0, 1, size=(4, 1, 28, 28))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(run_network(network, x), expected, rtol=1e-4, atol=1e-5)


class _SortPairs(nn.Module):
    """Sort each pair of features (TopK of 2 over an axis of size 2), largest first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 3, 2).topk(2, dim=2).values.reshape(-1, 6)


class _SortTriples(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, 2, 3).topk(3, dim=2).values.reshape(-1, 6)


def test_sorted_pairs_are_rewritten_and_triples_refused() -> None:
    generator = torch.Generator().manual_seed(0)
    first, head = nn.Linear(4, 6), nn.Linear(6, 3)
    with torch.no_grad():
        first.weight.copy_(torch.randn(6, 4, generator=generator))
    module = nn.Sequential(first, _SortPairs(), head).eval()
    graph = load(module, (4,)).graph
    network = build_network(graph)
    points = np.random.default_rng(1).normal(size=(32, 4))
    with torch.no_grad():
        expected = module.double()(torch.as_tensor(points)).numpy()
    np.testing.assert_allclose(run_network(network, points), expected, rtol=1e-6, atol=1e-6)
    triples = nn.Sequential(nn.Linear(4, 6), _SortTriples(), nn.Linear(6, 3)).eval()
    with pytest.raises(LocalUnsupported, match="axis of size 2"):
        build_network(load(triples, (4,)).graph)
