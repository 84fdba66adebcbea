"""Figures (matplotlib, headless): certified accuracy against radius, the accuracy-robustness
Pareto front, and the decision regions of a model with 2-D inputs with certified disks.

matplotlib is an optional dependency (`pip install "lipcert[plot]"`), imported only when a
figure is made. Figures are drawn on the Agg canvas, without pyplot, so nothing here needs a
display or touches global plotting state. Every function returns the `Figure`; `save` writes
it as PNG or SVG (from the file's suffix).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lipcert.errors import UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lipcert.api.data import DatasetReport
    from lipcert.api.model import Model, Precision
    from lipcert.compare import Comparison

FORMATS = ("png", "svg")


def _figure(width: float = 6.0, height: float = 4.5) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            'plots need matplotlib: pip install "lipcert[plot]" (or pip install matplotlib)'
        ) from None
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def check_plot_path(path: str | Path) -> Path:
    """The path, if its suffix is a format lipcert writes (.png or .svg)."""
    target = Path(path)
    if target.suffix.lower().lstrip(".") not in FORMATS:
        raise UsageError(f"expected a plot file ending in .png or .svg but got {str(path)!r}")
    return target


def save(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as PNG or SVG, chosen by the suffix of `path`, atomically."""
    import io

    from lipcert.reports.files import write_bytes_atomically

    target = check_plot_path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=target.suffix.lower().lstrip("."), dpi=150)
    write_bytes_atomically(target, buffer.getvalue())
    return target


def certified_accuracy_curve(
    radius: np.ndarray, correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The step function r -> fraction of samples correct with radius > r, at its corners.

    Returns (r, value) with r = 0 and every distinct radius of a correct sample, ascending;
    the value holds on [r_k, r_(k+1)) and is 0 from the largest radius on.
    """
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if radius.shape != correct.shape or radius.ndim != 1 or len(radius) == 0:
        raise UsageError("expected radius and correct as two non-empty arrays of one length")
    corners = np.unique(np.concatenate([[0.0], radius[correct]]))
    good = np.sort(radius[correct])
    # count of correct samples with radius > r: those after the last one <= r
    above = len(good) - np.searchsorted(good, corners, side="right")
    return corners, above / len(radius)


def _curves(source: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (radius, correct) from a report, a comparison, or a mapping of them."""
    from lipcert.api.data import DatasetReport
    from lipcert.compare import Comparison

    if isinstance(source, Comparison):
        return {n: _pair(r) for n, r in zip(source.names, source.reports, strict=True)}
    if isinstance(source, DatasetReport):
        return {source.model_name: _pair(source)}
    if isinstance(source, Mapping):
        return {
            str(name): _pair(value) if isinstance(value, DatasetReport) else _arrays(value)
            for name, value in source.items()
        }
    raise UsageError(
        "expected a DatasetReport, a Comparison, or a mapping of names to reports or "
        f"(radius, correct) arrays but got {type(source).__name__}"
    )


def _pair(report: DatasetReport) -> tuple[np.ndarray, np.ndarray]:
    correct = report.samples.correct
    assert correct is not None
    return report.samples.radius, correct


def _arrays(value: Any) -> tuple[np.ndarray, np.ndarray]:
    radius, correct = value
    return np.asarray(radius, dtype=np.float64), np.asarray(correct, dtype=bool)


def plot_certified_accuracy(
    source: Any,
    path: str | Path | None = None,
    *,
    eps: Sequence[float] = (),
    title: str | None = None,
) -> Figure:
    """Certified accuracy against the radius, one curve per model.

    `source`: a DatasetReport, a Comparison, or a mapping name -> report or
    (radius, correct) arrays. The value at r is the fraction of samples both correct and
    certified at a radius > r (at r = 0: the certified clean accuracy). `eps` draws
    vertical guides.
    """
    curves = _curves(source)
    figure = _figure()
    axes = figure.add_subplot()
    for name, (radius, correct) in curves.items():
        r, value = certified_accuracy_curve(radius, correct)
        # a step function: drawn to the right of each corner, ending at 0
        end = r[-1] * 1.05 if r[-1] > 0 else 1.0
        axes.step(np.append(r, end), np.append(value, 0.0), where="post", label=name, linewidth=1.5)
    for e in eps:
        axes.axvline(float(e), color="0.6", linestyle=":", linewidth=1)
    axes.set_xlabel("L2 radius")
    axes.set_ylabel("certified accuracy (correct and radius > r)")
    axes.set_ylim(0, 1.02)
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.set_title(title or "certified accuracy against radius")
    if len(curves) > 1:
        axes.legend(fontsize="small")
    if path is not None:
        save(figure, path)
    return figure


def plot_pareto(
    comparison: Comparison, path: str | Path | None = None, *, title: str | None = None
) -> Figure:
    """Clean accuracy against the robustness measure of a comparison, front highlighted."""
    accuracy = np.array([r.accuracy for r in comparison.reports])
    robust = np.array(comparison.robustness_values())
    on_front = np.array(comparison.on_front, dtype=bool)
    figure = _figure()
    axes = figure.add_subplot()
    axes.scatter(robust[~on_front], accuracy[~on_front], color="0.55", label="dominated", zorder=2)
    axes.scatter(
        robust[on_front], accuracy[on_front], color="tab:red", label="Pareto front", zorder=3
    )
    order = np.argsort(robust[on_front])
    axes.plot(
        robust[on_front][order],
        accuracy[on_front][order],
        color="tab:red",
        linewidth=1,
        zorder=1,
        gid="pareto-front",
    )
    for name, x, y in zip(comparison.names, robust, accuracy, strict=True):
        axes.annotate(
            Path(name).stem, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    measure = comparison.robustness
    axes.set_xlabel(
        "MCR (mean certifiable robustness, L2)"
        if measure == "mcr"
        else measure.replace("certified_accuracy@", "certified accuracy at eps = ")
    )
    axes.set_ylabel("clean accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(title or "accuracy-robustness trade-off")
    if path is not None:
        save(figure, path)
    return figure


def plot_decision_regions(
    model: Model,
    x: Any,
    y: Any = None,
    path: str | Path | None = None,
    *,
    bounds: tuple[float, float, float, float] | None = None,
    resolution: int = 200,
    precision: Precision = "float32",
    title: str | None = None,
) -> Figure:
    """For a model with 2-D inputs: its predicted class over a grid, and around each point of
    `x` a disk of its certified radius (nothing the disk contains can change the decision).

    `bounds` = (x0, x1, y0, y1) of the grid; by default the points' box with a margin.
    """
    from matplotlib.patches import Circle

    if tuple(model.input_shape) != (2,):
        raise UsageError(
            f"expected a model with 2-D inputs but its input shape is {model.input_shape!r}"
        )
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise UsageError(f"expected resolution >= 2 but got {resolution!r}")
    batch = model.certify(x, y, precision=precision)
    points = np.asarray(_numpy(x), dtype=np.float64).reshape(-1, 2)
    if bounds is None:
        low, high = points.min(axis=0), points.max(axis=0)
        pad = 0.15 * float(np.max(high - low)) + 1e-6
        bounds = (low[0] - pad, high[0] + pad, low[1] - pad, high[1] + pad)
    x0, x1, y0, y1 = bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    logits = model.logits(grid)
    classes = (logits[:, 0] > 0).astype(int) if logits.shape[1] == 1 else logits.argmax(axis=1)
    figure = _figure(6.0, 6.0)
    axes = figure.add_subplot()
    levels = np.arange(model.num_classes + 1) - 0.5
    axes.contourf(gx, gy, classes.reshape(gx.shape), levels=levels, cmap="Pastel1", alpha=0.8)
    colours = [
        f"C{int(c) % 10}" for c in (batch.label if batch.label is not None else batch.prediction)
    ]
    for (px, py), radius, colour in zip(points, batch.radius, colours, strict=True):
        if radius > 0:
            axes.add_patch(Circle((px, py), radius, fill=False, edgecolor=colour, linewidth=0.8))
    axes.scatter(points[:, 0], points[:, 1], c=colours, s=8, zorder=3)
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_aspect("equal")
    axes.set_title(title or "decision regions and certified disks")
    if path is not None:
        save(figure, path)
    return figure


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
