"""lipcert.local against textbook CROWN on explicit dense matrices (tests/local/dense_crown.py).

Without its extra sound bounds (Lipschitz caps and cuts), lipcert's propagation over the
model's own graph must give CROWN's bounds to rounding, and never more (its rounding
allowance only lowers them); with them, never less than CROWN.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dense_crown import dense_crown, margin_rows
from soundness_support import load
from torch import nn

from lipcert.bounds.compose import analyse
from lipcert.local.crown import LocalBounds, prepare_model
from lipcert.local.network import build_network


def _mlp(sizes: tuple[int, ...], seed: int, gain: float) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(gain * torch.randn(n_out, n_in, generator=generator) / n_in**0.5)
            linear.bias.copy_(0.3 * torch.randn(n_out, generator=generator))
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def _dense_layers(module: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in module
        if isinstance(m, nn.Linear)
    ]


def _bounds(
    module: nn.Module, shape: tuple[int, ...], x0: np.ndarray, eps: float, p: int
) -> tuple[np.ndarray, np.ndarray]:
    analysis = analyse(load(module, shape).graph)
    network = build_network(analysis.graph, analysis.tensor_bounds)
    plain = prepare_model(network)
    plain.factors = {}  # no Lipschitz caps: CROWN alone
    plain_bounds = LocalBounds(plain, x0, eps, cuts=False).margins(p, stop_early=False)
    full = LocalBounds(prepare_model(network), x0, eps).margins(p, stop_early=False)
    return plain_bounds, full


@pytest.mark.parametrize(
    ("sizes", "seed", "gain", "eps"),
    [
        pytest.param((6, 16, 12, 4), 0, 1.0, 0.3, id="mlp3_eps0.3"),
        pytest.param((6, 16, 12, 4), 1, 2.0, 0.1, id="mlp3_gain2"),
        pytest.param((10, 24, 24, 24, 5), 2, 1.2, 0.2, id="mlp4"),
        pytest.param((3, 32, 2), 3, 1.0, 0.5, id="mlp2_wide_eps"),
    ],
)
def test_matches_dense_crown_on_relu_mlps(
    sizes: tuple[int, ...], seed: int, gain: float, eps: float
) -> None:
    module = _mlp(sizes, seed, gain)
    rng = np.random.default_rng(seed)
    layers = _dense_layers(module)
    for _ in range(3):
        x0 = rng.normal(size=sizes[0])
        with torch.no_grad():
            p = int(module(torch.as_tensor(x0, dtype=torch.float32)[None]).argmax())
        reference = dense_crown(layers, x0, eps, margin_rows(p, sizes[-1]))
        plain, full = _bounds(module, (sizes[0],), x0, eps, p)
        scale = 1e-9 * (1 + np.abs(reference))
        np.testing.assert_allclose(plain, reference, atol=float(scale.max()), rtol=0)
        assert np.all(plain <= reference + 1e-12 * (1 + np.abs(reference)))
        assert np.all(full >= reference - scale)


def test_matches_dense_crown_on_a_small_conv_net() -> None:
    generator = torch.Generator().manual_seed(5)
    conv1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
    conv2 = nn.Conv2d(4, 6, 3, stride=1, padding=1)
    head = nn.Linear(6 * 4 * 4, 3)
    for layer in (conv1, conv2, head):
        bias = layer.bias
        assert bias is not None
        with torch.no_grad():
            layer.weight.copy_(0.4 * torch.randn(layer.weight.shape, generator=generator))
            bias.copy_(0.2 * torch.randn(bias.shape, generator=generator))
    module = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(), head).eval()

    def dense(function, shape):
        n = int(np.prod(shape))
        zero = torch.zeros((1, *shape), dtype=torch.float64)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        with torch.no_grad():
            c = function(zero).reshape(-1)
            a = (function(basis).reshape(n, -1) - c).T
        return a.numpy(), c.numpy()

    assert conv1.bias is not None and conv2.bias is not None
    w1, b1 = conv1.weight.double(), conv1.bias.double()
    w2, b2 = conv2.weight.double(), conv2.bias.double()
    layers = [
        dense(lambda x: F.conv2d(x, w1, b1, stride=2, padding=1), (1, 8, 8)),
        dense(lambda x: F.conv2d(x, w2, b2, padding=1), (4, 4, 4)),
        (head.weight.detach().double().numpy(), head.bias.detach().double().numpy()),
    ]
    rng = np.random.default_rng(5)
    for eps in (0.05, 0.2):
        x0 = rng.uniform(0, 1, size=(1, 8, 8))
        with torch.no_grad():
            p = int(module(torch.as_tensor(x0, dtype=torch.float32)[None]).argmax())
        reference = dense_crown(layers, x0, eps, margin_rows(p, 3))
        plain, full = _bounds(module, (1, 8, 8), x0, eps, p)
        np.testing.assert_allclose(plain, reference, atol=1e-8, rtol=0)
        assert np.all(plain <= reference + 1e-12)
        assert np.all(full >= reference - 1e-8)
