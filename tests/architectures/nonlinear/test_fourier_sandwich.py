"""LBDN's convolutional Sandwich (two Fourier blocks around a ReLU), exported by dynamo (the
TorchScript exporter cannot write complex tensors): one FourierSandwich row certified per
frequency, against lower bounds of the true constant computed without lipcert.

Lower bounds: the all-active Jacobian max_f ||W2(f) W1(f)|| from the exported weights in
numpy (reached at inputs where every unit is active, which exist when W1 has full row rank,
checked), Jacobians at random inputs (torch's own FFTs, float64), and W2 L W1 for random
activation patterns L on the explicit matrices of a small layer.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
from lbdn_conv_zoo import SandwichConv, all_active_norm, jacobian_norm
from torch import nn
from user_export import export_like_users

from lipcert.bounds.compose import Analysis, analyse
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadOptions

# The exporter folds exp(-psi) into the per-frequency matrices in float32: the exported
# operator differs from the float64 recomputation here by ~1e-7 relative (measured on
# "stride2": all-active norm 0.91733137270 from the exported constants, 0.91733143679 from
# the module; lipcert's bound 0.91733137272).
SOUND = 1 - 1e-6


def _export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    example = torch.rand(1, *shape, generator=torch.Generator().manual_seed(5))
    return export_like_users(module.eval(), example, dynamo=True)


LAYERS = {
    # CIFAR-sized: 16 channels on 32 x 32
    "cifar": (lambda: SandwichConv(16, 16, 32, seed=1), (16, 32, 32)),
    "small": (lambda: SandwichConv(4, 4, 8, seed=2), (4, 8, 8)),
    "stride2": (lambda: SandwichConv(4, 8, 16, seed=3, stride=2), (4, 16, 16)),
    # look-alikes: the second half's Psi is not the first's; A is another Cayley's
    "psi_mismatch": (
        lambda: SandwichConv(4, 4, 8, seed=2, psi_after=np.linspace(-0.5, 0.5, 4)),
        (4, 8, 8),
    ),
    "partner": (lambda: SandwichConv(4, 4, 8, seed=2, partner=True), (4, 8, 8)),
}


@functools.cache
def layer(name: str) -> SandwichConv:
    torch.manual_seed(0)
    return LAYERS[name][0]().eval()


@functools.cache
def analysis(name: str) -> Analysis:
    proto = _export(layer(name), LAYERS[name][1])
    return analyse(load_from_proto(proto, LoadOptions(), source=name, fmt="onnx").graph)


def row(name: str) -> tuple[float, str]:
    rows = [r for r in analysis(name).layers if r.op == "FourierSandwich"]
    assert len(rows) == 1, analysis(name).layers
    return rows[0].bound, rows[0].method


def lower_bound(name: str) -> float:
    found = max(jacobian_norm(layer(name), LAYERS[name][1], seed) for seed in range(2))
    w1, _ = layer(name).halves()
    smallest = np.linalg.svd(w1, compute_uv=False).min()
    if smallest > 1e-6:  # W1 has full row rank: every unit can be active at once
        found = max(found, all_active_norm(layer(name)))
    return found


@pytest.mark.parametrize("name", ["cifar", "small", "stride2"])
def test_lbdn_conv_sandwich_is_certified_per_frequency(name: str) -> None:
    bound, method = row(name)
    assert "per-frequency LipSDP" in method, method
    assert bound <= 1 + 1e-5, bound  # LBDN's own certificate: 1-Lipschitz
    lower = lower_bound(name)
    assert bound >= lower * SOUND, (bound, lower)
    assert bound <= 1.05 * lower, (bound, lower)
    assert analysis(name).spec.lipschitz_bound == pytest.approx(bound, rel=1e-12)


@pytest.mark.parametrize("name", ["psi_mismatch", "partner"])
def test_look_alikes_keep_a_sound_bound(name: str) -> None:
    bound, _ = row(name)
    lower = lower_bound(name)
    assert lower > 1.2  # not 1-Lipschitz: a certificate of 1 would be wrong
    assert bound >= lower * SOUND, (bound, lower)


def _explicit_halves(module: SandwichConv, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """The explicit matrices of x -> pre-activation (less its bias) and hidden -> y."""
    w1, w2 = module.halves()
    n = module.n
    c_in, c_out = module.c_in, module.c_out

    def apply(symbol: np.ndarray, x: np.ndarray) -> np.ndarray:
        spectrum = np.fft.rfft2(x)  # (batch, C, n, h)
        batch = x.shape[0]
        flat = spectrum.transpose(2, 3, 1, 0).reshape(n * (n // 2 + 1), -1, batch)
        mixed = (symbol @ flat).reshape(n, n // 2 + 1, -1, batch).transpose(3, 2, 0, 1)
        return np.fft.irfft2(mixed, s=(n, n))

    eye_in = np.eye(c_in * n * n).reshape(-1, c_in, n, n)
    eye_hidden = np.eye(c_out * n * n).reshape(-1, c_out, n, n)
    first = apply(w1, eye_in).reshape(c_in * n * n, -1).T
    second = apply(w2, eye_hidden).reshape(c_out * n * n, -1).T
    del shape
    return first, second


def test_small_layer_bound_covers_every_tried_activation_pattern() -> None:
    module = layer("small")
    first, second = _explicit_halves(module, LAYERS["small"][1])
    rng = np.random.default_rng(0)
    bound, _ = row("small")
    worst = 0.0
    for density in (0.3, 0.5, 0.8, 1.0):
        for _ in range(10):
            pattern = np.asarray(rng.random(first.shape[0]) < density, dtype=float)
            worst = max(worst, float(np.linalg.norm(second * pattern @ first, 2)))
    assert worst <= bound * (1 + 1e-9), (worst, bound)
    assert worst >= 0.99  # the patterns come close to the certified 1


def test_activation_that_is_not_relu_is_not_fused() -> None:
    """The sandwich matcher takes ReLU only: with LeakyReLU(2) between the halves (slopes
    outside [0, 1]) the two blocks stay apart and multiply."""

    module = SandwichConv(
        4, 4, 8, seed=2, activation=lambda t: torch.nn.functional.leaky_relu(t, 2.0)
    ).eval()
    proto = _export(module, (4, 8, 8))
    result = analyse(load_from_proto(proto, LoadOptions(), source="leaky", fmt="onnx").graph)
    assert not [r for r in result.layers if r.op == "FourierSandwich"]
    assert result.spec.lipschitz_bound >= jacobian_norm(module, (4, 8, 8), 0) * (1 - 1e-9)
