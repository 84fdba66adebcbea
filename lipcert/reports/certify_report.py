"""The report of `lipcert certify`: terminal tables, JSON summary, per-sample CSV, Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lipcert.certify.gates import Gate
from lipcert.certify.mcr_gap import mcr_lower_bound
from lipcert.certify.metrics import Summary
from lipcert.certify.pipeline import STATUS_NAMES, CertifyResult, Preprocessing
from lipcert.certify.radii import Certificates, Method, Status
from lipcert.datasets import Dataset
from lipcert.local.refine import RefineResult
from lipcert.reports.format import bound_text, lower_text, significant_text

if TYPE_CHECKING:
    import pandas as pd

CSV_COLUMNS = (
    "index",
    "label",
    "prediction",
    "correct",
    "margin",
    "radius",
    "signed_radius",
    "runner_up",
    "status",
)

_METHOD_TEXT = {
    Method.PAIRWISE: "pairwise: (f_p - f_j) / (||w_p - w_j|| L_body), min over j",
    Method.GLOBAL: "global: (top1 - top2) / (sqrt(2) L)",
    Method.BINARY: "binary: |f| / L",
}


@dataclass(frozen=True)
class Context:
    """What the report says about where the numbers come from."""

    model: str
    dataset: Dataset
    preprocessing: Preprocessing | None
    notes: tuple[str, ...]
    precision: str = "float32"
    config: str | None = None  # the [tool.lipcert] file used, if any
    refinement: RefineResult | None = None  # certify --refine: local certificates added


def input_space(context: Context) -> str:
    if context.dataset.is_features:
        text = "the units of the features as given (no scaling)"
    elif context.dataset.split == "folder":  # imagefolder: resized and cropped first
        height, width = context.dataset.images.shape[2:]
        text = (
            f"the preprocessed {height}x{width} pixels (resized, centre-cropped), "
            "scaled to [0, 1], not the original files"
        )
    else:
        text = "pixels scaled to [0, 1]"
    if context.preprocessing is not None:
        text += "; the certified function includes the --mean/--std normalisation"
    return text


def render(console: Console, context: Context, result: CertifyResult, gates: list[Gate]) -> None:
    """The human report. Numbers are never cut: text wraps, number columns do not."""
    summary = result.summary
    spec = result.spec
    dataset = context.dataset
    console.print(
        f"[bold]{escape(context.model)}[/] on [bold]{escape(dataset.name)}[/] "
        f"({dataset.split}, {summary.n} samples, {escape(dataset.source)})",
        highlight=False,
    )
    head = Table(show_header=False, box=None, padding=(0, 1, 0, 0))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    head.add_row("certificate", _METHOD_TEXT[result.certificates.method])
    head.add_row("Lipschitz bound", f"{bound_text(spec.lipschitz_bound)} (logit vector, L2)")
    head.add_row("radii in", input_space(context))
    median = float(np.median(result.allowance)) if len(result.allowance) else 0.0
    head.add_row(
        "margins",
        f"{context.precision}; rounding allowance up to "
        f"{_up(float(np.max(result.allowance, initial=0)))} on the logits (median "
        f"{_up(median)}; a guaranteed bound, taken off every margin)",
    )
    if result.exact is not None:
        head.add_row("recomputed in float64", f"{result.exact_samples} of {len(result.exact)}")
    head.add_row("clean accuracy", lower_text(summary.accuracy, 4))
    mcr_text = f"{lower_text(summary.mcr, 4)} (mean signed radius)"
    exact_text = []  # what is guaranteed of the exact function's MCR
    if result.mcr_gap_bound is not None:
        exact_text.append(f"at most {_up(result.mcr_gap_bound)} above")
    lower = _mcr_lower(result)
    if np.isfinite(lower):
        exact_text.append(f"at least {lower_text(lower, 4)}")
    elif summary.n:
        exact_text.append("not bounded below (a NaN or infinite logit)")
    if exact_text:
        mcr_text += "; the exact function's is " + " and ".join(exact_text)
    head.add_row("MCR", mcr_text)
    head.add_row(
        "radius",
        f"mean {lower_text(summary.mean_radius, 4)}, median {lower_text(summary.median_radius, 4)}",
    )
    if summary.ties or summary.non_finite or summary.within_allowance:
        head.add_row(
            "not certified",
            f"{summary.ties} ties, {summary.non_finite} NaN/Inf logits, "
            f"{summary.within_allowance} margins within the float allowance",
        )
    head.add_row(
        "time", f"{result.seconds:.2f} s ({summary.n / max(result.seconds, 1e-9):.0f} samples/s)"
    )
    head.add_row("config", escape(context.config) if context.config else "none")
    if context.refinement is not None:
        head.add_row("refined", _refinement_text(context.refinement))
    console.print(head)
    for note in context.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)

    title = "certified accuracy (correct and radius > eps)"
    # wide enough for its title (rich wraps a title to the table's width)
    table = Table(title=title, box=box.SIMPLE_HEAD, min_width=len(title))
    table.add_column("eps", justify="right", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("certified accuracy", justify="right", no_wrap=True)
    for eps, value in summary.certified_accuracy:
        # eps rounded up would claim more than "radius > eps" proved: shown rounded down
        table.add_row(
            escape(eps.label), significant_text(eps.value, 5, up=False), lower_text(value, 4)
        )
    console.print(table)

    title, *lines = _class_tables(summary, console.width)
    console.print()
    console.print(title, markup=False, highlight=False)
    for line in lines:  # fitted to the width already: never cropped
        console.print(line, markup=False, highlight=False, overflow="ignore", crop=False)
    for gate in gates:
        style = "green" if gate.passed else "red"
        console.print(
            f"[{style}]{'PASSED' if gate.passed else 'FAILED'}[/]: {escape(gate.message())}",
            highlight=False,
        )


def _class_tables(summary: Summary, width: int) -> list[str]:
    """The per-class table as lines within `width`, split by eps columns when it must be.

    Number columns are never narrowed (a cut number is a wrong number): when they do not all
    fit, the eps columns go to further blocks, each with the class column again. Only class
    names are shortened, with an ellipsis, and never below 8 characters.
    """
    names = [f"{row.label} {row.name}" if row.name else str(row.label) for row in summary.per_class]
    first = [
        ("n", [str(row.n) for row in summary.per_class]),
        ("acc", [lower_text(row.accuracy, 3) for row in summary.per_class]),
    ]
    last = [("MCR", [lower_text(row.mcr, 3) for row in summary.per_class])]
    eps_columns = [
        (eps.label, [lower_text(row.certified_accuracy[i], 3) for row in summary.per_class])
        for i, (eps, _) in enumerate(summary.certified_accuracy)
    ]

    def span(column: tuple[str, list[str]]) -> int:
        header, cells = column
        return 2 + max(len(header), *(len(cell) for cell in cells))

    name_width = max(len("class"), *(len(name) for name in names))
    class_width = min(name_width, 8)
    groups: list[list[tuple[str, list[str]]]] = [[]]
    used = class_width + sum(span(c) for c in first + last)
    for column in eps_columns:
        if groups[-1] and used + span(column) > width:
            groups.append([])
            used = class_width
        groups[-1].append(column)
        used += span(column)
    labels = ", ".join(eps.label for eps, _ in summary.certified_accuracy)
    lines = [f"per class (certified accuracy at eps {labels})"]
    for index, group in enumerate(groups):
        columns = (first + group + last) if index == 0 else group
        spans = [span(column) for column in columns]
        shown = max(class_width, min(name_width, width - sum(spans)))
        header = "class".ljust(shown) + "".join(
            h.rjust(w) for (h, _), w in zip(columns, spans, strict=True)
        )
        lines += ["", header, "─" * len(header)]
        for row, name in enumerate(names):
            text = name if len(name) <= shown else name[: shown - 1] + "…"
            lines.append(
                text.ljust(shown)
                + "".join(cells[row].rjust(w) for (_, cells), w in zip(columns, spans, strict=True))
            )
    return lines


def to_json(context: Context, result: CertifyResult, gates: list[Gate]) -> dict[str, Any]:
    summary = result.summary
    spec = result.spec
    dataset = context.dataset
    return {
        "model": context.model,
        "config": context.config,
        "dataset": {
            "name": dataset.name,
            "split": dataset.split,
            "source": dataset.source,
            "kind": dataset.kind,
            "n": summary.n,
        },
        "n": summary.n,
        "accuracy": summary.accuracy,
        "mcr": summary.mcr,
        "mean_radius": summary.mean_radius,
        "median_radius": summary.median_radius,
        "certified_accuracy": [
            {"eps": eps.value, "label": eps.label, "value": value}
            for eps, value in summary.certified_accuracy
        ],
        "lipschitz_bound": spec.lipschitz_bound,
        "certificate": result.certificates.method.value,
        "input_space": input_space(context),
        "fp_allowance": {
            "precision": context.precision,
            "constant": spec.fp_error_constant,
            "slope": spec.fp_error_slope,
            "max": float(np.max(result.allowance, initial=0.0)),
            "median": float(np.median(result.allowance)) if len(result.allowance) else 0.0,
            # samples whose certificate was recomputed by the exact (float64) evaluator
            "exact_samples": result.exact_samples,
            # guaranteed: MCR of the exact function - reported MCR <= this (None: unknown)
            "mcr_gap_bound": _finite_or_none(result.mcr_gap_bound),
            # guaranteed: MCR of the exact function >= this (None: unknown, a NaN logit)
            "mcr_lower_bound": _finite_or_none(_mcr_lower(result)),
        },
        **breakdown_json(summary),
        "gates": [
            {
                "name": g.name,
                "value": _finite_or_none(g.value),  # -inf: a NaN logit, nothing guaranteed
                "threshold": g.threshold,
                "passed": g.passed,
            }
            for g in gates
        ],
        "notes": list(context.notes),
        "seconds": result.seconds,
        "refinement": None if context.refinement is None else _refinement_json(context.refinement),
        "passed": all(g.passed for g in gates),
    }


def breakdown_json(summary: Summary) -> dict[str, Any]:
    """The "not_certified" and "per_class" keys, shared with the Python API's `to_dict()`."""
    return {
        "not_certified": {
            "ties": summary.ties,
            "non_finite": summary.non_finite,
            "within_allowance": summary.within_allowance,
        },
        "per_class": [
            {
                "label": row.label,
                "name": row.name,
                "n": row.n,
                "accuracy": row.accuracy,
                "certified_accuracy": list(row.certified_accuracy),
                "mcr": row.mcr,
            }
            for row in summary.per_class
        ],
    }


def _refinement_json(refinement: RefineResult) -> dict[str, Any]:
    return {
        "refined": refinement.count,
        "attempted": refinement.attempted,
        "not_reached_in_budget": refinement.skipped_for_time,
        "seconds": refinement.seconds,
        "unsupported": refinement.unsupported,
    }


def _refinement_text(refinement: RefineResult) -> str:
    if refinement.unsupported is not None:
        return f"none: the local bounds cannot relax this model ({escape(refinement.unsupported)})"
    text = (
        f"{refinement.count} of {refinement.attempted} samples tried got a larger radius from "
        f"local bounds ({refinement.seconds:.1f} s)"
    )
    if refinement.skipped_for_time:
        text += f"; {refinement.skipped_for_time} not reached within --refine-budget"
    return text


def write_csv(handle: IO[str], result: CertifyResult, refined: np.ndarray | None = None) -> None:
    """One row per sample, columns CSV_COLUMNS; with `refined` (certify --refine) a last
    column `certificate`: `local` where the radius comes from local bounds, else `global`."""
    # Full round-trip precision: a radius rounded to fewer digits could be rounded up.
    csv_frame(result, refined).to_csv(handle, index=False)


def csv_frame(result: CertifyResult, refined: np.ndarray | None = None) -> pd.DataFrame:
    """The rows `write_csv` writes (also the Python API's `DatasetReport.to_pandas()`)."""
    frame = samples_frame(result.labels, result.certificates)
    if refined is not None:
        frame["certificate"] = np.where(refined, "local", "global")
    return frame


def samples_frame(labels: np.ndarray, certificates: Certificates) -> pd.DataFrame:
    """One row per sample, columns CSV_COLUMNS (also the Python API's `to_pandas()`)."""
    import pandas as pd

    correct = certificates.prediction == labels
    return pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": labels,
            "prediction": certificates.prediction,
            "correct": correct,
            "margin": certificates.margin,
            "radius": certificates.radius,
            "signed_radius": np.where(correct, certificates.radius, -certificates.radius),
            "runner_up": certificates.runner_up,
            "status": _row_status(certificates.status, correct),
        },
        columns=list(CSV_COLUMNS),
    )


def _row_status(status: np.ndarray, correct: np.ndarray) -> list[str]:
    """The CSV status: why a row is not certified, or "certified" (correct, radius > 0).

    A wrong prediction is "misclassified" even when its decision has a positive radius: the
    certificate is about the decision, and a robust wrong decision certifies nothing.
    """
    names = []
    for code, right in zip(status, correct, strict=True):
        name = STATUS_NAMES[Status(code)]
        names.append("misclassified" if name == "certified" and not right else name)
    return names


def markdown(context: Context, result: CertifyResult, gates: list[Gate]) -> str:
    """A summary for $GITHUB_STEP_SUMMARY."""
    summary = result.summary
    lines = [
        f"### lipcert certify: `{context.model}` on {context.dataset.name} ({summary.n} samples)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| clean accuracy | {lower_text(summary.accuracy, 4)} |",
        f"| MCR | {lower_text(summary.mcr, 4)} |",
        f"| Lipschitz bound | {bound_text(result.spec.lipschitz_bound)} |",
        f"| certificate | {result.certificates.method.value} |",
        f"| config | {f'`{context.config}`' if context.config else 'none'} |",
    ]
    for eps, value in summary.certified_accuracy:
        lines.append(f"| certified accuracy at eps={eps.label} | {lower_text(value, 4)} |")
    for gate in gates:
        mark = "passed" if gate.passed else "**FAILED**"
        lines.append(
            f"| gate: {gate.name} >= {gate.threshold_text} | {lower_text(gate.value, 4)} ({mark}) |"
        )
    return "\n".join(lines) + "\n\n"


def _mcr_lower(result: CertifyResult) -> float:
    """The guaranteed lower bound of the exact function's MCR (`mcr_gap.mcr_lower_bound`)."""
    return mcr_lower_bound(result.certificates, result.labels, result.spec, result.allowance)


def _up(value: float) -> str:
    """A bound (an allowance, the MCR gap) for display: three digits, rounded up."""
    return significant_text(value, 3, up=True)


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: an unknown bound is null."""
    return value if value is not None and np.isfinite(value) else None
