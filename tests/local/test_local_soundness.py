"""Local certificates against the truth: 2-D grids, PGD in float64, and a planted bug.

For 2-D networks the distance to the decision boundary is known from above (a dense grid and
bisection, tests/soundness); every radius the local bounds prove must stay within it. On the
Fashion-MNIST LipNets, PGD in float64 must find no decision change inside any radius proven
locally. A relaxation that is deliberately wrong (a ReLU upper line too low) must make these
checks fail: the suite can see a violation.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from local_support import pgd_worst_margin
from nets_2d import Recipe, build, recipes
from soundness_support import REL, Decision, grid_truth, load

from lipcert.bounds.compose import Analysis, analyse
from lipcert.graph.execute import GraphExecutor
from lipcert.local import crown
from lipcert.local.refine import LocalCertifier

LOCAL_KINDS = (
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
    "scaled_head",
    "unit_rows_head",
    "frobenius_head",
)
RECIPES = [r for r in recipes(per_kind=2) if r.kind in LOCAL_KINDS]
HALF_WIDTH = 2.5
FIXTURES = Path(__file__).parent / "fixtures"


@functools.cache
def _prepared(recipe: Recipe) -> tuple[Analysis, GraphExecutor]:
    _, exported = build(recipe)
    loaded = load(exported, (2,), recipe.opset)
    analysis = analyse(loaded.graph)
    return analysis, GraphExecutor(analysis.graph)


def local_radius(
    certifier: LocalCertifier, x0: np.ndarray, prediction: int, high: float, steps: int = 10
) -> float:
    """The largest radius proven locally, by bisection over [0, high] (0 when none)."""
    low = 0.0
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if certifier.certify(x0, prediction, middle)[0]:
            low = middle
        else:
            high = middle
    return low


def grid_violations(recipe: Recipe, points: int = 6) -> tuple[list[str], int, int]:
    """(radii above the true distance, how many points, how many beat the global radius)."""
    analysis, executor = _prepared(recipe)
    decision = Decision(executor)
    rng = np.random.default_rng(recipe.seed)
    x = rng.uniform(-1.2, 1.2, size=(points, 2))
    logits = decision.logits(x)
    classes = np.argmax(logits, axis=1)
    truth = grid_truth(decision, x, classes, HALF_WIDTH)
    certifier = LocalCertifier(analysis)
    spec = analysis.spec
    violations, better = [], 0
    for i in range(points):
        # One logit is read as the pair (0, f): class 1 when f > 0, as lipcert does.
        p = int(classes[i])
        prediction = p
        try:
            radius = local_radius(certifier, x[i], prediction, HALF_WIDTH)
        except RuntimeError as exc:  # the bounds' own consistency check (empty intervals)
            violations.append(f"point {i}: {exc}")
            continue
        if radius > truth.distance[i] * (1 + REL):
            violations.append(f"point {i}: local radius {radius!r} > true {truth.distance[i]!r}")
        margins = logits[i, p] - np.delete(logits[i], p)
        if spec.num_logits > 1:
            bounds = np.delete(np.array([spec.pair_bound(p, j) for j in range(len(logits[i]))]), p)
        else:
            bounds = np.array([spec.logit_bounds[0]])
        if radius > float(np.min(margins / bounds)) * (1 + 1e-6):
            better += 1
    return violations, points, better


@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.id) for r in RECIPES])
def test_local_radii_stay_within_the_true_distance(recipe: Recipe) -> None:
    violations, _, _ = grid_violations(recipe)
    assert not violations, violations


def test_local_radii_beat_the_global_ones_on_2d_nets() -> None:
    """Not a soundness check: the local bounds must be worth their cost somewhere."""
    total = better = 0
    for recipe in RECIPES[::3]:
        _, n, b = grid_violations(recipe, points=4)
        total, better = total + n, better + b
    assert better >= total // 4, (better, total)


_RIGHT = crown.relax_relu


def _too_low_upper_line(lower: torch.Tensor, upper: torch.Tensor) -> crown.Relaxation:
    """A planted bug: the chord of relu without its offset, below relu on (lower, 0)."""
    right = _RIGHT(lower, upper)
    return crown.Relaxation(right.alpha, right.slope, right.offset * 0.0, right.size)


def test_a_wrong_relaxation_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crown, "relax_relu", _too_low_upper_line)
    found = []
    for recipe in RECIPES:
        if recipe.kind in ("relu", "groupsort2", "maxmin"):
            found.extend(grid_violations(recipe)[0])
    assert any("local radius" in v for v in found), found


@pytest.mark.parametrize("name", ["fmnist_small_relu", "fmnist_small_groupsort2"])
def test_pgd_finds_nothing_inside_local_radii(name: str) -> None:
    from lipcert.datasets import load_dataset
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    loaded = load_model(FIXTURES / f"{name}.onnx", LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    executor = GraphExecutor(analysis.graph)
    certifier = LocalCertifier(analysis)
    data = np.load(Path(__file__).parents[2] / "sample_models/data/fashion_mnist_test_1000.npz")
    del load_dataset
    for i in (0, 4):
        x0 = data["x"][i].astype(np.float64) / 255.0
        with torch.no_grad():
            p = int(executor(torch.as_tensor(x0[None])).argmax())
        radius = local_radius(certifier, x0, p, 0.6, steps=5)
        assert radius > 0
        worst = pgd_worst_margin(executor, x0, p, radius, steps=30, restarts=2)
        assert worst > 0, f"sample {i}: PGD changed the decision within {radius}"


def test_radii_with_an_input_scale_stay_within_the_true_distance() -> None:
    """--mean/--std: the ball is in pixel space, the model reads (x - mean) / std."""
    recipe = Recipe(kind="relu", scale=3.0, num_logits=3, seed=11)
    analysis, executor = _prepared(recipe)
    mean, std = np.array([0.3, -0.2]), np.array([0.5, 2.0])

    def composed(x: torch.Tensor) -> torch.Tensor:
        return executor((x - torch.as_tensor(mean)) / torch.as_tensor(std))

    decision = Decision(composed)
    x = np.random.default_rng(7).uniform(-1.0, 1.0, size=(8, 2))
    classes = np.argmax(decision.logits(x), axis=1)
    truth = grid_truth(decision, x, classes, 4.0)
    certifier = LocalCertifier(analysis, input_scale=1.0 / std)
    proven = 0
    for i in range(len(x)):
        radius = local_radius(certifier, (x[i] - mean) / std, int(classes[i]), 4.0)
        assert radius <= truth.distance[i] * (1 + REL), (i, radius, truth.distance[i])
        proven += radius > 0
    assert proven >= 4


def test_radii_with_few_crown_rows_stay_within_the_true_distance() -> None:
    """max_rows: CROWN on the few unstable neurons that weigh most, caps for the rest."""
    recipe = Recipe(kind="relu", scale=3.0, num_logits=3, seed=11)
    analysis, executor = _prepared(recipe)
    decision = Decision(executor)
    x = np.random.default_rng(8).uniform(-1.2, 1.2, size=(8, 2))
    classes = np.argmax(decision.logits(x), axis=1)
    truth = grid_truth(decision, x, classes, HALF_WIDTH)
    few, full = LocalCertifier(analysis, max_rows=1), LocalCertifier(analysis)
    for i in range(len(x)):
        radius = local_radius(few, x[i], int(classes[i]), HALF_WIDTH)
        assert radius <= truth.distance[i] * (1 + REL), (i, radius, truth.distance[i])
        # Fewer CROWN rows, looser bounds (within one bisection step).
        step = HALF_WIDTH / 2**10
        assert radius <= local_radius(full, x[i], int(classes[i]), HALF_WIDTH) + step
