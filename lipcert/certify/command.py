"""`lipcert certify` as a library call: options in, results, files and gates out."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lipcert.bounds.compose import Analysis, analyse
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.gates import Gate, evaluate_gates
from lipcert.certify.metrics import Eps, parse_eps_list
from lipcert.certify.pipeline import (
    CertifyResult,
    Preprocessing,
    certify_dataset,
    choose_evaluators,
    model_labels,
    parse_preprocessing,
)
from lipcert.certify.radii import Method, choose_method
from lipcert.config import load_config
from lipcert.datasets import Dataset, load_dataset
from lipcert.errors import DatasetError, ShapeError, UsageError
from lipcert.evaluators import Evaluator
from lipcert.frontends import load_model
from lipcert.model import LoadedModel, LoadOptions, parse_input_shape
from lipcert.reports import certify_report
from lipcert.reports.files import append_text, write_atomically

DEFAULT_EPS = "36/255,72/255,108/255,1"
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class CertifyRequest:
    model: Path
    dataset: str
    data_dir: Path | None = None
    split: str = "test"
    limit: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    eps: str | None = None
    mean: str | None = None
    std: str | None = None
    certificate: str | None = None
    csv_path: Path | None = None
    min_certified_accuracy: float | None = None
    gate_eps: str | None = None
    min_accuracy: float | None = None
    min_mcr: float | None = None
    input_shape: str | None = None
    arch: str | None = None
    trust_model: bool = False
    margins: str = "float32"


@dataclass(frozen=True)
class CertifyOutcome:
    result: CertifyResult
    gates: list[Gate]
    json: dict[str, Any]


@dataclass
class Prepared:
    """What certify and attack share: data, model, bounds and an evaluator."""

    dataset: Dataset
    loaded: LoadedModel
    analysis: Analysis
    method: Method
    preprocessing: Preprocessing | None
    evaluator: Evaluator
    spec: CertificateSpec  # with the rounding allowance of the evaluator's precision
    batch_size: int
    exact: Evaluator | None = None  # recomputes the samples whose certificate rounding may change


def prepare(request: CertifyRequest, config: dict[str, Any]) -> Prepared:
    """Load the dataset, then the model at its image shape, bound it, pick the evaluator."""
    batch_size = _first_given(request.batch_size, config.get("batch_size"), DEFAULT_BATCH_SIZE)
    if batch_size < 1 or (request.threads is not None and request.threads < 1):
        raise UsageError(
            "expected --batch-size >= 1 and --threads >= 1 but got "
            f"{batch_size!r}, {request.threads!r}"
        )
    if request.margins not in ("float32", "float64"):
        raise UsageError(f"expected --margins float32 or float64 but got {request.margins!r}")
    dataset = load_dataset(
        request.dataset, split=request.split, data_dir=request.data_dir, limit=request.limit
    )
    loaded = _load_for(request, dataset)
    analysis = analyse(loaded.graph)
    model_labels(dataset, analysis.spec)  # before any progress display: errors stay one line
    method = choose_method(
        analysis.spec, _first_given(request.certificate, config.get("certificate"), "auto")
    )
    preprocessing = parse_preprocessing(request.mean, request.std, dataset.images.shape[1])
    chosen = choose_evaluators(loaded, analysis, request.margins, request.threads)
    return Prepared(
        dataset,
        loaded,
        analysis,
        method,
        preprocessing,
        chosen.evaluator,
        chosen.spec,
        batch_size,
        chosen.exact,
    )


def run_certify(request: CertifyRequest, console: Console | None) -> CertifyOutcome:
    """Load, certify, write the CSV and the CI summary, evaluate the gates."""
    config = load_config()
    eps_list = parse_eps_list(_first_given(request.eps, config.get("eps"), DEFAULT_EPS))
    gate_eps = _gate_eps(_first_given(request.gate_eps, config.get("gate_eps"), None), eps_list)
    thresholds = {
        "min_certified_accuracy": _pick(
            request.min_certified_accuracy, config, "min_certified_accuracy"
        ),
        "min_accuracy": _pick(request.min_accuracy, config, "min_accuracy"),
        "min_mcr": _pick(request.min_mcr, config, "min_mcr"),
    }
    prepared = prepare(request, config)
    result = run_with_progress(prepared, eps_list, console)
    gates = evaluate_gates(result.summary, gate_eps=gate_eps, **thresholds)
    context = certify_report.Context(
        model=str(request.model),
        dataset=prepared.dataset,
        preprocessing=prepared.preprocessing,
        notes=tuple(prepared.analysis.notes),
        precision=prepared.evaluator.precision,
    )
    if request.csv_path is not None:
        write_atomically(request.csv_path, lambda handle: certify_report.write_csv(handle, result))
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        append_text(summary_file, certify_report.markdown(context, result, gates))
    if console is not None:
        certify_report.render(console, context, result, gates)
    return CertifyOutcome(result, gates, certify_report.to_json(context, result, gates))


def _first_given(*values: Any) -> Any:
    """The first value that is not None (0 or "" is a value, not a default)."""
    return next((v for v in values if v is not None), None)


def _pick(value: float | None, config: dict[str, Any], key: str) -> float | None:
    chosen = value if value is not None else config.get(key)
    return None if chosen is None else float(chosen)


def _gate_eps(text: str | float | None, eps_list: list[Eps]) -> Eps:
    """The gate's eps: given, else the first of --eps; added to the list when missing."""
    if text is None:
        return eps_list[0]
    (eps,) = parse_eps_list(str(text))
    if all(e.value != eps.value for e in eps_list):
        eps_list.append(eps)
    return next(e for e in eps_list if e.value == eps.value)


def _load_for(request: CertifyRequest, dataset: Dataset) -> LoadedModel:
    """The model at the dataset's image shape (or --input-shape, which must match it)."""
    image_shape = tuple(int(d) for d in dataset.images.shape[1:])
    given = parse_input_shape(request.input_shape)
    if given is not None and given != image_shape:
        raise DatasetError(
            f"--input-shape {given!r} differs from the images of {dataset.name!r}, {image_shape!r}"
        )
    options = LoadOptions(
        input_shape=image_shape, arch=request.arch, trust_model=request.trust_model
    )
    try:
        return load_model(request.model, options)
    except ShapeError as exc:
        raise DatasetError(f"the images of {dataset.name!r} do not fit the model: {exc}") from None


def run_with_progress(
    prepared: Prepared, eps_list: list[Eps], console: Console | None
) -> CertifyResult:
    """certify_dataset, with a progress bar on `console` when there is one."""

    def certify(on_batch: Any = None) -> CertifyResult:
        return certify_dataset(
            prepared.evaluator,
            prepared.spec,
            prepared.method,
            prepared.dataset,
            eps_list,
            batch_size=prepared.batch_size,
            preprocessing=prepared.preprocessing,
            on_batch=on_batch,
            exact=prepared.exact,
        )

    if console is None:
        return certify()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("certifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("certify", total=len(prepared.dataset))
        return certify(lambda n: progress.advance(task, n))
