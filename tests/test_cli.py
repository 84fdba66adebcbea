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
    # every place searched is listed, the given folder first
    searched = result.stdout.split("searched, in order")[1].splitlines()[1:]
    assert searched[0].strip() == str(folder)
    assert str(tmp_path / ".keras" / "datasets" / "cifar-10-batches-py") in result.stdout


@pytest.mark.parametrize(
    "name", ["fmnist_binary_hkr_alpha0p98_m1", "cifar10_shaped_ce_tau16"], ids=["binary", "cifar"]
)
def test_sample_safetensors_name_their_zoo_factory(name: str) -> None:
    path = SAMPLES / f"{name}.safetensors"
    plain = runner.invoke(app, ["verify", str(path), "--json"])
    assert plain.exit_code in (0, 1), plain.output  # built from the arch its metadata names
    reference = runner.invoke(app, ["verify", str(SAMPLES / f"{name}.onnx"), "--json"])
    bound = json.loads(plain.stdout)["lipschitz_bound"]
    assert bound == pytest.approx(json.loads(reference.stdout)["lipschitz_bound"], rel=1e-4)
    wrong = runner.invoke(app, ["verify", str(path), "--arch", "lipcert.zoo:fashion_mnist_lipnet"])
    assert wrong.exit_code == 2
    assert "the file's metadata names arch 'lipcert.zoo:" in wrong.stderr


def test_torch_export_program_records_its_input_shape(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    program = torch.export.export(module, (torch.zeros(1, 3, 2, 2),))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    result = runner.invoke(app, ["verify", str(path), "--trust-model", "--json", "--expect", "99"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input_shape"] == [3, 2, 2]
    exact = float(np.linalg.svd(module[1].weight.detach().double().numpy(), compute_uv=False)[0])
    assert report["lipschitz_bound"] >= exact


def test_usage_errors_are_one_line() -> None:
    for args in (["certify"], ["verify"], ["nope"], ["verify", "--expect", "x", "m.onnx"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("UsageError: "), (args, result.stderr)


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_no_arguments_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ") and "certify" in result.stdout
