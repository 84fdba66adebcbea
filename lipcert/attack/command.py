"""`lipcert attack` as a library call: certify, then attack every certificate."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rich.console import Console

from lipcert.attack.pgd import Attacker, AttackResult, AttackSettings
from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
from lipcert.certify.command import CertifyRequest, prepare, run_with_progress
from lipcert.certify.metrics import parse_eps_list
from lipcert.config import load_config
from lipcert.errors import UsageError
from lipcert.evaluators import Evaluation, check_agreement, input_norms
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
from lipcert.graph.execute import GraphExecutor
from lipcert.reports import attack_report
from lipcert.reports.files import write_atomically

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
    """Certify the first --limit samples, check the torch executor against onnxruntime on
    them, attack every certificate (progress on `console`), write the CSV, render."""
    if settings.steps < 1 or settings.restarts < 1:
        raise UsageError(
            "expected --steps >= 1 and --restarts >= 1 but got "
            f"{settings.steps}, {settings.restarts}"
        )
    if request.limit is None:
        request = replace(request, limit=DEFAULT_ATTACK_LIMIT)
    if request.threads is not None:
        settings = replace(settings, threads=request.threads)
    prepared = prepare(request, load_config())
    certified = run_with_progress(prepared, parse_eps_list("1"), console)
    inputs = np.concatenate(
        [pixels for _, pixels, _ in prepared.dataset.batches(1 << 30, dtype=np.float64)]
    )
    model_inputs = (
        inputs if prepared.preprocessing is None else prepared.preprocessing.apply(inputs)
    )
    check_executor_against_runtime(prepared, model_inputs)
    spec64 = prepared.analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    preprocessing = prepared.preprocessing
    attacker = Attacker(
        prepared.analysis.graph,
        spec64,
        settings,
        mean=None if preprocessing is None else preprocessing.mean,
        std=None if preprocessing is None else preprocessing.std,
    )
    certificates = certified.certificates
    usable = certificates.prediction >= 0
    radius = np.where(usable, certificates.radius, 0.0)
    prediction = np.where(usable, certificates.prediction, 0)
    if console is None:
        result = attacker.attack(inputs, prediction, radius, search_distance=search_distance)
    else:
        result = _attack_with_progress(
            attacker, inputs, prediction, radius, search_distance, console
        )
    labels = certified.labels
    outcome = AttackOutcome(
        result, labels, attack_report.to_json(str(request.model), result, labels)
    )
    if request.csv_path is not None:
        write_atomically(
            request.csv_path, lambda handle: attack_report.write_csv(handle, result, labels)
        )
    if console is not None:
        attack_report.render(console, str(request.model), result, labels)
    return outcome


def _attack_with_progress(
    attacker: Attacker,
    inputs: np.ndarray,
    prediction: np.ndarray,
    radius: np.ndarray,
    search_distance: bool,
    console: Console,
) -> AttackResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("attacking"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("attack", total=len(inputs))
        return attacker.attack(
            inputs,
            prediction,
            radius,
            search_distance=search_distance,
            on_progress=lambda n: progress.advance(task, n),
        )


def check_executor_against_runtime(prepared: Any, model_inputs: np.ndarray) -> None:
    """The torch execution of the graph (what the attack's gradients come from) must give
    onnxruntime's logits on the attacked samples, within both a-priori rounding bounds."""
    import torch

    spec32 = prepared.analysis.spec
    runtime = OnnxRuntimeEvaluator(prepared.loaded, spec=spec32)
    with torch.no_grad():
        ours = GraphExecutor(prepared.analysis.graph, torch.float32)(
            torch.as_tensor(np.asarray(model_inputs, dtype=np.float32))
        )
    logits = ours.double().numpy().reshape(len(model_inputs), -1)
    check_agreement(
        Evaluation(logits, spec32.fp_allowance(input_norms(model_inputs))),
        runtime.evaluate(model_inputs),
        "the graph executed in torch and onnxruntime",
    )
