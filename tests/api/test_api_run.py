"""What the command line needs from the API: preprocessing, gates, refinement, attacks,
progress callbacks, the Ray driver, the empirical bound (the CLI is a layer over these)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from api_models import NPZ, TAU8, linear_2d, points_2d
from typer.testing import CliRunner

import lipcert
from lipcert.certify.pipeline import choose_evaluators
from lipcert.errors import UsageError

EPS = [36 / 255, 72 / 255]


@pytest.fixture(scope="module")
def tau8() -> lipcert.Model:
    return lipcert.load(TAU8)


@pytest.fixture(scope="module")
def data() -> lipcert.datasets.Dataset:  # type: ignore[name-defined]
    return lipcert.load_dataset(str(NPZ), limit=120)


def test_mean_and_std_scale_the_radius_by_std(tau8: lipcert.Model, data) -> None:  # type: ignore[no-untyped-def]
    # model((x - m) / s): the margin is the model's at the normalised input and the bound is
    # L / s, so the radius in x's space is s times the model's radius at that input
    mean, std = 0.3, 0.45
    report = lipcert.certify_dataset(tau8, data, EPS, mean=mean, std=std, precision="float64")
    pixels = data.images.astype(np.float64) / 255
    inner = tau8.certify((pixels - mean) / std, precision="float64")
    expected = inner.radius * std
    assert np.array_equal(report.samples.prediction, inner.prediction)
    assert np.all(report.samples.radius <= expected * (1 + 1e-9) + 1e-12)
    np.testing.assert_allclose(report.samples.radius, expected, rtol=1e-6, atol=1e-9)
    assert report.lipschitz_bound == pytest.approx(tau8.lipschitz_bound / std, rel=1e-12)
    with pytest.raises(UsageError, match="std > 0"):
        lipcert.certify_dataset(tau8, data, EPS, std=0.0)
    with pytest.raises(UsageError, match="mean as one value or 1"):
        lipcert.certify_dataset(tau8, data, EPS, mean=[0.1, 0.2])


def test_cli_mean_std_csv_is_the_api_report(tau8: lipcert.Model, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lipcert.cli import app

    out = tmp_path / "r.csv"
    arguments = ["certify", str(TAU8), "--dataset", str(NPZ), "--limit", "120", "--quiet"]
    arguments += ["--mean", "0.3", "--std", "0.45", "--eps", "36/255", "--csv", str(out)]
    result = CliRunner().invoke(app, [*arguments, "--no-config"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    report = lipcert.certify_dataset(tau8, data, [36 / 255], mean=0.3, std=0.45)
    assert [float(r["radius"]) for r in rows] == report.samples.radius.tolist()


def test_gates_against_a_direct_count(tau8: lipcert.Model, data) -> None:  # type: ignore[no-untyped-def]
    report = lipcert.certify_dataset(tau8, data, EPS)
    correct = report.samples.prediction == data.labels
    accuracy = float(np.mean(correct))
    certified = float(np.mean(correct & (report.samples.radius > EPS[1])))
    gates = report.gates(
        min_accuracy=accuracy, min_certified_accuracy=certified + 0.01, gate_eps=EPS[1]
    )
    by_name = {g.name: g for g in gates}
    assert by_name["clean accuracy"].value == accuracy and by_name["clean accuracy"].passed
    gate = by_name[f"certified accuracy at eps={report.eps[1].label}"]
    assert gate.value == certified and not gate.passed
    (first,) = report.gates(min_certified_accuracy=0.0)  # default: the first eps
    assert first.value == float(np.mean(correct & (report.samples.radius > EPS[0])))
    (mcr,) = report.gates(min_mcr=report.mcr + 1e-9)
    assert not mcr.passed
    with pytest.raises(UsageError, match="gate_eps among the report's eps"):
        report.gates(min_certified_accuracy=0.5, gate_eps=0.123)
    with pytest.raises(UsageError, match="fraction"):
        report.gates(min_accuracy=1.5)


def test_refine_returns_a_new_report_never_below_the_old(tau8: lipcert.Model, data) -> None:  # type: ignore[no-untyped-def]
    report = lipcert.certify_dataset(tau8, data, [0.5])
    before = report.samples.radius.copy()
    calls: list[tuple[int, int]] = []
    refined = report.refine(budget=5.0, on_sample=lambda done, total: calls.append((done, total)))
    assert refined is not report and refined.refinement is not None
    assert np.array_equal(report.samples.radius, before)  # the report is left as it was
    assert np.all(refined.samples.radius >= before)
    frame = refined.to_pandas()
    assert set(frame["certificate"]) <= {"local", "global"}
    with pytest.raises(UsageError, match="report of a Dataset"):
        x = data.images[:5].astype(np.float32) / 255
        lipcert.certify_dataset(tau8, (x, data.labels[:5]), [0.5]).refine()
    with pytest.raises(UsageError, match="budget > 0"):
        report.refine(budget=0.0)


def test_progress_callback_counts_every_sample(tau8: lipcert.Model, data) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    report = lipcert.certify_dataset(tau8, data, EPS, batch_size=50, on_batch=seen.append)
    assert seen == [50, 50, 20] and report.n == 120
    x = data.images.astype(np.float32) / 255
    seen.clear()
    batches = [(x[:70], data.labels[:70]), (x[70:], data.labels[70:])]
    lipcert.certify_dataset(tau8, batches, EPS, batch_size=50, on_batch=seen.append)
    assert seen == [70, 50]


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_run_spec_is_the_spec_of_the_evaluators_it_stands_for(
    tau8: lipcert.Model, precision: str
) -> None:
    # a Ray driver sends this spec and this "has an exact pass" flag without building the
    # evaluators; they must be those the workers build
    spec, has_exact = tau8._run_spec(precision, None)  # type: ignore[arg-type]
    chosen = choose_evaluators(tau8.loaded, tau8.analysis, precision, None)
    assert spec is chosen.spec or spec == chosen.spec
    assert has_exact == (chosen.exact is not None)


def test_ray_driver_builds_no_evaluator(
    tau8: lipcert.Model,
    data,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'lipcert[ray]')")
    import ray

    import lipcert.api.model as api_model
    import lipcert.certify.pipeline as pipeline

    small = lipcert.load_dataset(str(NPZ), limit=40)
    alone = lipcert.certify_dataset(lipcert.load(TAU8), small, EPS, batch_size=16, threads=1)

    def refused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the driver built evaluators")

    monkeypatch.setattr(api_model, "choose_evaluators", refused)
    monkeypatch.setattr(pipeline, "choose_evaluators", refused)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        sharded = lipcert.certify_dataset(
            lipcert.load(TAU8), small, EPS, batch_size=16, threads=1, ray="local"
        )
    finally:
        if started:
            ray.shutdown()
    assert np.array_equal(sharded.samples.radius, alone.samples.radius)
    assert sharded.exact_samples == alone.exact_samples
    assert sharded.precision == alone.precision == "float32"


def test_attack_finds_no_adversary_inside_the_exact_radius() -> None:
    # a linear model: the radius is the distance to the nearest decision boundary, so the
    # smallest adversarial distance found can only be at or beyond it
    model = lipcert.from_torch(linear_2d(seed=4), (2,))
    x, y = points_2d(40, seed=4)
    with torch.no_grad():
        prediction = linear_2d(seed=4)(torch.as_tensor(x, dtype=torch.float32)).argmax(1)
    report = lipcert.attack_certificates(model, (x, prediction.numpy()), steps=5, restarts=2)
    assert report.violations == 0
    distance = report.result.adversarial_distance
    found = np.isfinite(distance)
    assert found.sum() > 30
    assert np.all(distance[found] >= report.result.radius[found])
    payload = report.to_dict()
    assert payload["violations"] == 0 and payload["n"] == 40
    with pytest.raises(UsageError, match="steps >= 1"):
        lipcert.attack_certificates(model, (x, y), steps=0)


def test_empirical_lower_bound_of_a_linear_map_is_its_spectral_norm() -> None:
    layer = linear_2d(seed=2)
    sigma = float(torch.linalg.svdvals(layer.weight.detach().double())[0])
    model = lipcert.from_torch(layer, (2,))
    lower = model.empirical_lower_bound()
    assert lower <= model.lipschitz_bound
    assert lower == pytest.approx(sigma, rel=1e-4)
