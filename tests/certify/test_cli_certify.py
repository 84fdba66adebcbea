"""`lipcert certify` end to end: radii against closed forms, files, gates and exit codes."""

from __future__ import annotations

import csv
import json
import re
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

    def broken(handle, result, refined=None) -> None:
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
        (["--eps", "1e400"], "expected finite --eps values but got '1e400'"),
        (["--eps", "0.5,1/2"], "expected distinct --eps values but got '0.5' and '1/2'"),
        (["--limit", "0"], "expected --limit >= 1 but got 0"),
        (["--min-certified-accuracy", "70"], "fraction in [0, 1] but got 70; did you mean 0.70?"),
        (["--min-accuracy", "-1"], "expected --min-accuracy to be a fraction in [0, 1]"),
        (["--min-accuracy", "nan"], "expected a finite number for --min-accuracy"),
        (["--min-mcr", "nan"], "expected a finite number for --min-mcr"),
        (["--gate-eps", "0.1"], "--gate-eps sets the eps of the certified-accuracy gate"),
        (["--certificate", "best"], "expected --certificate auto, pairwise or global"),
        (["--split", "train"], "--split chooses a split of a named dataset, but"),
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
        "overflow-eps",
        "duplicate-eps",
        "zero-limit",
        "percentage-gate",
        "negative-gate",
        "nan-gate",
        "nan-mcr",
        "gate-eps-alone",
        "bad-certificate",
        "split-of-a-file",
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


# --- streams, duplicates, widths ------------------------------------------------------------


def test_report_on_stdout_and_json_alone_on_stdout(linear_case) -> None:
    model, data, *_ = linear_case
    plain = run(model, "--dataset", data, "--no-config")
    assert plain.exit_code == 0
    assert "certified accuracy" in plain.stdout and "clean accuracy" in plain.stdout
    with_json = run(model, "--dataset", data, "--no-config", "--json")
    assert with_json.exit_code == 0
    json.loads(with_json.stdout)  # nothing else on stdout
    assert "clean accuracy" in with_json.stderr  # the report moved to stderr


def test_failing_gate_is_said_once(linear_case) -> None:
    model, data, *_ = linear_case
    result = run(model, "--dataset", data, "--no-config", "--min-accuracy", "0.99")
    assert result.exit_code == 1
    output = result.stdout + result.stderr
    assert output.count("clean accuracy is") == 1
    assert "GateError" not in output and "FAILED: clean accuracy is" in result.stdout


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_certify_report_fits_the_width_without_losing_a_digit(
    linear_case, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    model, data, *_ = linear_case
    monkeypatch.setenv("COLUMNS", str(columns))
    result = run(model, "--dataset", data, "--no-config", "--eps", "36/255,72/255,108/255,1")
    summary = json.loads(run(model, "--dataset", data, "--no-config", "--json").stdout)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "…" not in result.stdout
    # the eps table's title on one line (rich wraps a title to its table's width)
    assert "certified accuracy (correct and radius > eps)" in lines
    for row in summary["per_class"]:
        cells = next(line.split() for line in lines if line.split()[:1] == [str(row["label"])])
        numbers = [f"{row['accuracy']:.3f}", *(f"{v:.3f}" for v in row["certified_accuracy"])]
        assert cells[1:] == [str(row["n"]), *numbers, f"{row['mcr']:.3f}"]


# --- files ---------------------------------------------------------------------------------


def test_csv_keeps_the_mode_of_the_file_it_replaces(linear_case, tmp_path: Path) -> None:
    import os
    import stat

    model, data, *_ = linear_case
    out = tmp_path / "radii.csv"
    out.write_text("old\n")
    out.chmod(0o644)
    assert run(model, "--dataset", data, "--quiet", "--csv", out).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert out.read_text().startswith("index,")
    fresh = tmp_path / "fresh.csv"
    old_mask = os.umask(0o027)
    try:
        assert run(model, "--dataset", data, "--quiet", "--csv", fresh).exit_code == 0
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0666 less the umask, as open() does


@pytest.mark.parametrize("target", ["model", "dataset", "folder", "no-folder"])
def test_csv_that_would_destroy_an_input_is_refused_before_the_work(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    import lipcert.api as api

    model, data, *_ = linear_case
    path = {
        "model": model,
        "dataset": data,
        "folder": tmp_path,
        "no-folder": tmp_path / "missing" / "r.csv",
    }[target]
    before = {p: p.read_bytes() for p in (model, data)}

    def no_work(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the dataset was read before the outputs were checked")

    monkeypatch.setattr(api, "load_dataset", no_work)
    result = run(model, "--dataset", data, "--quiet", "--csv", path)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("UsageError:") and "--csv" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (model, data)} == before


def test_csv_through_a_link_to_the_model_is_refused(linear_case, tmp_path: Path) -> None:
    model, data, *_ = linear_case
    link = tmp_path / "link.csv"
    link.symlink_to(model)
    result = run(model, "--dataset", data, "--quiet", "--csv", link)
    assert result.exit_code == 2 and "is the model" in result.stderr


def test_misclassified_rows_are_not_certified(linear_case, tmp_path: Path) -> None:
    model, data, *_ = linear_case
    out = tmp_path / "r.csv"
    assert run(model, "--dataset", data, "--quiet", "--csv", out).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    wrong = [r for r in rows if r["correct"] == "False"]
    assert len(wrong) == 10
    assert all(r["status"] != "certified" for r in wrong)
    assert {r["status"] for r in wrong} <= {"misclassified", "tie", "within_allowance"}
    assert all(r["status"] in ("certified", "within_allowance") for r in rows if r not in wrong)


def test_bad_step_summary_path_is_a_warning(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    result = run(model, "--dataset", data, "--quiet", "--min-accuracy", "0.1", "--no-config")
    assert result.exit_code == 0
    assert result.stderr.startswith("warning: cannot append the summary to $GITHUB_STEP_SUMMARY")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bug_in_lipcert_has_its_own_exit_code(
    linear_case, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipcert.api.data as api_data

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(api_data, "evaluate_gates", broken)
    model, data, *_ = linear_case
    result = run(model, "--dataset", data, "--quiet", "--no-config")
    assert result.exit_code == 3
    assert result.stderr.startswith("internal error (a bug in lipcert) ZeroDivisionError: oops")
    assert "report" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    shown = run(model, "--dataset", data, "--quiet", "--no-config", "--traceback")
    assert "Traceback (most recent call last)" in shown.stderr


def test_help_shows_the_config_table_and_plain_flags() -> None:
    result = runner.invoke(app, ["certify", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "[tool.lipcert]" in text
    assert "--json <bool>" not in text and "<bool>" not in text
    assert "--json" in text


def test_missing_model_is_refused_before_the_dataset_is_read(
    linear_case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipcert.api as api

    _, data, *_ = linear_case
    monkeypatch.setattr(api, "load_dataset", lambda *a, **k: pytest.fail("dataset read"))
    result = run(tmp_path / "nope.onnx", "--dataset", data, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("ModelLoadError: no model file at")


def test_output_formats_for_ci(linear_case) -> None:
    import xml.etree.ElementTree as ElementTree

    model, data, *_ = linear_case
    gates = ["--min-accuracy", "0.5", "--min-mcr", "100", "--no-config"]
    github = run(model, "--dataset", data, *gates, "--output-format", "github")
    assert github.exit_code == 1
    annotations = [line for line in github.stdout.splitlines() if line.startswith("::")]
    assert annotations[0].startswith("::notice title=lipcert certify::clean accuracy is ")
    assert annotations[1].startswith("::error title=lipcert certify::mean certifiable")
    junit = run(model, "--dataset", data, *gates, "--output-format", "junit")
    assert junit.exit_code == 1
    suite = ElementTree.fromstring(junit.stdout.split("\n", 1)[1])  # stdout is the XML alone
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None
    assert "< 100 required" in cases[1].find("failure").get("message")
    assert "clean accuracy" in junit.stderr  # the report
    both = run(model, "--dataset", data, "--json", "--output-format", "junit")
    assert both.exit_code == 2 and "not both" in both.stderr


@pytest.mark.parametrize("columns", [60, 80])
def test_many_eps_split_the_class_table_instead_of_cutting_numbers(
    linear_case, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    model, data, *_ = linear_case
    eps = ",".join(f"{k}/255" for k in range(1, 13))
    monkeypatch.setenv("COLUMNS", str(columns))
    result = run(model, "--dataset", data, "--no-config", "--eps", eps)
    summary = json.loads(
        run(model, "--dataset", data, "--no-config", "--eps", eps, "--json").stdout
    )
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert not re.search(r"[\d.]…|…[\d.]", result.stdout)
    for row in summary["per_class"]:
        cells = [
            c for line in lines if line.split()[:1] == [str(row["label"])] for c in line.split()[1:]
        ]
        expected = [str(row["n"]), f"{row['accuracy']:.3f}"]
        expected += [f"{v:.3f}" for v in row["certified_accuracy"]]
        assert sorted(cells) == sorted([*expected, f"{row['mcr']:.3f}"])


def test_step_summary_never_appends_to_an_input(
    linear_case, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, *_ = linear_case
    before = model.read_bytes()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(model))
    result = run(model, "--dataset", data, "--quiet", "--no-config")
    assert result.exit_code == 0
    assert model.read_bytes() == before
    assert result.stderr.strip().endswith("is the model: the summary was not appended")
