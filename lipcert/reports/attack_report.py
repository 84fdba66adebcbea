"""The report of `lipcert attack`: terminal table, JSON summary, per-sample CSV."""

from __future__ import annotations

from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lipcert.attack.pgd import AttackResult


def gap_ratios(result: AttackResult) -> np.ndarray:
    """Certified radius / smallest adversarial distance found, where both are positive."""
    found = np.isfinite(result.adversarial_distance) & (result.radius > 0)
    return result.radius[found] / result.adversarial_distance[found]


def to_json(model: str, result: AttackResult, labels: np.ndarray) -> dict[str, Any]:
    ratios = gap_ratios(result)
    violations = np.flatnonzero(result.violation)
    distance = result.adversarial_distance
    return {
        "model": model,
        "n": len(labels),
        "certified": int(np.sum(result.radius > 0)),
        "violations": len(violations),
        "violating_samples": [
            {
                "index": int(i),
                "radius": float(result.radius[i]),
                "distance": float(result.violation_distance[i]),
            }
            for i in violations
        ],
        "adversarial_found": int(np.sum(np.isfinite(distance))),
        "gap": {
            "samples": len(ratios),
            "median_ratio": float(np.median(ratios)) if len(ratios) else None,
            "mean_ratio": float(np.mean(ratios)) if len(ratios) else None,
            "max_ratio": float(np.max(ratios)) if len(ratios) else None,
        },
        "passed": len(violations) == 0,
    }


def write_csv(handle: IO[str], result: AttackResult, labels: np.ndarray) -> None:
    import pandas as pd

    distance = result.adversarial_distance
    frame = pd.DataFrame(
        {
            "index": np.arange(len(labels)),
            "label": labels,
            "prediction": result.prediction,
            "radius": result.radius,
            "adversarial_distance": distance,
            "ratio": np.where(
                np.isfinite(distance) & (distance > 0),
                result.radius / np.where(distance > 0, distance, 1),
                np.nan,
            ),
            "violation": result.violation,
        }
    )
    frame.to_csv(handle, index=False)


def render(console: Console, model: str, result: AttackResult, labels: np.ndarray) -> None:
    table = Table(show_header=False, box=None, title=f"attacking the certificates of {model}")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("samples", str(len(labels)))
    table.add_row("certified (radius > 0)", str(int(np.sum(result.radius > 0))))
    table.add_row("decision changes inside a certified radius", str(int(result.violation.sum())))
    ratios = gap_ratios(result)
    if len(ratios):
        table.add_row(
            "certified radius / smallest attack found",
            f"median {np.median(ratios):.3f}, mean {np.mean(ratios):.3f}, max {np.max(ratios):.3f} "
            f"({len(ratios)} samples; 1 would be a perfectly tight certificate)",
        )
    console.print(table)
    if result.violation.any():
        for i in np.flatnonzero(result.violation):
            console.print(
                f"[bold red]UNSOUND CERTIFICATE[/]: sample {i}: radius {result.radius[i]:.6g} "
                "but the decision "
                f"changes at distance {result.violation_distance[i]:.6g}",
                highlight=False,
            )
    else:
        console.print("[green]no certificate was broken[/]", highlight=False)
