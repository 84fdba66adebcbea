"""Red team of the numbers a user reads: no printed accuracy, radius, MCR or eps may claim more
than was computed, and no printed bound (allowance, MCR gap, Lipschitz bound) less.

Ground truth: counts of samples (exact rationals) and the JSON, which carries every digit.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_models import linear_onnx
from typer.testing import CliRunner

import lipcert
from lipcert.certify.gates import Gate
from lipcert.cli import app
from lipcert.reports.format import lower_text, significant_text

runner = CliRunner()

# 30,000 feature vectors of one feature through f(x) = x: class 1 has 29,999 samples of
# which one is wrong, class 0 one right sample. Accuracy 29,999 / 30,000 = 0.99996667 and
# class 1's 29,998 / 29,999 = 0.99996667: nearest rounding shows both as 1.0000 / 1.000.
N = 30_000


@pytest.fixture(scope="module")
def almost_all(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("almost_all")
    model = linear_onnx(folder / "identity.onnx", np.array([[1.0]]), np.array([0.0]), (1,))
    x = np.ones((N, 1))
    y = np.ones(N, dtype=np.int64)
    x[0, 0], y[0] = -1.0, 1  # wrong
    x[1, 0], y[1] = -1.0, 0  # right, class 0
    data = folder / "data.npz"
    np.savez(data, x=x, y=y)
    return model, data


def _numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", text)


def test_accuracies_are_never_printed_rounded_up(
    almost_all: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = almost_all
    summary_file = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary_file))
    monkeypatch.setenv("COLUMNS", "120")
    result = runner.invoke(
        app,
        ["certify", str(model), "--dataset", str(data), "--eps", "1/2", "--json", "--no-config"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    exact = Fraction(N - 1, N)
    assert Fraction(payload["accuracy"]) == Fraction(float(exact))  # every digit in JSON
    report = result.stderr
    (accuracy_line,) = [line for line in report.splitlines() if "clean accuracy" in line]
    assert _numbers(accuracy_line) == ["0.9999"]
    (eps_row,) = [line for line in report.splitlines() if line.strip().startswith("1/2")]
    assert _numbers(eps_row)[-1] == "0.9999"  # certified accuracy at 1/2
    (class_row,) = [line for line in report.splitlines() if line.startswith("1 ")]
    # class 1: n, accuracy, certified accuracy, MCR (29,997 / 29,999 of a radius near 1)
    cells = class_row.split()
    assert cells[1] == str(N - 1)
    assert cells[2] == "0.999" and cells[3] == "0.999"
    assert Fraction(cells[4]) <= Fraction(payload["per_class"][1]["mcr"])
    markdown = summary_file.read_text()
    assert "| clean accuracy | 0.9999 |" in markdown
    assert "| certified accuracy at eps=1/2 | 0.9999 |" in markdown
    assert "| 1.0000 |" not in markdown


def test_printed_bounds_are_never_below_the_json(almost_all: tuple[Path, Path]) -> None:
    model, data = almost_all
    result = runner.invoke(
        app, ["certify", str(model), "--dataset", str(data), "--eps", "1/2", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    text = " ".join(result.stderr.split())
    allowance = re.search(r"allowance up to (\S+) on the logits \(median (\S+);", text)
    assert allowance is not None, text
    assert float(allowance.group(1)) >= payload["fp_allowance"]["max"] > 0
    assert float(allowance.group(2)) >= payload["fp_allowance"]["median"]
    gap = re.search(r"at most (\S+) above", text)
    assert gap is not None, text
    assert float(gap.group(1)) >= payload["fp_allowance"]["mcr_gap_bound"] > 0
    mcr = re.search(r"MCR (\S+) \(mean signed radius\)", text)
    assert mcr is not None and Fraction(mcr.group(1)) <= Fraction(payload["mcr"])


def test_eps_column_is_not_rounded_above_the_value_compared(
    almost_all: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--eps 2/3 compares radii with 0.66666666666666674; nearest rounding printed 0.66667."""
    model, data = almost_all
    monkeypatch.setenv("COLUMNS", "120")
    result = runner.invoke(app, ["certify", str(model), "--dataset", str(data), "--eps", "2/3"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if line.strip().startswith("2/3")]
    shown = Fraction(row.split()[1])
    assert shown <= Fraction(2, 3)
    assert shown > Fraction(2, 3) - Fraction(1, 10**5)


def test_gate_message_shows_the_value_below_a_threshold_it_misses_by_1e_11(
    almost_all: tuple[Path, Path],
) -> None:
    """0.9999666667 < 0.99996667: the message printed '0.999967 < 0.999967 required'."""
    model, data = almost_all
    result = runner.invoke(
        app,
        ["certify", str(model), "--dataset", str(data), "--min-accuracy", "0.99996667", "--json"],
    )
    assert result.exit_code == 1, result.output
    (gate,) = json.loads(result.stdout)["gates"]
    assert gate["value"] < gate["threshold"] and not gate["passed"]
    message = re.search(r"clean accuracy is (\S+) < (\S+) required", result.stderr)
    assert message is not None, result.stderr
    assert Fraction(message.group(1)) <= Fraction(N - 1, N)
    assert float(message.group(2)) == 0.99996667


def test_gate_message_passed_never_shows_the_value_below_its_threshold() -> None:
    gate = Gate("clean accuracy", 0.70000004, 0.70000001)
    assert gate.passed
    shown, threshold = re.findall(r"is (\S+) >= (\S+) required", gate.message())[0]
    assert float(shown) >= float(threshold) == 0.70000001
    missed = Gate("clean accuracy", 0.69999996, 0.7)
    assert missed.message() == "clean accuracy is 0.699999 < 0.7 required"
    exact = Gate("clean accuracy", 0.7, 0.7)  # the float 0.69999999999999996
    assert exact.message() == "clean accuracy is 0.7 >= 0.7 required"


def test_api_eps_labels_carry_every_digit(almost_all: tuple[Path, Path]) -> None:
    """eps=2/3 as a float was labelled "0.666667", above the value the radii were compared
    with: a radius of 0.6666668 was counted 'certified at 0.666667'."""
    model, _ = almost_all
    loaded = lipcert.load(model)
    x = np.array([[0.6666668], [0.9]])
    y = np.array([1, 1])
    report = lipcert.certify_dataset(loaded, (x, y), [2 / 3], precision="float64")
    ((eps, value),) = report.summary.certified_accuracy
    assert value == 1.0  # 0.6666668 - rounding > 2/3
    assert float(eps.label) == eps.value == 2 / 3
    assert json.loads(report.to_json())["certified_accuracy"][0]["label"] == repr(2 / 3)


def test_compare_table_rounds_measures_down_and_the_bound_up(tmp_path: Path) -> None:
    """L = 1.0004 printed 1.000 (a bound understated) and 0.99996667 printed 1.000."""
    model = linear_onnx(tmp_path / "a.onnx", np.array([[1.0004]]), np.array([0.0]), (1,))
    x = np.ones((N, 1))
    y = np.ones(N, dtype=np.int64)
    x[0, 0] = -1.0
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    result = CliRunner().invoke(
        app, ["compare", str(model), "--dataset", str(data), "--eps", "1/2", "--json"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    (line,) = [text for text in result.stderr.splitlines() if text.startswith(("│ a", "| a"))]
    cells = [cell.strip() for cell in re.split(r"[│|]", line) if cell.strip()]
    accuracy, mcr, certified, bound = (Fraction(cell) for cell in cells[1:5])
    assert accuracy <= Fraction(row["accuracy"]) and accuracy == Fraction(999, 1000)
    assert mcr <= Fraction(row["mcr"])
    assert certified <= Fraction(row["certified_accuracy@1/2"])
    assert bound >= Fraction(row["lipschitz_bound"]) > 1


# Finite floats of every magnitude the reports meet (accuracies, radii, MCRs, allowances).
_VALUES = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, decimals=st.integers(0, 6))
def test_lower_text_is_a_lower_bound_within_one_unit(value: float, decimals: int) -> None:
    shown = Fraction(lower_text(value, decimals))
    exact = Fraction(value)
    assert shown <= exact + abs(exact) * Fraction(1, 10**12)
    assert shown > exact - Fraction(1, 10**decimals)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES.filter(lambda v: v != 0), digits=st.integers(1, 8), up=st.booleans())
def test_significant_text_rounds_the_right_way(value: float, digits: int, up: bool) -> None:
    shown = Fraction(significant_text(value, digits, up=up))
    exact = Fraction(value)
    slack = abs(exact) * Fraction(1, 10**12)
    unit = abs(exact) * Fraction(10, 10**digits)  # one unit of the last digit, or less
    if up:
        assert exact - slack <= shown < exact + unit
    else:
        assert exact - unit < shown <= exact + slack


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [(0.29, 2, "0.29"), (0.29, 4, "0.2900"), (2 / 3, 4, "0.6666"), (-2 / 3, 4, "-0.6667")],
)
def test_lower_text_cases(value: float, decimals: int, text: str) -> None:
    assert lower_text(value, decimals) == text
