"""Command-line behaviour not covered elsewhere: --version, datasets, verify --empirical."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "certify"))
from linear_models import linear_onnx

from lipcert import __version__
from lipcert.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lipcert {__version__}"


def test_empirical_lower_bound_of_a_linear_model_is_its_norm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 9)).astype(np.float32)
    model = linear_onnx(tmp_path / "lin.onnx", weight, np.zeros(4), (1, 3, 3))
    result = runner.invoke(app, ["verify", str(model), "--json", "--empirical", "--expect", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    exact = float(np.linalg.svd(weight.astype(np.float64), compute_uv=False)[0])
    assert report["lipschitz_bound"] >= exact
    assert report["empirical_lower_bound"] <= report["lipschitz_bound"]
    assert report["empirical_lower_bound"] == pytest.approx(exact, rel=1e-6)
    assert report["tightness"] == pytest.approx(1.0, rel=1e-6)


def test_empirical_lower_bound_never_exceeds_the_bound_on_a_sample_model() -> None:
    model = SAMPLES / "fmnist_ce_tau8.onnx"
    result = runner.invoke(app, ["verify", str(model), "--json", "--empirical"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert 0 < report["empirical_lower_bound"] <= report["lipschitz_bound"]


def test_datasets_lists_what_it_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests_support_idx import write_fashion_mnist_test  # type: ignore[import-not-found]

    folder = tmp_path / "fm"
    folder.mkdir()
    write_fashion_mnist_test(folder)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["datasets", "--data-dir", str(folder)])
    assert result.exit_code == 0, result.output
    flat = "".join(part.strip("│ ") for part in result.stdout.splitlines())
    assert "fashion-mnist" in flat and str(folder) in flat.replace("│", "").replace(" ", "")
    assert "not found" in result.stdout  # cifar10 is not there
