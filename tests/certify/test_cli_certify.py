"""`lipcert certify` end to end: radii against closed forms, files, gates and exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from linear_models import distance_to_boundary, linear_onnx
from typer.testing import CliRunner

from lipcert.cli import app

runner = CliRunner()


@pytest.fixture
def linear_case(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 3-class linear model on 1x4x4 images and 60 images with labels."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 16)) * 0.3
    bias = rng.normal(size=3) * 0.1
    images = rng.integers(0, 256, size=(60, 1, 4, 4), dtype=np.uint8)
    x = images.astype(np.float64) / 255
    labels = np.argmax(x.reshape(60, -1) @ weight.T + bias, axis=1)
    labels[:10] = (labels[:10] + 1) % 3  # ten wrong predictions
    model = linear_onnx(tmp_path / "linear.onnx", weight, bias, (1, 4, 4))
    data = tmp_path / "data.npz"
    np.savez(data, x=images, y=labels.astype(np.int64))
    return model, data, weight, bias, x


def run(*args: str) -> object:
    return runner.invoke(app, ["certify", *map(str, args)])


@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_radii_match_the_exact_distance_to_the_boundary(
    linear_case, tmp_path: Path, margins: str
) -> None:
    model, data, weight, bias, x = linear_case
    out = tmp_path / "radii.csv"
    result = run(model, "--dataset", data, "--csv", out, "--json", "--quiet", "--margins", margins)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    radius = np.array([float(r["radius"]) for r in rows])
    exact = distance_to_boundary(weight.astype(np.float32), bias.astype(np.float32), x)
    # never too large; smaller only by the rounding allowance over the pair's bound
    assert np.all(radius <= exact)
    slack = 1e-3 if margins == "float32" else 1e-9
    np.testing.assert_allclose(radius, exact, atol=slack)
    summary = json.loads(result.stdout)
    correct = np.array([r["correct"] == "True" for r in rows])
    assert summary["n"] == 60
    assert summary["accuracy"] == pytest.approx(correct.mean())
    assert summary["mcr"] == pytest.approx(np.mean(np.where(correct, radius, -radius)), abs=1e-9)
    assert summary["certificate"] == "pairwise"
    assert summary["fp_allowance"]["precision"] == margins


def test_csv_columns_and_json_keys_are_the_contract(linear_case, tmp_path: Path) -> None:
    model, data, *_ = linear_case
    out = tmp_path / "radii.csv"
    result = run(model, "--dataset", data, "--csv", out, "--json", "--quiet", "--eps", "36/255,0.5")
    header = out.read_text().splitlines()[0]
    assert header == "index,label,prediction,correct,margin,radius,signed_radius,runner_up,status"
    summary = json.loads(result.stdout)
    for key in (
        "n",
        "accuracy",
        "mcr",
        "certified_accuracy",
        "lipschitz_bound",
        "certificate",
        "passed",
    ):
        assert key in summary
    assert [c["label"] for c in summary["certified_accuracy"]] == ["36/255", "0.5"]
    assert summary["certified_accuracy"][0]["eps"] == pytest.approx(36 / 255)


def test_gate_passes_and_fails_with_the_exact_value(linear_case) -> None:
    model, data, *_ = linear_case
    passing = run(model, "--dataset", data, "--quiet", "--min-accuracy", "0.5")
    assert passing.exit_code == 0
    failing = run(
        model, "--dataset", data, "--quiet", "--json", "--min-accuracy", "0.9", "--min-mcr", "-100"
    )
    assert failing.exit_code == 1
    accuracy = json.loads(failing.stdout)["accuracy"]
    assert f"GateError: clean accuracy is {accuracy:.6g} < 0.9 required" in failing.stderr
    assert "MCR" not in failing.stderr  # only the failed gate is reported
    assert json.loads(failing.stdout)["passed"] is False


def test_certified_accuracy_gate_uses_gate_eps(linear_case) -> None:
    model, data, *_ = linear_case
    result = run(
        model,
        "--dataset",
        data,
        "--quiet",
        "--json",
        "--eps",
        "0.01,0.02",
        "--gate-eps",
        "0.05",
        "--min-certified-accuracy",
        "0.99",
    )
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    gate = summary["gates"][0]
    assert gate["name"] == "certified accuracy at eps=0.05"
    assert [c["label"] for c in summary["certified_accuracy"]] == ["0.01", "0.02", "0.05"]
    assert gate["value"] == summary["certified_accuracy"][2]["value"]


def test_gate_defaults_come_from_pyproject(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    (tmp_path / "pyproject.toml").write_text('[tool.lipcert]\nmin-accuracy = 0.99\neps = ["0.1"]\n')
    monkeypatch.chdir(tmp_path)
    result = run(model, "--dataset", data, "--quiet", "--json")
    assert result.exit_code == 1
    assert "clean accuracy" in result.stderr
    assert [c["label"] for c in json.loads(result.stdout)["certified_accuracy"]] == ["0.1"]
    overridden = run(model, "--dataset", data, "--quiet", "--min-accuracy", "0.1")
    assert overridden.exit_code == 0


def test_unknown_pyproject_key_is_a_usage_error(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    (tmp_path / "pyproject.toml").write_text("[tool.lipcert]\nmin-acuracy = 0.9\n")
    monkeypatch.chdir(tmp_path)
    result = run(model, "--dataset", data, "--quiet")
    assert result.exit_code == 2
    assert "unknown key 'min-acuracy'" in result.stderr


def test_github_step_summary_is_appended(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    summary = tmp_path / "summary.md"
    summary.write_text("before\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run(model, "--dataset", data, "--quiet", "--min-accuracy", "0.1")
    text = summary.read_text()
    assert text.startswith("before\n")
    assert "### lipcert certify" in text and "| gate: clean accuracy >= 0.1 |" in text


def test_interrupted_csv_write_leaves_no_file(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    import lipcert.reports.certify_report as report

    def broken(handle, result) -> None:
        handle.write("index,label\n0,")
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_csv", broken)
    out = tmp_path / "radii.csv"
    result = run(model, "--dataset", data, "--quiet", "--csv", out)
    assert result.exit_code != 0
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".radii.csv")] == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eps", "-0.1"], "expected --eps values > 0 but got '-0.1'"),
        (["--eps", "inf"], "expected --eps values like 36/255 or 0.5 (finite decimal numbers)"),
        (["--eps", "1_0"], "but got '1_0'"),
        (["--eps", "0.5,1/2"], "expected distinct --eps values but got '0.5' and '1/2'"),
        (["--limit", "0"], "expected --limit >= 1 but got 0"),
        (["--min-certified-accuracy", "70"], "fraction in [0, 1] but got 70; did you mean 0.70?"),
        (["--min-accuracy", "-1"], "expected --min-accuracy to be a fraction in [0, 1]"),
        (["--min-accuracy", "nan"], "expected a finite number for --min-accuracy"),
        (["--min-mcr", "nan"], "expected a finite number for --min-mcr"),
        (["--gate-eps", "0.1"], "--gate-eps sets the eps of the certified-accuracy gate"),
        (["--certificate", "best"], "expected --certificate auto, pairwise or global"),
        (["--limit", "x"], "Invalid value for '--limit'"),
        (["--no-such-option"], "No such option"),
        (
            ["--certificate", "global", "--margins", "float16"],
            "expected --margins float32 or float64",
        ),
        (["--batch-size", "0"], "expected --batch-size >= 1"),
        (["--std", "0"], "expected --std > 0"),
        (["--mean", "0.1,0.2"], "expected --mean with 1 value but got '0.1,0.2'"),
        (["--input-shape", "3,4,4"], "differs from the images"),
    ],
    ids=[
        "negative-eps",
        "inf-eps",
        "underscore-eps",
        "duplicate-eps",
        "zero-limit",
        "percentage-gate",
        "negative-gate",
        "nan-gate",
        "nan-mcr",
        "gate-eps-alone",
        "bad-certificate",
        "typer-type-error",
        "typer-unknown-option",
        "bad-margins",
        "zero-batch",
        "zero-std",
        "mean-length",
        "input-shape",
    ],
)
def test_usage_errors_exit_2_with_one_line(linear_case, extra: list[str], message: str) -> None:
    model, data, *_ = linear_case
    result = run(model, "--dataset", data, "--quiet", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_dataset_that_does_not_fit_the_model(linear_case, tmp_path: Path) -> None:
    model, *_ = linear_case
    data = tmp_path / "big.npz"
    np.savez(data, x=np.zeros((4, 1, 5, 5), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
    result = run(model, "--dataset", data, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("DatasetError: the images of 'big.npz' do not fit the model")


def test_labels_out_of_the_models_range(linear_case, tmp_path: Path) -> None:
    model, *_ = linear_case
    data = tmp_path / "labels.npz"
    np.savez(data, x=np.zeros((4, 1, 4, 4), dtype=np.uint8), y=np.array([0, 1, 2, 7]))
    result = run(model, "--dataset", data, "--quiet")
    assert result.exit_code == 2
    assert (
        "DatasetError: labels of 'labels.npz' range over 0..7 but the model has 3 logit(s)"
        in result.stderr
    )


def test_missing_named_dataset_lists_where_it_looked(
    linear_case, tmp_path: Path, monkeypatch
) -> None:
    model, *_ = linear_case
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIPCERT_DATA", raising=False)
    result = run(model, "--dataset", "cifar10", "--data-dir", tmp_path, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("DatasetError:")
    assert str(tmp_path) in result.stderr and "cifar-10" in result.stderr


def test_binary_model_with_one_logit(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(1, 4))
    bias = np.array([0.05])
    images = rng.integers(0, 256, size=(40, 1, 2, 2), dtype=np.uint8)
    x = images.astype(np.float64) / 255
    labels = ((x.reshape(40, -1) @ weight.T + bias)[:, 0] > 0).astype(np.int64)
    model = linear_onnx(tmp_path / "binary.onnx", weight, bias, (1, 2, 2))
    data = tmp_path / "binary.npz"
    np.savez(data, x=images, y=labels)
    out = tmp_path / "r.csv"
    result = run(
        model, "--dataset", data, "--quiet", "--json", "--csv", out, "--margins", "float64"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["certificate"] == "binary"
    assert json.loads(result.stdout)["accuracy"] == 1.0
    radius = np.array([float(r["radius"]) for r in csv.DictReader(out.open())])
    exact = np.abs(
        x.reshape(40, -1) @ weight.astype(np.float32).T.astype(np.float64) + np.float32(bias[0])
    )[:, 0]
    exact /= np.linalg.norm(weight.astype(np.float32))
    assert np.all(radius <= exact)
    np.testing.assert_allclose(radius, exact, atol=1e-9)


def test_preprocessing_makes_radii_pixel_space(linear_case, tmp_path: Path) -> None:
    model, data, weight, bias, x = linear_case
    out = tmp_path / "r.csv"
    result = run(
        model,
        "--dataset",
        data,
        "--quiet",
        "--csv",
        out,
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--margins",
        "float64",
    )
    assert result.exit_code == 0, result.output
    radius = np.array([float(r["radius"]) for r in csv.DictReader(out.open())])
    # g(x) = f((x - 0.5) / 0.25): a linear classifier with weights W / 0.25
    w = weight.astype(np.float32).astype(np.float64) / 0.25
    b = bias.astype(np.float32) - 0.5 * w.sum(axis=1)
    exact = distance_to_boundary(w, b, x)
    assert np.all(radius <= exact * (1 + 1e-12))
    np.testing.assert_allclose(radius, exact, rtol=1e-6)


@pytest.mark.parametrize(
    "content", ["truncated", "labels"], ids=["truncated_npz", "labels_out_of_range"]
)
def test_hostile_dataset_leaves_no_output_file(linear_case, tmp_path: Path, content: str) -> None:
    model, *_ = linear_case
    data = tmp_path / "bad.npz"
    if content == "truncated":
        np.savez(data, x=np.zeros((4, 1, 4, 4), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
        data.write_bytes(data.read_bytes()[:100])
    else:
        np.savez(data, x=np.zeros((4, 1, 4, 4), dtype=np.uint8), y=np.array([0, 1, 2, 9]))
    out = tmp_path / "radii.csv"
    result = run(model, "--dataset", data, "--csv", out, "--json")
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("DatasetError:") and len(result.stderr.strip().splitlines()) == 1
    )
    assert result.stdout == ""
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "linear.onnx"] or not out.exists()
    )
    assert not out.exists()
