"""Small torch models and data for the API tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
NPZ = SAMPLES / "data" / "fashion_mnist_test_1000.npz"
TAU8 = SAMPLES / "fmnist_ce_tau8.onnx"
TAU2 = SAMPLES / "fmnist_ce_tau2.onnx"


def linear_2d(seed: int = 0, classes: int = 3) -> nn.Module:
    """f(x) = W x + b on 2-D inputs: the distance to each decision boundary is closed-form."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(2, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, 2, generator=generator))
        layer.bias.copy_(0.3 * torch.randn(classes, generator=generator))
    return layer


def relu_2d(seed: int = 0, classes: int = 3, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, classes))


def points_2d(n: int, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-2, 2, size=(n, 2)), rng.integers(0, classes, size=n)


def fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n bundled Fashion-MNIST test images, as floats in [0, 1] (float32)."""
    data = np.load(NPZ)
    return data["x"][:n].astype(np.float32) / np.float32(255), data["y"][:n].astype(np.int64)
