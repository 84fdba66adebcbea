"""The report of `lipcert verify`: a table of layers, the composed bounds and a verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
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


# Ops that only move values: bound exactly 1, shown inside the pattern they surround.
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
# Below this width for layer names, the table becomes one block of lines per layer.
_MIN_NAME_WIDTH = 8


@dataclass(frozen=True)
class _Row:
    name: str
    op: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    bound: float
    exact: bool
    cumulative: float
    method: str
    covers: tuple[str, ...]  # the ops of a fused pattern (and the reshapes folded into it)


def input_title(spec: CertificateSpec) -> str:
    """The input the bounds are about: a fixed size, or an open one probed at a size."""
    if spec.size_known:
        return f"input {shape_text(spec.input_shape)}"
    return f"input size open, probed at {shape_text(spec.input_shape)}"


def table_rows(analysis: Analysis, details: bool = False) -> list[_Row]:
    """One row per layer; without details, reshapes around a fused pattern join its row."""
    rows: list[_Row] = []
    nodes = [node for node, _ in analysis.node_bounds]
    for index, layer in enumerate(analysis.layers):
        node = nodes[index] if index < len(nodes) else None
        body = tuple(inner.op for inner in node.body) if node is not None and node.body else ()
        rows.append(
            _Row(
                layer.name,
                layer.op,
                layer.input_shape,
                layer.output_shape,
                layer.bound,
                layer.exact,
                layer.cumulative,
                layer.method,
                body,
            )
        )
    if details:
        return rows
    merged: list[_Row] = []
    closed = True  # whether the last merged row already took the reshape after it
    for row in rows:
        previous = merged[-1] if merged else None
        if previous is not None and _is_reshape(previous) and row.covers:
            merged[-1] = _fold(previous, row, before=True)
            closed = False
        elif previous is not None and previous.covers and not closed and _is_reshape(row):
            merged[-1] = _fold(row, previous, before=False)
            closed = True
        else:
            merged.append(row)
            closed = not row.covers
    return merged


def _is_reshape(row: _Row) -> bool:
    return row.op in _RESHAPES and row.exact and row.bound == 1.0 and not row.covers


def _fold(reshape: _Row, pattern: _Row, *, before: bool) -> _Row:
    from dataclasses import replace

    if before:
        return replace(
            pattern, input_shape=reshape.input_shape, covers=(reshape.op, *pattern.covers)
        )
    return replace(
        pattern,
        output_shape=reshape.output_shape,
        cumulative=reshape.cumulative,
        covers=(*pattern.covers, reshape.op),
    )


def render(
    console: Console,
    model: LoadedModel,
    analysis: Analysis,
    result: Verdict,
    empirical: float | None,
    *,
    details: bool = False,
) -> None:
    """The layer table, the composed bounds and the verdict, within the console's width.

    Numbers and shapes are never cut: their columns are as wide as their widest entry; only
    layer names are shortened (with an ellipsis), and below a usable width each layer takes
    a few lines instead of a table row. Methods are footnotes, keyed [1], [2], ...
    """
    spec = analysis.spec
    rows = table_rows(analysis, details)
    methods: dict[str, int] = {}
    for row in rows:
        methods.setdefault(row.method, len(methods) + 1)
    console.print(
        f"Lipschitz bounds of {escape(model.path)} (L2, {input_title(spec)})",
        highlight=False,
        soft_wrap=False,
    )
    for show_input in (True, False):  # narrow consoles: output shapes only
        cells = [
            (
                row.name,
                row.op,
                (f"{shape_text(row.input_shape)}>" if show_input else "")
                + shape_text(row.output_shape),
                ("= " if row.exact else "<=") + bound_text(row.bound),
                bound_text(row.cumulative),
                f"[{methods[row.method]}]",
            )
            for row in rows
        ]
        headers = ("layer", "op", "in>out" if show_input else "out", "bound", "cumulative", "m")
        widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
        fixed = sum(widths[1:]) + 2 * (len(headers) - 1)
        name_width = min(widths[0], console.width - fixed)
        if name_width >= _MIN_NAME_WIDTH:
            break
    if name_width >= _MIN_NAME_WIDTH:
        table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
        for i, header in enumerate(headers):
            table.add_column(
                header,
                justify="right" if i in (3, 4) else "left",
                no_wrap=True,
                overflow="ellipsis",
                width=name_width if i == 0 else widths[i],
            )
        for cell in cells:
            table.add_row(*(escape(c) for c in cell))
        console.print(table)
    else:
        for cell in cells:
            console.print(escape(f"{cell[0]} ({cell[1]}, {cell[2]})"), highlight=False)
            console.print(
                escape(f"  bound {cell[3]}  cumulative {cell[4]}  {cell[5]}"), highlight=False
            )
    if details:
        for row in rows:
            if row.covers:
                console.print(
                    escape(f"{row.name} ({row.op}) covers {', '.join(row.covers)}"),
                    highlight=False,
                )
    console.print(
        "bound: of the layer alone ('=' exact, '<=' an upper bound); cumulative: from the "
        "input to here" + ("" if details else "; --details lists the ops a pattern covers"),
        highlight=False,
    )
    for method, key in methods.items():
        console.print(escape(f"[{key}] {method}"), highlight=False)
    for note in analysis.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)

    summary = Table(show_header=False, box=None, padding=(0, 1, 0, 0))
    summary.add_column(style="bold", no_wrap=True)
    summary.add_column(overflow="fold")
    summary.add_row("logit vector bound", bound_text(spec.lipschitz_bound))
    logits = spec.logit_bounds
    summary.add_row("per-logit bound", f"{bound_text(min(logits))} .. {bound_text(max(logits))}")
    pair = pairwise_range(spec)
    if pair is not None:
        summary.add_row("pairwise (f_i - f_j)", f"{bound_text(pair[0])} .. {bound_text(pair[1])}")
    if spec.head is not None and spec.body_bound is not None:
        summary.add_row("linear head", escape(spec.head))
        summary.add_row("body bound", bound_text(spec.body_bound))
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
