"""Figures: the plotted data, and files that render (PNG opens, SVG parses), not pixels."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "api"))

from api_models import NPZ, TAU8, points_2d, relu_2d

import lipcert
from lipcert import plots
from lipcert.errors import UsageError

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")


def brute_force_accuracy(radius: np.ndarray, correct: np.ndarray, r: float) -> float:
    return float(np.mean([c and rad > r for rad, c in zip(radius, correct, strict=True)]))


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")


def test_curve_is_the_certified_accuracy_at_every_radius() -> None:
    rng = np.random.default_rng(0)
    radius = np.round(rng.exponential(0.3, 200), 2)  # repeated values on purpose
    radius[:10] = 0.0
    correct = rng.random(200) < 0.8
    r, value = plots.certified_accuracy_curve(radius, correct)
    assert r[0] == 0 and np.all(np.diff(r) > 0)
    for corner, v in zip(r, value, strict=True):
        assert v == brute_force_accuracy(radius, correct, corner)
    # between corners the value holds: check midpoints and beyond the last corner
    for left, right, v in zip(r[:-1], r[1:], value[:-1], strict=True):
        assert brute_force_accuracy(radius, correct, (left + right) / 2) == v
    assert brute_force_accuracy(radius, correct, r[-1] + 1) == 0


def test_a_reports_curve_is_its_certified_accuracy_at_every_radius() -> None:
    x, y = points_2d(80, seed=5)
    report = lipcert.certify_dataset(lipcert.from_torch(relu_2d(seed=5), (2,)), (x, y), eps=[0.1])
    r, value = report.curve()
    correct = report.samples.prediction == y
    assert r[0] == 0 and np.all(np.diff(r) > 0)
    for corner, v in zip(r, value, strict=True):
        assert v == brute_force_accuracy(report.samples.radius, correct, corner)
    # at an eps the curve gives the report's certified accuracy
    index = np.searchsorted(r, 0.1, side="right") - 1
    assert value[index] == report.certified_accuracy[0.1]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_certified_accuracy_figure_plots_the_curve(tmp_path: Path, suffix: str) -> None:
    x, y = points_2d(120, seed=3)
    model = lipcert.from_torch(relu_2d(seed=3), (2,), name="net")
    report = lipcert.certify_dataset(model, (x, y), eps=[0.05, 0.1])
    path = tmp_path / f"curve{suffix}"
    figure = plots.plot_certified_accuracy(report, path, eps=[0.05, 0.1])
    (axes,) = figure.axes
    curve = next(line for line in axes.lines if line.get_label() == "net")
    xs, ys = curve.get_xdata(), curve.get_ydata()
    correct = report.samples.prediction == y
    for r, v in zip(xs[:-1], ys[:-1], strict=True):
        assert v == brute_force_accuracy(report.samples.radius, correct, r)
    assert ys[-1] == 0
    assert path.stat().st_size > 0
    (assert_png if suffix == ".png" else assert_svg)(path)


def test_pareto_figure_marks_the_front(tmp_path: Path) -> None:
    x, y = points_2d(80, seed=1)
    models = [lipcert.from_torch(relu_2d(seed=s), (2,), name=f"m{s}") for s in range(4)]
    comparison = lipcert.compare_models(models, (x, y), eps=[0.1])
    figure = plots.plot_pareto(comparison, tmp_path / "front.svg")
    (axes,) = figure.axes
    front = next(c for c in axes.collections if c.get_label() == "Pareto front")
    dominated = next(c for c in axes.collections if c.get_label() == "dominated")
    expected = {
        (report.mcr, report.accuracy)
        for report, on in zip(comparison.reports, comparison.on_front, strict=True)
        if on
    }
    assert {tuple(p) for p in front.get_offsets()} == expected
    assert len(dominated.get_offsets()) == len(models) - len(expected)
    assert_svg(tmp_path / "front.svg")


def test_decision_regions_draw_each_certified_disk(tmp_path: Path) -> None:
    from matplotlib.patches import Circle

    module = relu_2d(seed=6)
    model = lipcert.from_torch(module, (2,))
    x, y = points_2d(30, seed=6)
    figure = plots.plot_decision_regions(model, x, y, tmp_path / "regions.png", resolution=60)
    (axes,) = figure.axes
    circles = [p for p in axes.patches if isinstance(p, Circle)]
    result = model.certify(x, y)
    drawn = sorted((tuple(c.center), c.radius) for c in circles)
    expected = sorted((tuple(p), r) for p, r in zip(x, result.radius, strict=True) if r > 0)
    assert drawn == expected
    assert_png(tmp_path / "regions.png")


def test_decision_regions_need_two_dimensional_inputs() -> None:
    model = lipcert.load(TAU8)
    with pytest.raises(UsageError, match="2-D inputs"):
        plots.plot_decision_regions(model, np.zeros((1, 1, 28, 28), dtype=np.float32))


def test_only_png_and_svg(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\.png or \.svg"):
        plots.check_plot_path(tmp_path / "figure.pdf")


def test_certify_plot_option(tmp_path: Path) -> None:
    from lipcert.cli import app

    path = tmp_path / "curve.png"
    result = CliRunner().invoke(
        app,
        [
            *("certify", str(TAU8), "--dataset", str(NPZ), "--limit", "40"),
            *("--quiet", "--plot", str(path)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert_png(path)
