"""`lipcert attack`: it must find nothing inside sound certificates, and catch unsound ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "certify"))
from linear_models import distance_to_boundary, linear_onnx

import lipcert.certify.pipeline as pipeline
from lipcert.cli import app

runner = CliRunner()


@pytest.fixture
def linear_case(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(3, 8))
    bias = rng.normal(size=3) * 0.2
    images = rng.integers(0, 256, size=(12, 2, 2, 2), dtype=np.uint8)
    x = images.astype(np.float64) / 255
    labels = np.argmax(x.reshape(12, -1) @ weight.T + bias, axis=1)
    model = linear_onnx(tmp_path / "linear.onnx", weight, bias, (2, 2, 2))
    data = tmp_path / "data.npz"
    np.savez(data, x=images, y=labels)
    exact = distance_to_boundary(weight.astype(np.float32), bias.astype(np.float32), x)
    return model, data, exact


def test_linear_model_no_violation_and_a_tight_gap(linear_case, tmp_path: Path) -> None:
    model, data, exact = linear_case
    out = tmp_path / "attack.csv"
    result = runner.invoke(
        app,
        [
            "attack",
            str(model),
            "--dataset",
            str(data),
            "--json",
            "--quiet",
            "--csv",
            str(out),
            "--margins",
            "float64",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["violations"] == 0 and summary["passed"] is True
    assert summary["certified"] == 12
    # For a linear classifier the certificate is exact: the smallest attack found lies just
    # above the certified radius (bisection resolution), never below it.
    import csv

    rows = list(csv.DictReader(out.open()))
    distance = np.array([float(r["adversarial_distance"]) for r in rows])
    radius = np.array([float(r["radius"]) for r in rows])
    assert np.all(distance >= radius)
    assert np.all(distance <= exact * 1.1)
    assert summary["gap"]["median_ratio"] > 0.9


def test_inflated_certificates_are_caught(linear_case, monkeypatch: pytest.MonkeyPatch) -> None:
    """Radii three times too large must be broken by the attack: exit 1, reported loudly."""
    model, data, _ = linear_case
    original = pipeline.certify_logits

    def over_claiming(*args, **kwargs):
        certificates = original(*args, **kwargs)
        object.__setattr__(certificates, "radius", certificates.radius * 3)
        return certificates

    monkeypatch.setattr(pipeline, "certify_logits", over_claiming)
    result = runner.invoke(
        app, ["attack", str(model), "--dataset", str(data), "--json", "--no-distance"]
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["violations"] > 6
    assert all(v["distance"] <= v["radius"] for v in summary["violating_samples"])
    assert "UNSOUND CERTIFICATE" in result.stderr
    assert "UnsoundCertificateError:" in result.stderr


def test_executor_that_disagrees_with_onnxruntime_is_refused(linear_case, monkeypatch) -> None:
    model, data, _ = linear_case
    import lipcert.graph.execute as execute

    original = execute._gemm

    def wrong_gemm(node, args, ex):
        (out,) = original(node, args, ex)
        return [out + 0.5]

    monkeypatch.setitem(execute._OPS, "Gemm", wrong_gemm)
    result = runner.invoke(app, ["attack", str(model), "--dataset", str(data), "--quiet"])
    # Caught when the model loads: lipcert's float64 executor must agree with onnxruntime
    # (lipcert.evaluators.crosscheck) before any bound is used.
    assert result.exit_code == 2
    assert "differs from onnxruntime's" in result.stderr
    assert "ModelLoadError:" in result.stderr


def test_float32_executor_that_disagrees_is_refused_by_the_attack(linear_case, monkeypatch) -> None:
    """A bug only in the float32 torch graph (the attack's gradients) passes certify (which
    runs onnxruntime and float64) and is caught by the attack's own check."""
    import torch

    model, data, _ = linear_case
    import lipcert.graph.execute as execute

    original = execute._gemm

    def wrong_in_float32(node, args, ex):
        (out,) = original(node, args, ex)
        return [out + 0.5 if ex.dtype == torch.float32 else out]

    monkeypatch.setitem(execute._OPS, "Gemm", wrong_in_float32)
    result = runner.invoke(app, ["attack", str(model), "--dataset", str(data), "--quiet"])
    assert result.exit_code == 1
    assert "the graph executed in torch and onnxruntime differ" in result.stderr


def test_progress_counts_every_sample_once_in_chunks(linear_case) -> None:
    from lipcert.attack import Attacker, AttackSettings
    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
    from lipcert.frontends import load_model

    model, data, exact = linear_case
    loaded = load_model(model)
    analysis = analyse(loaded.graph)
    images = np.load(data)["x"].astype(np.float64) / 255
    settings = AttackSettings(steps=5, restarts=2, chunk=5)
    attacker = Attacker(
        analysis.graph, analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF), settings
    )
    seen: list[int] = []
    prediction = np.load(data)["y"]
    result = attacker.attack(
        images, prediction, exact * 0.99, search_distance=False, on_progress=seen.append
    )
    assert seen == [5, 5, 2]
    assert not result.violation.any()
