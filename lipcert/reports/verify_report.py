"""The report of `lipcert verify`: a table of layers, the composed bounds and a verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lipcert.bounds.compose import Analysis
from lipcert.bounds.spec import CertificateSpec
from lipcert.model import LoadedModel
from lipcert.reports.format import bound_text, shape_text


@dataclass(frozen=True)
class Verdict:
    expected: float
    tolerance: float
    passed: bool


def verdict(spec: CertificateSpec, expected: float, tolerance: float) -> Verdict:
    """Passed when the logit vector's bound is at most expected * (1 + tolerance)."""
    return Verdict(expected, tolerance, spec.lipschitz_bound <= expected * (1.0 + tolerance))


def pairwise_range(spec: CertificateSpec) -> tuple[float, float] | None:
    if spec.pairwise_bounds is None or spec.num_logits < 2:
        return None
    off_diagonal = spec.pairwise_bounds[~np.eye(spec.num_logits, dtype=bool)]
    return float(off_diagonal.min()), float(off_diagonal.max())


def render(
    console: Console,
    model: LoadedModel,
    analysis: Analysis,
    result: Verdict,
    empirical: float | None,
) -> None:
    spec = analysis.spec
    table = Table(
        title=f"Lipschitz bounds of {model.path} (L2, input {shape_text(spec.input_shape)})",
        caption="bound: of the layer alone (exact, or an upper bound); cumulative: input to here",
    )
    table.add_column("layer", overflow="ellipsis", max_width=28, no_wrap=True)
    table.add_column("op", no_wrap=True)
    table.add_column("in -> out", no_wrap=True)
    table.add_column("bound", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("cumulative", justify="right", no_wrap=True)
    table.add_column("method", overflow="fold", min_width=20)
    for layer in analysis.layers:
        table.add_row(
            layer.name,
            layer.op,
            f"{shape_text(layer.input_shape)} -> {shape_text(layer.output_shape)}",
            bound_text(layer.bound),
            "exact" if layer.exact else "upper",
            bound_text(layer.cumulative),
            layer.method,
        )
    console.print(table)
    for note in analysis.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)

    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("logit vector bound", bound_text(spec.lipschitz_bound))
    logits = spec.logit_bounds
    summary.add_row("per-logit bound", f"{bound_text(min(logits))} .. {bound_text(max(logits))}")
    pair = pairwise_range(spec)
    if pair is not None:
        summary.add_row(
            "pairwise bound (f_i - f_j)", f"{bound_text(pair[0])} .. {bound_text(pair[1])}"
        )
    if spec.head is not None and spec.body_bound is not None:
        summary.add_row("linear head / body bound", f"{spec.head} / {bound_text(spec.body_bound)}")
    if empirical is not None:
        ratio = empirical / spec.lipschitz_bound if spec.lipschitz_bound > 0 else float("nan")
        summary.add_row(
            "empirical lower bound",
            f"{empirical:.6g} (tightness {ratio:.3f}; an estimate, never certifies)",
        )
    console.print(summary)
    limit = result.expected * (1.0 + result.tolerance)
    if result.passed:
        console.print(
            f"[green]PASSED[/]: bound {bound_text(spec.lipschitz_bound)} <= "
            f"{result.expected:g} * (1 + {result.tolerance:g})",
            highlight=False,
        )
    else:
        console.print(
            f"[red]FAILED[/]: bound {bound_text(spec.lipschitz_bound)} > {limit:.6g} = "
            f"{result.expected:g} * (1 + {result.tolerance:g})",
            highlight=False,
        )
        if pair is not None and max(logits) <= limit:
            console.print(
                "each logit is within the bound but the logit vector is not (a per-logit head); "
                "certify uses the pairwise bounds, which are sound",
                highlight=False,
            )


def to_json(
    model: LoadedModel, analysis: Analysis, result: Verdict, empirical: float | None
) -> dict[str, Any]:
    spec = analysis.spec
    return {
        "model": model.path,
        "format": model.format,
        "input_shape": list(spec.input_shape),
        "size_known": spec.size_known,
        "lipschitz_bound": spec.lipschitz_bound,
        "logit_bounds": list(spec.logit_bounds),
        "pairwise_bounds": None if spec.pairwise_bounds is None else spec.pairwise_bounds.tolist(),
        "body_bound": spec.body_bound,
        "head": spec.head,
        "layers": [
            {
                "name": layer.name,
                "op": layer.op,
                "input_shape": list(layer.input_shape),
                "output_shape": list(layer.output_shape),
                "bound": layer.bound,
                "cumulative": layer.cumulative,
                "method": layer.method,
                "exact": layer.exact,
            }
            for layer in analysis.layers
        ],
        "notes": analysis.notes,
        "empirical_lower_bound": empirical,
        "tightness": None if empirical is None else empirical / spec.lipschitz_bound,
        "expected": result.expected,
        "tolerance": result.tolerance,
        "passed": result.passed,
    }
