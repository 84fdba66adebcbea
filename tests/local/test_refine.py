"""Refinement: radii only grow, only where proven, within the budget; certify --refine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from local_support import pgd_worst_margin
from nets_2d import Recipe, build
from soundness_support import Decision, export, grid_truth, load
from typer.testing import CliRunner

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, analyse
from lipcert.certify.radii import Certificates, Status, certify_logits, choose_method
from lipcert.cli import app
from lipcert.graph.execute import GraphExecutor
from lipcert.local.refine import RefineOptions, refine_certificates

# A ReLU network far from 1-Lipschitz (weights 3x the usual scale): its global bound is
# loose, so local bounds prove more for many points.
RECIPE = Recipe(kind="relu", scale=3.0, num_logits=3, seed=11)
EPS = (0.05, 0.1, 0.2, 0.4)


def _setup(points: int = 24) -> tuple[Analysis, GraphExecutor, np.ndarray, Certificates]:
    _, exported = build(RECIPE)
    loaded = load(exported, (2,))
    analysis = analyse(loaded.graph)
    executor = GraphExecutor(analysis.graph)
    x = np.random.default_rng(3).uniform(-1.2, 1.2, size=(points, 2))
    with torch.no_grad():
        logits = executor(torch.as_tensor(x)).numpy()
    spec = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    norms = np.linalg.norm(x, axis=1)
    certificates = certify_logits(
        logits, spec, choose_method(spec, "auto"), spec.fp_allowance(norms)
    )
    return analysis, executor, x, certificates


def test_refined_radii_grow_only_where_proven_and_hold() -> None:
    analysis, executor, x, certificates = _setup()
    result = refine_certificates(
        analysis, certificates, lambda i: x[i], RefineOptions(eps=EPS, upper=1.0)
    )
    assert result.unsupported is None
    assert np.all(result.radius >= certificates.radius)
    assert np.array_equal(result.refined, result.radius > certificates.radius)
    assert result.count >= 3, result.count
    assert np.all(result.status[result.refined] == Status.CERTIFIED)
    decision = Decision(executor)
    refined = np.flatnonzero(result.refined)
    truth = grid_truth(decision, x[refined], certificates.prediction[refined], 2.5)
    for k, i in enumerate(refined):
        radius = result.radius[i]
        assert radius <= truth.distance[k] * (1 + 1e-9), (i, radius, truth.distance[k])
        worst = pgd_worst_margin(executor, x[i], int(certificates.prediction[i]), radius)
        assert worst > 0, (i, radius, worst)


def test_refined_radius_is_an_eps_asked_or_below_the_upper_limit() -> None:
    analysis, _, x, certificates = _setup(8)
    result = refine_certificates(analysis, certificates, lambda i: x[i], RefineOptions(eps=EPS))
    for i in np.flatnonzero(result.refined):
        # Slightly above the eps proven, so that "radius > eps" counts it; never more.
        assert any(e < result.radius[i] <= e * (1 + 1e-8) for e in EPS), result.radius[i]


def test_no_time_means_no_refinement() -> None:
    analysis, _, x, certificates = _setup(8)
    result = refine_certificates(
        analysis, certificates, lambda i: x[i], RefineOptions(eps=EPS, budget=1e-9)
    )
    assert result.count == 0
    assert result.attempted + result.skipped_for_time > 0
    assert np.array_equal(result.radius, certificates.radius)


def test_a_model_without_relaxations_keeps_its_global_radii() -> None:
    _, exported = build(Recipe(kind="tanh", scale=1.5, num_logits=3, seed=2))
    analysis = analyse(load(exported, (2,)).graph)
    x = np.random.default_rng(0).uniform(-1, 1, size=(6, 2))
    with torch.no_grad():
        logits = GraphExecutor(analysis.graph)(torch.as_tensor(x)).numpy()
    spec = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    certificates = certify_logits(
        logits, spec, choose_method(spec, "auto"), spec.fp_allowance(np.ones(6))
    )
    result = refine_certificates(analysis, certificates, lambda i: x[i], RefineOptions(eps=EPS))
    assert result.unsupported is not None and "Tanh" in result.unsupported
    assert np.array_equal(result.radius, certificates.radius)


runner = CliRunner()


def _files(tmp_path: Path) -> tuple[Path, Path]:
    _, exported = build(RECIPE)
    model = tmp_path / "net.onnx"
    onnx.save(export(exported, (2,)), str(model))
    x = np.random.default_rng(4).uniform(-1.2, 1.2, size=(30, 2)).astype(np.float32)
    with torch.no_grad():
        y = np.argmax(exported(torch.as_tensor(x)).numpy(), axis=1)
    data = tmp_path / "points.npz"
    np.savez(data, x=x, y=y)
    return model, data


def test_cli_refine_reports_json_and_csv(tmp_path: Path) -> None:
    model, data = _files(tmp_path)
    csv = tmp_path / "out.csv"
    base = ["certify", str(model), "--dataset", str(data), "--eps", "0.05,0.1,0.2"]
    result = runner.invoke(
        app, [*base, "--refine", "--csv", str(csv), "--json", "--quiet", "--no-config"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    refinement = report["refinement"]
    assert refinement["refined"] >= 1 and refinement["unsupported"] is None
    lines = csv.read_text().splitlines()
    assert lines[0].endswith(",status,certificate")
    local = [line for line in lines[1:] if line.endswith(",local")]
    assert len(local) == refinement["refined"]
    plain = runner.invoke(app, [*base, "--json", "--quiet", "--no-config"])
    before = {e["label"]: e["value"] for e in json.loads(plain.stdout)["certified_accuracy"]}
    after = {e["label"]: e["value"] for e in report["certified_accuracy"]}
    assert all(after[k] >= before[k] for k in before) and after != before
    assert json.loads(plain.stdout)["refinement"] is None


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        pytest.param(["--refine-budget", "10"], "needs --refine", id="budget_alone"),
        pytest.param(["--refine", "--refine-budget", "0"], "--refine-budget > 0", id="budget_0"),
        pytest.param(["--refine-radius", "-1"], "--refine-radius > 0", id="radius_negative"),
    ],
)
def test_cli_refine_usage_errors(tmp_path: Path, extra: list[str], match: str) -> None:
    model, data = _files(tmp_path)
    result = runner.invoke(
        app, ["certify", str(model), "--dataset", str(data), "--no-config", *extra]
    )
    assert result.exit_code == 2
    assert match in result.output
