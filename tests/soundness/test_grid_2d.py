"""Certified radii of random 2-D networks against the true distance to the decision boundary.

For inputs of two dimensions the decision of the exact (float64) function can be mapped on a
dense grid; bisecting from each point towards the nearest grid points of another class gives
points of another class at a known distance, so an upper bound of the true distance to the
boundary that is far tighter than the grid step. A certified radius must never exceed it,
whether margins come from onnxruntime in float32 (with the rounding allowance) or from the
graph in float64. Points a hair away from the boundary (1e-7 to 1e-3) test the allowance
where the margins are tiny.

Each network also checks its bounds against the largest Jacobian norms found on a grid
(lower bounds of the true constants) and the float32 allowance against the error of
onnxruntime measured against the float64 reference.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from nets_2d import Recipe, build, recipes
from soundness_support import (
    REL,
    TAU,
    Decision,
    certify_both,
    competing_margin,
    grid_truth,
    jacobians,
    load,
    near_boundary_points,
    reference,
)

from lipcert.bounds.compose import Analysis, analyse
from lipcert.model import LoadedModel
from lipcert.runtime import OnnxRuntimeEvaluator

RECIPES = recipes(per_kind=2)
PARAMS = [pytest.param(r, id=r.id) for r in RECIPES]
# Points are drawn in [-SPREAD, SPREAD]^2, the grid covers [-HALF_WIDTH, HALF_WIDTH]^2.
SPREAD = 1.2
HALF_WIDTH = 2.5
NEAR_OFFSETS = (1e-7, 1e-5, 1e-3)


@functools.cache
def prepared(recipe: Recipe) -> tuple[LoadedModel, Analysis, torch.nn.Module]:
    logits, exported = build(recipe)
    loaded = load(exported, (2,), recipe.opset)
    return loaded, analyse(loaded.graph), reference(logits)


def upper_distances(
    decision: Decision, points: np.ndarray, predicted: np.ndarray, truth_of: dict[int, float]
) -> np.ndarray:
    """For each point and lipcert's predicted class p, an upper bound of the distance to a
    point whose class is not p: 0 when x itself is not p, else the grid truth (inf if none)."""
    competing = decision.competing(points, np.maximum(predicted, 0))
    distance = np.array([truth_of.get(i, np.inf) for i in range(len(points))])
    return np.where(competing > TAU, 0.0, distance)


def check_radii(recipe: Recipe, method: str) -> tuple[float, int]:
    """Certify random and near-boundary points by both paths; every radius must stay within
    the true distance. Returns the largest radius / distance ratio and how many certified
    radii met a known boundary."""
    loaded, analysis, ref = prepared(recipe)
    decision = Decision(ref)
    rng = np.random.default_rng(recipe.seed)
    points = rng.uniform(-SPREAD, SPREAD, size=(24, 2))
    classes = np.argmax(decision.logits(points), axis=1)
    truth = grid_truth(decision, points, classes, HALF_WIDTH)
    near, witnesses = near_boundary_points(truth, points, NEAR_OFFSETS)
    near_classes = np.argmax(decision.logits(near), axis=1) if len(near) else np.zeros(0, int)
    near_distance = np.linalg.norm(near - witnesses, axis=1)
    if len(near):
        # A witness bounds the distance only where it is of another class than the point.
        valid = decision.competing(witnesses, near_classes) > TAU
        near_distance = np.where(valid, near_distance, np.inf)
    everything = np.concatenate([points, near])
    distance_of_true_class = np.concatenate([truth.distance, near_distance])
    true_class = np.concatenate([classes, near_classes])

    worst, checked = 0.0, 0
    for path in certify_both(loaded, analysis, everything, method):
        cert = path.certificates
        truth_of = {
            i: d
            for i, d in enumerate(distance_of_true_class)
            if cert.prediction[i] == true_class[i]
        }
        bound = upper_distances(decision, everything, cert.prediction, truth_of)
        certified = cert.radius > 0
        measured = certified & np.isfinite(bound)
        ratio = np.where(measured, cert.radius / np.where(bound > 0, bound, 1.0), 0.0)
        ratio[certified & (bound == 0)] = np.inf
        bad = np.flatnonzero(cert.radius > bound * (1 + REL))
        assert not len(bad), (
            f"{path.name} margins, {cert.method.value} certificate: radius {cert.radius[bad]} "
            f"exceeds the true distance {bound[bad]} at {everything[bad].tolist()} (largest "
            f"ratio {ratio.max():.6g})"
        )
        worst = max(worst, float(ratio.max(initial=0.0)))
        checked += int(measured.sum())
    return worst, checked


@pytest.mark.parametrize("recipe", PARAMS)
def test_certified_radius_never_exceeds_true_distance(recipe: Recipe, record_property) -> None:
    """The default certificate (pairwise with a linear head, binary for one logit)."""
    worst, checked = check_radii(recipe, "auto")
    record_property("max_ratio", worst)
    # The test has teeth only if certified radii met a known boundary.
    assert checked >= 10, f"only {checked} certified points had a boundary in the grid"


GLOBAL_PARAMS = [pytest.param(r, id=r.id) for r in RECIPES if r.num_logits > 1]


@pytest.mark.parametrize("recipe", GLOBAL_PARAMS)
def test_global_certificate_never_exceeds_true_distance(recipe: Recipe, record_property) -> None:
    """--certificate global: (top1 - top2) / (sqrt(2) L) for every pair."""
    worst, checked = check_radii(recipe, "global")
    record_property("max_ratio", worst)
    assert checked >= 10, f"only {checked} certified points had a boundary in the grid"


def test_global_certificate_uses_the_bound_of_every_pair() -> None:
    """Three classes, w0 and w1 close, w2 opposite: K_01 = 0.1 but K_21 = 1.9. At x = -0.2,
    class 2 wins by 0.33 over class 1, whose boundary lies 0.174 away; the global
    certificate (margin / (sqrt(2) L), L = ||W|| = 1.68) is 0.139, but lipcert gives 3.3."""
    layer = torch.nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.9, 0.0], [-1.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.05, 0.0]))
    loaded = load(layer, (2,))
    analysis = analyse(loaded.graph)
    x = np.array([[-0.2, 0.0]])
    (_, path64) = certify_both(loaded, analysis, x, "global")
    true_distance = (0.2 * 1.9 - 0.05) / 1.9  # f2 - f1 = -1.9 x - 0.05 reaches 0
    assert path64.certificates.prediction[0] == 2
    assert path64.certificates.radius[0] <= true_distance, path64.certificates.radius[0]


@pytest.mark.parametrize("recipe", PARAMS)
def test_bounds_above_largest_jacobian_on_grid(recipe: Recipe) -> None:
    """Lipschitz bound >= max ||J||_2, logit bound i >= max ||grad f_i||, pairwise bound
    (i, j) >= max ||grad (f_i - f_j)||, over a 250 x 250 grid and random points."""
    _, analysis, ref = prepared(recipe)
    spec = analysis.spec
    axis = np.linspace(-HALF_WIDTH, HALF_WIDTH, 250)
    grid = np.stack([g.ravel() for g in np.meshgrid(axis, axis)], axis=1)
    rng = np.random.default_rng(recipe.seed + 1000)
    sample = np.concatenate([grid, rng.normal(scale=3.0, size=(2000, 2))])
    jac = jacobians(ref, sample)  # (N, K, 2)
    largest = float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max())
    assert spec.lipschitz_bound >= largest * (1 - REL), (spec.lipschitz_bound, largest)
    per_logit = np.linalg.norm(jac, axis=2).max(axis=0)
    assert np.all(np.array(spec.logit_bounds) >= per_logit * (1 - REL)), (
        spec.logit_bounds,
        per_logit,
    )
    k = spec.num_logits
    for i in range(k):
        for j in range(i + 1, k):
            pair = float(np.linalg.norm(jac[:, i] - jac[:, j], axis=1).max())
            assert spec.pair_bound(i, j) >= pair * (1 - REL), (i, j, spec.pair_bound(i, j), pair)
    # Not vacuous: the grid meets gradients of the size the bound speaks of (the weights are
    # random, so the bound can be loose, but not by orders of magnitude on 2-D inputs).
    assert largest > 0


@pytest.mark.parametrize("recipe", PARAMS)
def test_float32_allowance_covers_onnxruntime_error(recipe: Recipe) -> None:
    """||onnxruntime logits - exact logits|| <= fp_allowance(||x||), from small to large x."""
    loaded, analysis, ref = prepared(recipe)
    rng = np.random.default_rng(recipe.seed + 2000)
    directions = rng.normal(size=(4000, 2))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    scales = np.geomspace(1e-3, 1e3, 4000)
    rng.shuffle(scales)
    points = directions * scales[:, None]
    runtime = OnnxRuntimeEvaluator(loaded, threads=1)
    computed = runtime.logits(points).astype(np.float64)
    with torch.no_grad():
        exact = ref(torch.as_tensor(points)).reshape(len(points), -1).numpy()
    error = np.linalg.norm(computed - exact, axis=1)
    allowance = analysis.spec.fp_allowance(np.linalg.norm(points, axis=1))
    finite = np.all(np.isfinite(computed), axis=1)
    worst = int(np.argmax(np.where(finite, error / allowance, -np.inf)))
    assert np.all(error[finite] <= allowance[finite]), (
        f"float32 error {error[worst]:.3g} above the allowance {allowance[worst]:.3g} at "
        f"||x|| = {np.linalg.norm(points[worst]):.3g}"
    )


def test_grid_truth_finds_the_exact_distance_of_a_linear_classifier() -> None:
    """The ground truth itself: for f(x) = w.x + b the distance is |f(x)| / ||w||."""
    w, b = np.array([0.6, -1.7]), 0.3

    def function(x: torch.Tensor) -> torch.Tensor:
        return x @ torch.as_tensor(w)[:, None] + b

    decision = Decision(function)
    points = np.random.default_rng(0).uniform(-1, 1, size=(20, 2))
    classes = np.argmax(decision.logits(points), axis=1)
    truth = grid_truth(decision, points, classes, HALF_WIDTH)
    exact = np.abs(points @ w + b) / np.linalg.norm(w)
    assert np.all(truth.distance >= exact * (1 - REL))
    np.testing.assert_allclose(truth.distance, exact, rtol=1e-6, atol=1e-9)
    assert np.all(competing_margin(decision.logits(truth.crossing), classes) > TAU)


def test_sigmoid_output_of_a_binary_model_is_not_read_as_a_logit() -> None:
    """p(x) = sigmoid(x1): the model says class 0 at x = (-0.5, 0), 0.5 from its boundary
    x1 = 0. lipcert may refuse the model, or certify class 0 within 0.5; it certifies
    class 1 with radius 1.51."""
    from lipcert.errors import LipcertError

    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.bias.zero_()
    try:
        loaded = load(torch.nn.Sequential(layer, torch.nn.Sigmoid()), (2,))
        analysis = analyse(loaded.graph)
    except LipcertError:
        return
    x = np.array([[-0.5, 0.0]])
    for path in certify_both(loaded, analysis, x):
        cert = path.certificates
        assert cert.radius[0] == 0 or (cert.prediction[0] == 0 and cert.radius[0] <= 0.5), (
            f"{path.name}: class {cert.prediction[0]} certified with radius {cert.radius[0]:.3g}"
        )
