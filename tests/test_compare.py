"""compare_models, its Pareto front (against a brute-force check) and `lipcert compare`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "api"))

from api_models import NPZ, SAMPLES, points_2d, relu_2d

import lipcert
from lipcert.compare import pareto_front
from lipcert.errors import UsageError


def brute_force_front(points: list[tuple[float, float]]) -> list[bool]:
    """Straight from the definition: p is on the front unless some q is >= on both
    coordinates and > on one (NaN points are neither on it nor dominate)."""
    result = []
    for i, (a, b) in enumerate(points):
        if np.isnan(a) or np.isnan(b):
            result.append(False)
            continue
        beaten = False
        for j, (c, d) in enumerate(points):
            if i == j or np.isnan(c) or np.isnan(d):
                continue
            if c >= a and d >= b and (c > a or d > b):
                beaten = True
        result.append(not beaten)
    return result


coordinate = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, float("nan")]) | st.floats(0, 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=12))
def test_pareto_front_matches_brute_force(points: list[tuple[float, float]]) -> None:
    assert pareto_front(points) == brute_force_front(points)


@pytest.mark.parametrize(
    ("points", "front"),
    [
        pytest.param([(0.9, 0.1), (0.8, 0.5), (0.7, 0.4)], [True, True, False], id="one_dominated"),
        pytest.param([(0.5, 0.5), (0.5, 0.5)], [True, True], id="equal_points_both_on_it"),
        pytest.param([(0.5, 0.5), (0.5, 0.6)], [False, True], id="tie_on_one_axis"),
        pytest.param([(0.5, 0.5)], [True], id="alone"),
    ],
)
def test_pareto_front_cases(points: list[tuple[float, float]], front: list[bool]) -> None:
    assert pareto_front(points) == front


def test_compare_models_front_is_brute_force_on_its_table() -> None:
    x, y = points_2d(200, seed=7)
    models = [lipcert.from_torch(relu_2d(seed=s), (2,), name=f"net{s}") for s in range(5)]
    for robustness in ("mcr", 0.05):
        comparison = lipcert.compare_models(models, (x, y), eps=[0.05, 0.1], robustness=robustness)
        frame = comparison.to_pandas()
        column = "mcr" if robustness == "mcr" else "certified_accuracy@0.05"
        points = list(zip(frame["accuracy"], frame[column], strict=True))
        assert frame["pareto"].tolist() == brute_force_front(points)
        assert comparison.front == [
            n for n, on in zip(frame["model"], frame["pareto"], strict=True) if on
        ]
        assert frame["model"].tolist() == [f"net{s}" for s in range(5)]
        for report, model in zip(comparison.reports, models, strict=True):
            assert report.lipschitz_bound == model.lipschitz_bound


def test_compare_refuses_what_it_cannot_compare() -> None:
    x, y = points_2d(20)
    model = lipcert.from_torch(relu_2d(), (2,))
    with pytest.raises(UsageError, match="at least one model"):
        lipcert.compare_models([], (x, y))
    with pytest.raises(UsageError, match="distinct model names"):
        lipcert.compare_models([model, model], (x, y))
    with pytest.raises(UsageError, match="expected 2 names but got 1"):
        lipcert.compare_models([model, model], (x, y), names=["a"])
    with pytest.raises(UsageError, match="robustness"):
        lipcert.compare_models([model], (x, y), robustness="accuracy")


def test_compare_command(tmp_path: Path) -> None:
    from lipcert.cli import app

    csv = tmp_path / "table.csv"
    models = [SAMPLES / f"fmnist_ce_tau{t}.onnx" for t in (128, 8, 2)]
    result = CliRunner().invoke(
        app,
        [
            "compare",
            *map(str, models),
            *("--dataset", str(NPZ), "--limit", "60", "--eps", "36/255,1"),
            *("--json", "--csv", str(csv)),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["robustness"] == "mcr"
    rows = payload["models"]
    assert [r["model"] for r in rows] == ["fmnist_ce_tau128", "fmnist_ce_tau8", "fmnist_ce_tau2"]
    points = [(r["accuracy"], r["mcr"]) for r in rows]
    expected = [r["model"] for r, on in zip(rows, brute_force_front(points), strict=True) if on]
    assert payload["pareto_front"] == expected
    table = pd.read_csv(csv)
    assert list(table.columns) == [
        *("model", "n", "accuracy", "mcr", "certified_accuracy@36/255", "certified_accuracy@1"),
        *("lipschitz_bound", "load_seconds", "certify_seconds", "pareto"),
    ]
    assert table["n"].tolist() == [60, 60, 60]
    assert np.all(np.diff(table["mcr"].to_numpy()) > 0)  # tau 128 -> 8 -> 2: more robust


def test_compare_normalises_every_model_as_certify_does() -> None:
    """--mean/--std: each model's row is what `certify` reports with the same options (the
    radii of x -> model((x - mean) / std), in pixel space); a std per channel that does not
    fit the images is refused."""
    from lipcert.cli import app

    models = [SAMPLES / f"fmnist_ce_tau{t}.onnx" for t in (8, 2)]
    data = ("--dataset", str(NPZ), "--limit", "40", "--eps", "36/255,1")
    normalised = ("--mean", "0.2", "--std", "0.5")
    runs = {}
    for name, extra in (("plain", ()), ("normalised", normalised)):
        result = CliRunner().invoke(app, ["compare", *map(str, models), *data, *extra, "--json"])
        assert result.exit_code == 0, result.output
        runs[name] = {row["model"]: row for row in json.loads(result.stdout)["models"]}
    for model in models:
        alone = CliRunner().invoke(
            app, ["certify", str(model), *data, *normalised, "--json", "--quiet", "--no-config"]
        )
        assert alone.exit_code == 0, alone.output
        report = json.loads(alone.stdout)
        row = runs["normalised"][model.stem]
        assert row["mcr"] == report["mcr"] and row["accuracy"] == report["accuracy"]
        assert row["mcr"] != runs["plain"][model.stem]["mcr"]
    bad = CliRunner().invoke(
        app, ["compare", *map(str, models), *data, "--mean", "0.2", "--std", "0.5,0.5"]
    )
    assert bad.exit_code == 2


def test_compare_command_refuses_a_bad_plot_name(tmp_path: Path) -> None:
    from lipcert.cli import app

    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(SAMPLES / "fmnist_ce_tau8.onnx"),
            *("--dataset", str(NPZ), "--limit", "5", "--plot", str(tmp_path / "x.jpg")),
        ],
    )
    assert result.exit_code == 2
    assert ".png or .svg" in result.output


def test_pairs_of_identical_models_are_both_on_the_front() -> None:
    x, y = points_2d(50)
    a = lipcert.from_torch(relu_2d(seed=1), (2,), name="a")
    b = lipcert.from_torch(relu_2d(seed=1), (2,), name="b")
    comparison = lipcert.compare_models([a, b], (x, y), eps=[0.1])
    assert comparison.front == ["a", "b"]
    first, second = comparison.reports
    assert np.array_equal(first.samples.radius, second.samples.radius)
