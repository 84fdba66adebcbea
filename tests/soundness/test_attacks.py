"""Attacks inside certified radii of random convolutional networks (1x8x8 and 3x8x8 inputs).

Every certified radius, from float32 (onnxruntime + allowance) or float64 margins, is
attacked by lipcert's Attacker (L2 PGD with restarts, confirmed in float64): no decision
change may be found inside it. The search for the smallest adversarial perturbation gives
an upper bound of each true distance; radius / distance must stay <= 1 and says how tight
the certificate is. Each network's bound is also checked against the largest local
Lipschitz constant found by power iteration on the Jacobian at the attacked points.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from deel import torchlip
from soundness_support import REL, certify_both, freeze, load, local_lipschitz, reference
from torch import nn
from typer.testing import CliRunner

from lipcert.attack import Attacker, AttackSettings
from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, analyse
from lipcert.cli import app
from lipcert.model import LoadedModel

SAMPLES = 12
SETTINGS = AttackSettings(
    steps=40, restarts=4, distance_steps=20, distance_restarts=2, bisections=8, seed=0
)


class ChannelMaxMin(nn.Module):
    """(relu(x), relu(-x)) stacked on the channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.bn(self.conv1(x))))


def _scale_weights(module: nn.Module, scale: float, generator: torch.Generator) -> None:
    """Random weights of std scale / sqrt(fan_in), random BatchNorm statistics."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(
                    torch.randn(layer.weight.shape, generator=generator) * scale / fan_in**0.5
                )
                if layer.bias is not None:
                    layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
            if isinstance(layer, nn.BatchNorm2d):
                c = layer.num_features
                layer.running_mean.copy_(0.3 * torch.randn(c, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                layer.weight.copy_(0.5 + torch.rand(c, generator=generator))
                layer.bias.copy_(0.1 * torch.randn(c, generator=generator))


def strided_groupsort() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        torchlip.GroupSort2(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def dilated_grouped_avgpool() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, dilation=2, padding=2, groups=3),
        ChannelMaxMin(),
        nn.AvgPool2d(2),
        nn.Conv2d(12, 8, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 5),
    )


def maxpool_both_kinds() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        torchlip.GroupSort2(),
        nn.MaxPool2d(3, stride=1),  # overlapping: sqrt(m), m up to 4 on a 4x4 map
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 4),
    )


def l2pool_binary() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torchlip.FullSort(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 1),
    )


def overlapping_avgpool_padding() -> nn.Module:
    return nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)),
        nn.Conv2d(3, 4, 5, stride=3, padding=(2, 1)),
        nn.LeakyReLU(0.3),
        nn.Conv2d(4, 6, 1),
        nn.Tanh(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    )


def circular_padding() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular"),
        nn.ELU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
    )


def residual_batchnorm() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        ResidualBlock(4),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def torchlip_lipnet() -> nn.Module:
    return torchlip.Sequential(
        torchlip.SpectralConv2d(3, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(8, 8, 3, padding=1),
        torchlip.GroupSort2(),
        nn.Flatten(),
        torchlip.FrobeniusLinear(8 * 4 * 4, 4),
    )


# Linear bodies (no activation) under a head aligned with the body's top singular vectors:
# the bound is then nearly attained, radii come close to the true distances, and the attack
# tests the conv bounds at their tightest.
def linear_strided() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Flatten())


def linear_dilated_grouped() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, dilation=2, padding=2, groups=3), nn.Flatten())


def linear_padding_stride3() -> nn.Module:
    return nn.Sequential(
        nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(3, 5, 5, stride=3, padding=(2, 1)), nn.Flatten()
    )


def linear_kernel4_stride2() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=2, padding=1), nn.Flatten())


def aligned(
    body: Callable[[], nn.Module], shape: tuple[int, int, int], num_logits: int
) -> Callable[[], nn.Module]:
    """body -> Linear whose rows follow the body's top singular vectors (u, -u, v)."""

    def factory() -> nn.Module:
        features = body()
        with torch.no_grad():
            zero = torch.zeros(1, *shape)
            jac = torch.autograd.functional.jacobian(lambda x: features(x)[0], zero)
            u, _, _ = torch.linalg.svd(jac.reshape(jac.shape[0], -1).double())
            width = jac.shape[0]
            rows = [u[:, 0], -u[:, 0], 0.7 * u[:, 1]][:num_logits]
            head = nn.Linear(width, num_logits)
            head.weight.copy_(torch.stack(rows).float())
        return nn.Sequential(features, head)

    return factory


# name: (factory, input shape, weight scale or None for the factory's own weights)
NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], float | None]] = {
    "conv_stride2_groupsort": (strided_groupsort, (1, 8, 8), 1.0),
    "conv_dilation_groups_avgpool": (dilated_grouped_avgpool, (3, 8, 8), 1.0),
    "maxpool_overlapping_and_not": (maxpool_both_kinds, (3, 8, 8), 1.0),
    "l2pool_fullsort_binary": (l2pool_binary, (1, 8, 8), 1.0),
    "avgpool_overlap_padding": (overlapping_avgpool_padding, (3, 8, 8), 1.0),
    "circular_padding": (circular_padding, (1, 8, 8), 1.0),
    "residual_batchnorm": (residual_batchnorm, (3, 8, 8), 1.0),
    "large_weights_x3": (strided_groupsort, (1, 8, 8), 3.0),
    "small_weights_x0.3": (maxpool_both_kinds, (3, 8, 8), 0.3),
    "torchlip_lipnet": (torchlip_lipnet, (3, 8, 8), None),
    "aligned_conv_stride2": (aligned(linear_strided, (1, 8, 8), 1), (1, 8, 8), None),
    "aligned_conv_dilated_grouped": (
        aligned(linear_dilated_grouped, (3, 8, 8), 2),
        (3, 8, 8),
        None,
    ),
    "aligned_conv_padding_stride3": (
        aligned(linear_padding_stride3, (3, 8, 8), 3),
        (3, 8, 8),
        None,
    ),
    "aligned_conv_kernel4_stride2": (
        aligned(linear_kernel4_stride2, (3, 8, 8), 2),
        (3, 8, 8),
        None,
    ),
}


@functools.cache
def prepared(name: str) -> tuple[nn.Module, LoadedModel, Analysis, np.ndarray]:
    factory, shape, scale = NETWORKS[name]
    index = list(NETWORKS).index(name)
    torch.manual_seed(index)
    module = factory()
    if scale is not None:
        _scale_weights(module, scale, torch.Generator().manual_seed(index))
    module = freeze(module)
    _centre_head(module, shape, index)
    loaded = load(module, shape)
    # float32 values: the attack starts from float32 inputs (see the rounding bug below).
    inputs = np.random.default_rng(index).uniform(0, 1, size=(SAMPLES, *shape))
    inputs = inputs.astype(np.float32).astype(np.float64)
    return module, loaded, analyse(loaded.graph), inputs


def _centre_head(module: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Shift the head's bias so that random inputs fall on both sides of the boundaries."""
    head = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    x = torch.rand(256, *shape, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        values = module(x)
        shift = values.median(dim=0).values if values.shape[1] == 1 else values.mean(dim=0)
        head.bias.sub_(shift)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_no_attack_succeeds_inside_certified_radii(name: str, record_property) -> None:
    _, loaded, analysis, inputs = prepared(name)
    paths = certify_both(loaded, analysis, inputs)
    predictions = {tuple(p.certificates.prediction) for p in paths}
    assert len(predictions) == 1, f"float32 and float64 disagree on predictions: {predictions}"
    prediction = paths[0].certificates.prediction
    # The larger of the two radii: both certificates are attacked at once.
    radius = np.maximum(paths[0].certificates.radius, paths[1].certificates.radius)
    assert np.sum(radius > 0) >= SAMPLES // 3, f"only {np.sum(radius > 0)} samples certified"

    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    attacker = Attacker(loaded.graph, spec64, SETTINGS)
    result = attacker.attack(inputs, prediction, radius, search_distance=False)
    # The distance search brackets upwards from the radius it is given, so its distance is
    # never below that radius: searched from 0, it is an upper bound of the true distance
    # independent of the certificate, which the radius must not exceed.
    distance = attacker.attack(inputs, prediction, np.zeros(SAMPLES)).adversarial_distance
    found = np.isfinite(distance) & (radius > 0)
    ratios = radius[found] / distance[found]
    worst = float(ratios.max(initial=0.0))
    record_property("max_ratio", worst)
    # Only a decision change inside the ball breaks a certificate: the attack steps in
    # float32 and may round a point of a tiny ball outside it.
    inside = result.violation & (result.violation_distance <= radius)
    assert not inside.any(), (
        f"attack inside certified radii {radius[inside]} found decision changes at "
        f"{result.violation_distance[inside]} (largest radius / adversarial distance ratio "
        f"{worst:.4g})"
    )
    assert worst <= 1.0, f"largest radius / adversarial distance ratio {worst:.4g} > 1"
    # The distance search must have found adversarial points for most samples, or the
    # ratio says nothing.
    assert found.sum() >= np.sum(radius > 0) // 2


@pytest.mark.parametrize("name", list(NETWORKS))
def test_bound_above_local_lipschitz_constants(name: str) -> None:
    """The logit bound >= ||J(x)||_2 by power iteration, at the samples and around them."""
    module, _, analysis, inputs = prepared(name)
    ref = reference(module)
    rng = np.random.default_rng(1)
    points = np.concatenate([inputs, inputs + 0.3 * rng.normal(size=inputs.shape)])
    local = local_lipschitz(ref, points)
    assert analysis.spec.lipschitz_bound >= local.max() * (1 - REL), (
        analysis.spec.lipschitz_bound,
        local.max(),
    )
    if analysis.spec.pairwise_bounds is None:
        return
    # Each pair: sqrt(2) ||J|| is not a lower bound of K_ij, but ||grad (f_i - f_j)|| is.
    x = torch.as_tensor(points).requires_grad_(True)
    logits = ref(x)
    k = logits.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            (grad,) = torch.autograd.grad((logits[:, i] - logits[:, j]).sum(), x, retain_graph=True)
            largest = float(grad.flatten(1).norm(dim=1).max())
            assert analysis.spec.pair_bound(i, j) >= largest * (1 - REL), (i, j)


def test_cli_attack_and_certify_agree_with_the_library(tmp_path: Path) -> None:
    """`lipcert attack --json` finds no violation, `lipcert certify --csv` gives the library's
    radii, on a deel-torchlip network read from an ONNX file and images in an npz file."""
    import csv

    import onnx

    module, loaded, analysis, inputs = prepared("torchlip_lipnet")
    model_path = tmp_path / "lipnet.onnx"
    onnx.save(onnx.load_from_string(loaded.onnx_bytes), str(model_path))
    images = np.round(inputs * 255).astype(np.uint8)
    x = images.astype(np.float64) / 255
    with torch.no_grad():
        labels = reference(module)(torch.as_tensor(x)).argmax(dim=1).numpy()
    data = tmp_path / "data.npz"
    np.savez(data, x=images, y=labels)

    runner = CliRunner()
    out = tmp_path / "certify.csv"
    result = runner.invoke(
        app,
        [
            "certify",
            str(model_path),
            "--dataset",
            str(data),
            "--json",
            "--quiet",
            "--csv",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    radii = np.array([float(r["radius"]) for r in rows])
    (path32, path64) = certify_both(loaded, analysis, x)
    # The default path's allowance is a-posteriori, at most the a-priori one of the float32
    # path (up to a few ulps: onnxruntime's thread count may change the float32 sums), and
    # its radii never exceed the exact function's (float64 radii plus their ~1e-11 allowance).
    assert np.all(radii >= path32.certificates.radius * (1 - 1e-4) - 1e-6)
    assert np.all(radii <= path64.certificates.radius + 1e-9)

    result = runner.invoke(
        app,
        [
            "attack",
            str(model_path),
            "--dataset",
            str(data),
            "--json",
            "--quiet",
            "--margins",
            "float64",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["violations"] == 0 and summary["passed"] is True
    assert summary["certified"] >= SAMPLES // 3


def test_attack_reports_no_violation_outside_the_certified_ball() -> None:
    """f(x) = w.x + b, x (float64) 1e-9 / ||w|| from the boundary, float32(x) across it.
    The float64 certificate (radius just below 1e-9 / ||w||) is sound: the exact distance
    is larger. A violation may only be reported at a point inside the ball."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.6, 0.8]]))
        layer.bias.copy_(torch.tensor([-0.25]))
    module = freeze(layer)
    loaded = load(module, (2,))
    analysis = analyse(loaded.graph)
    w = layer.weight.detach().double().numpy()[0]
    b = float(layer.bias.detach().double())
    rng = np.random.default_rng(0)
    for _ in range(100):
        start = rng.uniform(-1, 1, size=2)
        x = start + (1e-9 - (w @ start + b)) * w / (w @ w)  # f(x) = 1e-9 (class 1)
        if w @ x.astype(np.float32).astype(np.float64) + b < -1e-9:
            break
    else:
        pytest.fail("no input found whose float32 rounding crosses the boundary")
    exact = (w @ x + b) / np.linalg.norm(w)
    (_, path64) = certify_both(loaded, analysis, x[None])
    radius = path64.certificates.radius
    assert path64.certificates.prediction[0] == 1 and 0 < radius[0] <= exact
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    result = Attacker(loaded.graph, spec64, SETTINGS).attack(x[None], np.array([1]), radius)
    assert not result.violation[0], (
        f"violation reported at distance {result.violation_distance[0]:.3g}, outside the "
        f"certified radius {radius[0]:.3g} (exact distance {exact:.3g})"
    )


def test_distance_search_finds_the_boundary_inside_an_inflated_radius() -> None:
    """f(x) = w.x + b with radii 10 times the exact distance |f| / ||w||: PGD finds the
    boundary at once, so the smallest adversarial distance must come out near the exact
    distance, and the gap ratio above 1."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.6, 0.8]]))
        layer.bias.copy_(torch.tensor([-0.25]))
    loaded = load(freeze(layer), (2,))
    analysis = analyse(loaded.graph)
    inputs = np.random.default_rng(1).uniform(-1, 1, size=(8, 2)).astype(np.float32)
    inputs = inputs.astype(np.float64)
    w = layer.weight.detach().double().numpy()[0]
    f = inputs @ w + float(layer.bias.detach())
    exact = np.abs(f) / np.linalg.norm(w)
    prediction = (f > 0).astype(int)
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    result = Attacker(loaded.graph, spec64, SETTINGS).attack(inputs, prediction, 10 * exact)
    assert result.violation.all()
    assert np.all(result.adversarial_distance <= 1.1 * exact), result.adversarial_distance / exact
