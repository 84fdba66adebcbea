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
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.gates import Gate, evaluate_gates
from lipcert.certify.mcr_gap import mcr_lower_bound, signed_lower
from lipcert.certify.metrics import summarise
from lipcert.certify.radii import Method, certify_logits
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


# --- the MCR of misclassified samples ---------------------------------------------------
#
# f(x) = x - 10^6 (one logit) at x = 1000000.5: the exact score is 1/2, so the exact
# function predicts class 1 with radius 1/2 / L. The float32 allowance (0.119) is taken off
# the margin, so the reported radius is 0.381: for a label 0 (wrong) the signed radius is
# -0.381, ABOVE the exact function's -0.5. A gate --min-mcr -0.45 passed on it.


def _shifted_identity(tmp_path: Path) -> lipcert.Model:
    path = linear_onnx(tmp_path / "shifted.onnx", np.array([[1.0]]), np.array([-1e6]), (1,))
    return lipcert.load(path)


def test_mcr_gate_does_not_pass_on_a_wrong_decision_less_robust_than_computed(
    tmp_path: Path,
) -> None:
    model = _shifted_identity(tmp_path)
    report = lipcert.certify_dataset(model, (np.array([[1000000.5]]), np.array([0])), [0.1])
    bound = report.lipschitz_bound
    exact_mcr = -Fraction(1, 2) / Fraction(bound)  # the exact function's signed radius
    assert Fraction(report.mcr) > exact_mcr + Fraction(1, 10)  # the hole: 0.119 above
    assert Fraction(report.mcr_lower_bound) <= exact_mcr
    (gate,) = report.gates(min_mcr=-0.45)
    assert not gate.passed, gate.message()
    assert Fraction(gate.value) <= exact_mcr
    # the look-alike: the same sample labelled 1 is right, and its reported radius is a
    # lower bound of the exact one: the gate at that radius passes
    right = lipcert.certify_dataset(model, (np.array([[1000000.5]]), np.array([1])), [0.1])
    assert Fraction(right.mcr) <= -exact_mcr
    assert right.mcr_lower_bound <= right.mcr <= right.mcr_lower_bound * (1 + 1e-15)
    (gate,) = right.gates(min_mcr=right.mcr_lower_bound)
    assert gate.passed and gate.value == right.mcr_lower_bound


def test_cli_mcr_gate_fails_and_json_has_the_lower_bound(tmp_path: Path) -> None:
    _shifted_identity(tmp_path)
    data = tmp_path / "one.npz"
    np.savez(data, x=np.array([[1000000.5]]), y=np.array([0]))
    result = runner.invoke(
        app,
        [
            "certify",
            str(tmp_path / "shifted.onnx"),
            *("--dataset", str(data), "--min-mcr", "-0.45", "--json", "--no-config"),
        ],
    )
    assert result.exit_code == 1, result.output
    payload = json.loads(result.stdout)
    assert payload["mcr"] > -0.45  # the reported MCR alone would have passed
    assert payload["fp_allowance"]["mcr_lower_bound"] <= -0.5 / payload["lipschitz_bound"]
    (gate,) = payload["gates"]
    assert not gate["passed"] and gate["value"] <= payload["fp_allowance"]["mcr_lower_bound"]


def _exact_signed(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, labels: np.ndarray, bounds: np.ndarray
) -> list[Fraction]:
    """The exact function's signed radii: exact rational logits of the float32 weights on
    the float64 inputs, margins over the spec's own pair bounds (the MCR's definition)."""
    w = [[Fraction(float(v)) for v in row] for row in weight.astype(np.float32)]
    b = [Fraction(float(v)) for v in bias.astype(np.float32)]
    signed = []
    for sample, label in zip(x, labels, strict=True):
        logits = [
            sum((wi * Fraction(float(v)) for wi, v in zip(row, sample, strict=True)), bi)
            for row, bi in zip(w, b, strict=True)
        ]
        top = max(logits)
        p = logits.index(top)
        if logits.count(top) > 1:
            signed.append(Fraction(0))
            continue
        radius = min(
            (top - logits[j]) / Fraction(float(bounds[p, j])) for j in range(len(logits)) if j != p
        )
        signed.append(radius if p == label else -radius)
    return signed


@pytest.mark.parametrize("margins", ["float32", "float64"])
def test_signed_lower_is_below_the_exact_signed_radius_near_the_boundaries(
    tmp_path: Path, margins: str
) -> None:
    """Three classes on inputs near (10^4, 10^4) (float32 rounds them by ~5e-4) and a bias
    that cancels the centre: margins at the allowance's scale and far beyond it, right and
    wrong, certified and within the allowance. Each per-sample bound is checked against the
    exact rational signed radius, and must stay within a few allowances of it."""
    from lipcert.certify.mcr_gap import signed_lower

    rng = np.random.default_rng(7)
    weight = rng.normal(size=(3, 2)).astype(np.float32)
    bias = -(weight.astype(np.float64) @ np.array([1e4, 1e4])).astype(np.float32)
    path = linear_onnx(tmp_path / "three.onnx", weight, bias, (2,))
    model = lipcert.load(path)
    # half at the allowance's scale (margins ~ 1e-3), half far beyond it (margins ~ 0.1)
    offsets = rng.normal(size=(400, 2)) * np.where(np.arange(400) < 200, 1e-3, 1e-1)[:, None]
    base = 1e4 + offsets
    labels = rng.integers(0, 3, size=400)
    report = lipcert.certify_dataset(model, (base, labels), [1e-4], precision=margins)
    result = report.result
    bounds = np.asarray(result.spec.pairwise_bounds)
    exact = _exact_signed(weight, bias, base, labels, bounds)
    lower = signed_lower(result.certificates, labels, result.spec, result.allowance)
    reported = np.where(
        result.certificates.prediction == labels,
        result.certificates.radius,
        -result.certificates.radius,
    )
    wrong = result.certificates.prediction != labels
    assert np.sum(wrong & (result.certificates.radius > 0)) > 20  # certified wrong ones
    above = [i for i in range(400) if Fraction(reported[i]) > exact[i]]
    if margins == "float32":
        assert len(above) > 20  # the reported signed radius exceeds the exact one there
    for i in range(400):
        assert Fraction(lower[i]) <= exact[i], (i, lower[i], float(exact[i]))
        assert lower[i] <= reported[i]
    width = 3 * np.sqrt(2) * result.allowance / np.min(bounds[bounds > 0]) + 1e-12
    assert np.all(np.asarray([float(e) for e in exact]) - lower <= width + np.abs(reported) * 1e-9)
    assert report.mcr_lower_bound <= float(sum(exact) / 400)


def _spec(pairwise: np.ndarray) -> CertificateSpec:
    k = len(pairwise)
    return CertificateSpec(
        lipschitz_bound=1.0,
        logit_bounds=(1.0,) * k,
        pairwise_bounds=pairwise,
        num_logits=k,
        input_shape=(2,),
        size_known=True,
    )


def test_a_nan_logit_leaves_the_mcr_unbounded_below_and_the_gate_failing() -> None:
    """A NaN logit's sample counts 0 in the MCR; the exact function's is unknown there."""
    spec = _spec(np.sqrt(2.0) * (1 - np.eye(3)))
    logits = np.array([[3.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.0, 2.0, 0.0]])
    labels = np.array([0, 0, 1])
    allowance = np.full(3, 1e-3)
    certificates = certify_logits(logits, spec, Method.PAIRWISE, allowance)
    lower = signed_lower(certificates, labels, spec, allowance)
    assert lower[1] == -np.inf and np.all(np.isfinite(lower[[0, 2]]))
    assert mcr_lower_bound(certificates, labels, spec, allowance) == -np.inf
    summary = summarise(certificates, labels, [])
    assert summary.mcr > 0
    (gate,) = evaluate_gates(
        summary,
        gate_eps=None,
        min_certified_accuracy=None,
        min_accuracy=None,
        min_mcr=-1e300,
        mcr_lower=mcr_lower_bound(certificates, labels, spec, allowance),
    )
    assert not gate.passed and "-inf < -1e+300 required" in gate.message()


def test_zero_pair_bound_gives_no_lower_bound_from_that_pair() -> None:
    """Identical head rows 1 and 2 (K_12 = 0): a sample predicted 1 within the allowance of
    2 has a lower bound from the other pairs only if one exists; here none bounds class 2's
    radius against 1, so the bound is -inf, never a finite number from a zero divisor."""
    pairwise = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    spec = _spec(pairwise)
    logits = np.array([[0.0, 1.0, 1.0 - 1e-9]])
    allowance = np.array([1e-3])
    certificates = certify_logits(logits, spec, Method.PAIRWISE, allowance)
    assert certificates.radius[0] == 0
    assert signed_lower(certificates, np.array([0]), spec, allowance)[0] == -np.inf


def test_csv_radii_round_trip_bit_for_bit(tmp_path: Path) -> None:
    model = _shifted_identity(tmp_path)
    x = 1e6 + np.random.default_rng(1).normal(size=(50, 1)) * 3
    y = (x[:, 0] > 1e6).astype(np.int64)
    report = lipcert.certify_dataset(model, (x, y), [0.1])
    out = tmp_path / "r.csv"
    report.to_csv(out)
    import csv

    rows = list(csv.DictReader(out.open()))
    for row, radius, margin in zip(rows, report.samples.radius, report.samples.margin, strict=True):
        assert float(row["radius"]) == radius and float(row["margin"]) == margin


def test_mcr_lower_bound_of_radii_whose_sum_overflows() -> None:
    """Correct certified radii near 7e307 (pair bounds of 1e-306): their sum is beyond the
    largest float (math.fsum raised OverflowError, an internal error of certify's report);
    the bound is still at most the exact mean of the radii and within 1e-15 of it."""
    spec = _spec(1e-306 * (1 - np.eye(3)))
    logits = np.array([[100.0, 0.0, 0.0], [0.0, 90.0, 0.0], [0.0, 0.0, 80.0]])
    labels = np.array([0, 1, 2])
    allowance = np.full(3, 1e-3)
    certificates = certify_logits(logits, spec, Method.PAIRWISE, allowance)
    assert np.all(certificates.radius > 5e307) and np.all(np.isfinite(certificates.radius))
    exact_mean = sum(Fraction(float(r)) for r in certificates.radius) / 3
    bound = mcr_lower_bound(certificates, labels, spec, allowance)
    assert Fraction(bound) <= exact_mean
    assert Fraction(bound) >= exact_mean * (1 - Fraction(1, 10**15))
