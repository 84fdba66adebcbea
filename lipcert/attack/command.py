"""`lipcert attack`: certify, then attack every certificate, and measure the gap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lipcert.attack import Attacker, AttackResult, AttackSettings, check_executor_against_runtime
from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
from lipcert.certify.command import CertifyRequest, prepare, run_with_progress
from lipcert.certify.metrics import parse_eps_list
from lipcert.config import load_config
from lipcert.errors import UsageError
from lipcert.reports.files import write_atomically
from lipcert.runtime import OnnxRuntimeEvaluator

DEFAULT_ATTACK_LIMIT = 200


@dataclass(frozen=True)
class AttackOutcome:
    result: AttackResult
    labels: np.ndarray
    json: dict[str, Any]

    @property
    def violations(self) -> int:
        return int(self.result.violation.sum())


def run_attack(
    request: CertifyRequest,
    settings: AttackSettings,
    search_distance: bool,
    console: Console | None,
) -> AttackOutcome:
    if settings.steps < 1 or settings.restarts < 1:
        raise UsageError(
            "expected --steps >= 1 and --restarts >= 1 but got "
            f"{settings.steps}, {settings.restarts}"
        )
    if request.limit is None:
        request = CertifyRequest(**{**request.__dict__, "limit": DEFAULT_ATTACK_LIMIT})
    prepared = prepare(request, load_config())
    certified = run_with_progress(prepared, parse_eps_list("1"), console)
    inputs = np.concatenate(
        [pixels for _, pixels, _ in prepared.dataset.batches(1 << 30, dtype=np.float64)]
    )
    model_inputs = (
        inputs if prepared.preprocessing is None else prepared.preprocessing.apply(inputs)
    )
    runtime = OnnxRuntimeEvaluator(
        prepared.loaded, threads=request.threads, spec=prepared.analysis.spec
    )
    check_executor_against_runtime(
        prepared.loaded.graph, runtime.logits(model_inputs), model_inputs, prepared.analysis.spec
    )
    spec64 = prepared.analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    preprocessing = prepared.preprocessing
    attacker = Attacker(
        prepared.loaded.graph,
        spec64,
        settings,
        mean=None if preprocessing is None else preprocessing.mean,
        std=None if preprocessing is None else preprocessing.std,
    )
    certificates = certified.certificates
    usable = certificates.prediction >= 0
    radius = np.where(usable, certificates.radius, 0.0)
    status = console.status("attacking") if console is not None else None
    if status is not None:
        status.start()
    try:
        result = attacker.attack(
            inputs,
            np.where(usable, certificates.prediction, 0),
            radius,
            search_distance=search_distance,
            on_progress=None if status is None else status.update,
        )
    finally:
        if status is not None:
            status.stop()
    outcome = AttackOutcome(
        result, certified.labels, _to_json(str(request.model), result, certified.labels)
    )
    if request.csv_path is not None:
        write_atomically(
            request.csv_path, lambda handle: write_csv(handle, result, certified.labels)
        )
    if console is not None:
        render(console, str(request.model), result, certified.labels)
    return outcome


def gap_ratios(result: AttackResult) -> np.ndarray:
    """Certified radius / smallest adversarial distance found, where both are positive."""
    found = np.isfinite(result.adversarial_distance) & (result.radius > 0)
    return result.radius[found] / result.adversarial_distance[found]


def _to_json(model: str, result: AttackResult, labels: np.ndarray) -> dict[str, Any]:
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
