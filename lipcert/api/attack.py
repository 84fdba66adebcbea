"""Attacking certificates through the API: an L2 attack inside each certified radius must fail.

`attack_certificates` certifies the samples (as `certify_dataset` does), checks the torch
execution of the graph (where the attack's gradients come from) against onnxruntime on them,
then attacks every certificate and, optionally, searches the smallest adversarial distance.
A decision that changes inside a certified radius is a violation: an unsound certificate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lipcert.api.data import DatasetReport, _is_dataset, certify_dataset
from lipcert.api.model import DEFAULT_BATCH_SIZE, Certificate, Model, Precision
from lipcert.attack.pgd import Attacker, AttackResult, AttackSettings
from lipcert.errors import UsageError
from lipcert.evaluators import Evaluation, check_agreement, input_norms
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
from lipcert.graph.execute import GraphExecutor


@dataclass(frozen=True)
class AttackReport:
    """The attack of every certificate of `certified`: distances found, violations."""

    certified: DatasetReport
    result: AttackResult

    @property
    def labels(self) -> np.ndarray:
        return self.certified.labels

    @property
    def violations(self) -> int:
        """Samples whose decision the attack changed inside their certified radius."""
        return int(self.result.violation.sum())

    def to_dict(self) -> dict[str, Any]:
        """The keys of `lipcert attack --json`."""
        from lipcert.reports import attack_report

        return attack_report.to_json(self.certified.model_name, self.result, self.labels)

    def to_json(self, indent: int | None = 2) -> str:
        from lipcert.reports.format import json_numbers

        return json.dumps(json_numbers(self.to_dict()), indent=indent, allow_nan=False)

    def to_csv(self, path: str | Path) -> None:
        """One row per sample: radius, adversarial distance, ratio, violation (atomically)."""
        from lipcert.reports import attack_report
        from lipcert.reports.files import write_atomically

        write_atomically(
            Path(path), lambda handle: attack_report.write_csv(handle, self.result, self.labels)
        )


def attack_certificates(
    model: Model,
    data: Any,
    *,
    steps: int = 20,
    restarts: int = 3,
    search_distance: bool = True,
    precision: Precision = "float32",
    certificate: Certificate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    mean: float | Sequence[float] | np.ndarray | None = None,
    std: float | Sequence[float] | np.ndarray | None = None,
    threads: int | None = None,
    device: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> AttackReport:
    """Certify `data` (a Dataset, a dataset name or path, or (x, y) arrays; see
    `certify_dataset`), then attack every certificate: `restarts` projected-gradient attacks
    of `steps` steps inside the radius, and with `search_distance` the search for the
    smallest adversarial distance. `device` ("cuda", "cuda:N") places the certification (as
    in `certify_dataset`) and the attack's float32 gradients (TF32 off); a decision change
    found is confirmed by the graph in float64 on the CPU. `on_batch(n)` reports the
    certification's progress, `on_progress(n)` the attack's."""
    if isinstance(steps, bool) or isinstance(restarts, bool) or steps < 1 or restarts < 1:
        raise UsageError(f"expected steps >= 1 and restarts >= 1 but got {steps!r}, {restarts!r}")
    if not (isinstance(data, (str, Path, tuple)) or _is_dataset(data)):
        raise UsageError(
            "expected data as a Dataset, a dataset name or path, or (x, y) arrays to attack "
            f"but got {type(data).__name__}"
        )
    certified = certify_dataset(
        model,
        data,
        [1.0],
        precision=precision,
        certificate=certificate,
        batch_size=batch_size,
        mean=mean,
        std=std,
        threads=threads,
        device=device,
        on_batch=on_batch,
    )
    if certified.dataset is not None:
        batches = certified.dataset.batches(1 << 30, dtype=np.float64)
        inputs = np.concatenate([pixels for _, pixels, _ in batches])
    else:
        # a copy the attack owns (a read-only array of the caller stays untouched)
        inputs = np.array(model._inputs(data[0]), dtype=np.float64)
    preprocessing = certified.preprocessing
    model_inputs = inputs if preprocessing is None else preprocessing.apply(inputs)
    _check_executor_against_runtime(model, model_inputs)
    settings = AttackSettings(steps=steps, restarts=restarts)
    if threads is not None:
        settings = replace(settings, threads=threads)
    attacker = Attacker(
        model.analysis.graph,
        model.spec_for("float64"),
        settings,
        mean=None if preprocessing is None else preprocessing.mean,
        std=None if preprocessing is None else preprocessing.std,
        device=device,
    )
    certificates = certified.result.certificates
    usable = certificates.prediction >= 0
    result = attacker.attack(
        inputs,
        np.where(usable, certificates.prediction, 0),
        np.where(usable, certificates.radius, 0.0),
        search_distance=search_distance,
        on_progress=on_progress,
    )
    return AttackReport(certified, result)


def _check_executor_against_runtime(model: Model, model_inputs: np.ndarray) -> None:
    """The torch execution of the graph (what the attack's gradients come from) must give
    onnxruntime's logits on the attacked samples, within both a-priori rounding bounds."""
    import torch

    spec32 = model.spec
    runtime = OnnxRuntimeEvaluator(model.loaded, spec=spec32)
    with torch.no_grad():
        ours = GraphExecutor(model.analysis.graph, torch.float32)(
            torch.as_tensor(np.asarray(model_inputs, dtype=np.float32))
        )
    logits = ours.double().numpy().reshape(len(model_inputs), -1)
    check_agreement(
        Evaluation(logits, spec32.fp_allowance(input_norms(model_inputs))),
        runtime.evaluate(model_inputs),
        "the graph executed in torch and onnxruntime",
    )


__all__ = ["AttackReport", "attack_certificates"]
