"""`lipcert certify` as a library call: options in, results, files and gates out."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from lipcert.bounds.compose import Analysis, analyse
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.gates import FRACTION_GATES, Gate, check_threshold, evaluate_gates
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
from lipcert.config import TABLE, Config, resolve_config
from lipcert.datasets import Dataset, load_dataset
from lipcert.datasets.catalog import canonical_name
from lipcert.errors import DatasetError, ModelLoadError, ShapeError, UsageError
from lipcert.evaluators import Evaluator
from lipcert.frontends import load_model
from lipcert.model import LoadedModel, LoadOptions, parse_input_shape
from lipcert.reports import certify_report
from lipcert.reports.files import append_text, check_output_path, write_atomically

DEFAULT_EPS = "36/255,72/255,108/255,1"
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class CertifyRequest:
    """The options of `lipcert certify`; None means "not given" (the config or a default)."""

    model: Path
    dataset: str | None = None
    data_dir: Path | None = None
    split: str | None = None
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
    margins: str | None = None
    label_column: str | None = None
    config_path: Path | None = None
    no_config: bool = False
    refine: bool = False  # local certificates where the global radius is below an eps
    refine_budget: float | None = None  # seconds for the whole refinement
    refine_radius: float | None = None  # also bisect each refined radius up to this
    device: str | None = None  # cpu (default) or cuda[:N]: where the float64 graph runs
    ray: str | None = None  # shard over a Ray cluster: "" for a local one, else its address
    resize: int | None = None  # imagefolder: shorter side resized to this
    crop: int | None = None  # imagefolder: centre crop of this size


# Request fields a [tool.lipcert] table may set, by config key.
_CONFIG_FIELDS = (
    "dataset",
    "data_dir",
    "split",
    "limit",
    "batch_size",
    "threads",
    "eps",
    "mean",
    "std",
    "certificate",
    "min_certified_accuracy",
    "gate_eps",
    "min_accuracy",
    "min_mcr",
    "input_shape",
    "arch",
    "margins",
    "label_column",
)
_CERTIFICATES = ("auto", "pairwise", "global")


def with_config(request: CertifyRequest, config: Config) -> tuple[CertifyRequest, frozenset[str]]:
    """The request with every option it leaves unset taken from the config, and their names."""
    updates: dict[str, Any] = {}
    for name in _CONFIG_FIELDS:
        if getattr(request, name) is None and config.get(name) is not None:
            value = config.get(name)
            if name == "data_dir":
                value = Path(value)
            elif name in ("eps", "gate_eps", "mean", "std", "input_shape"):
                value = str(value)
            updates[name] = value
    return (replace(request, **updates) if updates else request), frozenset(updates)


def check_request(
    request: CertifyRequest, config: Config, from_config: frozenset[str] = frozenset()
) -> tuple[list[Eps], Eps | None]:
    """Every check that needs no file read: usage errors come before any work.

    `from_config` names the options the config set, so that messages name the key and file.
    Returns the eps list and the certified-accuracy gate's eps (None without that gate).
    """

    def origin(name: str) -> str:
        if name in from_config:
            return config.origin(name)
        return "--" + name.replace("_", "-")

    if request.dataset is None:
        raise UsageError(
            "expected --dataset (a dataset name, a .npz or a .csv file), or dataset in "
            f"{TABLE} of a pyproject.toml"
        )
    for name in ("limit", "batch_size", "threads"):
        value = getattr(request, name)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise UsageError(f"expected {origin(name)} >= 1 but got {value!r}")
    if request.margins is not None and request.margins not in ("float32", "float64"):
        raise UsageError(
            f"expected {origin('margins')} float32 or float64 but got {request.margins!r}"
        )
    if request.certificate is not None and request.certificate not in _CERTIFICATES:
        raise UsageError(
            f"expected {origin('certificate')} auto, pairwise or global but got "
            f"{request.certificate!r}"
        )
    if request.device is not None:
        from lipcert.evaluators.torch_device import resolve_device

        if resolve_device(request.device).type != "cpu" and request.margins == "float32":
            raise UsageError(
                f"--device {request.device} computes float64 margins; drop --margins float32"
            )
    if request.split is not None and request.split not in ("test", "train"):
        raise UsageError(f"expected {origin('split')} test or train but got {request.split!r}")
    # A config may set a split for its named dataset and still be used with a file.
    if (
        "split" not in from_config
        and request.split is not None
        and not canonical_name(request.dataset)
    ):
        raise UsageError(
            f"{origin('split')} chooses a split of a named dataset, but {request.dataset!r} is "
            "a file, read whole"
        )
    for name in ("min_certified_accuracy", "min_accuracy", "min_mcr"):
        value = getattr(request, name)
        if value is not None:
            check_threshold(value, fraction=name in FRACTION_GATES, origin=origin(name))
    eps_list = parse_eps_list(request.eps or DEFAULT_EPS, what=origin("eps"))
    if request.gate_eps is not None and request.min_certified_accuracy is None:
        raise UsageError(
            f"{origin('gate_eps')} sets the eps of the certified-accuracy gate, which needs "
            "--min-certified-accuracy (or min-certified-accuracy in the config)"
        )
    gate_eps = None
    if request.min_certified_accuracy is not None:
        gate_eps = _gate_eps(request.gate_eps, eps_list, origin("gate_eps"))
    if request.csv_path is not None:
        check_output_path(request.csv_path, option="--csv", inputs=_inputs(request, config))
    if not request.model.exists():
        raise ModelLoadError(f"no model file at {str(request.model)!r}")
    if not request.model.is_file():
        raise ModelLoadError(f"{str(request.model)!r} is not a regular file")
    return eps_list, gate_eps


def _inputs(request: CertifyRequest, config: Config) -> list[tuple[str, str | Path | None]]:
    """The files a run reads, which no output may overwrite."""
    dataset = None
    if request.dataset is not None and canonical_name(request.dataset) is None:
        dataset = request.dataset
    return [
        ("the model", request.model),
        ("the dataset", dataset),
        ("the config file", config.path),
    ]


def _is_input(path: str, inputs: list[tuple[str, str | Path | None]]) -> str | None:
    """What `path` is, when it is one of `inputs` (the same file); else None."""
    for what, other in inputs:
        try:
            if other is not None and os.path.samefile(path, other):
                return what
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class CertifyOutcome:
    result: CertifyResult
    gates: list[Gate]
    json: dict[str, Any]
    context: certify_report.Context
    # Problems that do not change the result (a CI summary file that cannot be written).
    warnings: tuple[str, ...] = ()


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


def prepare(request: CertifyRequest, config: Config | dict[str, Any]) -> Prepared:
    """Load the dataset, then the model at its input shape, bound it, pick the evaluator."""
    batch_size = _first_given(request.batch_size, config.get("batch_size"), DEFAULT_BATCH_SIZE)
    if batch_size < 1 or (request.threads is not None and request.threads < 1):
        raise UsageError(
            "expected --batch-size >= 1 and --threads >= 1 but got "
            f"{batch_size!r}, {request.threads!r}"
        )
    if request.device is not None:
        from lipcert.evaluators.torch_device import resolve_device

        resolve_device(request.device)  # a missing GPU is a usage error before any work
    margins = request.margins or "float32"
    if margins not in ("float32", "float64"):
        raise UsageError(f"expected --margins float32 or float64 but got {margins!r}")
    if request.dataset is None:
        raise UsageError("expected --dataset (a dataset name, a .npz or a .csv file)")
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"expected --limit >= 1 but got {request.limit!r}")
    if request.csv_path is not None:  # before any work: attack comes here directly
        check_output_path(
            request.csv_path,
            option="--csv",
            inputs=[
                ("the model", request.model),
                ("the dataset", None if canonical_name(request.dataset) else request.dataset),
            ],
        )
    dataset = load_dataset(
        request.dataset,
        split=request.split or "test",
        data_dir=request.data_dir,
        limit=request.limit,
        label_column=request.label_column,
        resize=request.resize,
        crop=request.crop,
        model_shape=_declared_shape(request),
    )
    loaded = _load_for(request, dataset)
    analysis = analyse(loaded.graph)
    model_labels(dataset, analysis.spec)  # before any progress display: errors stay one line
    method = choose_method(
        analysis.spec, _first_given(request.certificate, config.get("certificate"), "auto")
    )
    preprocessing = parse_preprocessing(
        request.mean,
        request.std,
        dataset.images.shape[1],
        per="feature" if dataset.is_features else "channel",
    )
    chosen = choose_evaluators(loaded, analysis, margins, request.threads, request.device)
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
    """Resolve the config, check every option, certify, write the CSV and the CI summary.

    `console` shows progress (None: none). The report is the caller's to render, from the
    outcome's context; nothing is printed here.
    """
    config = resolve_config(request.config_path, no_config=request.no_config)
    request, from_config = with_config(request, config)
    eps_list, gate_eps = check_request(request, config, from_config)
    from lipcert.local.progress import check_refine_options, refine_with_progress

    refine = check_refine_options(request.refine, request.refine_budget, request.refine_radius)
    prepared = prepare(request, config)
    if request.ray is not None:
        result = run_on_ray(prepared, request, eps_list, console)
    else:
        result = run_with_progress(prepared, eps_list, console)
    refinement = None
    if refine is not None:
        result, refinement = refine_with_progress(prepared, result, eps_list, refine, console)
    gates = evaluate_gates(
        result.summary,
        gate_eps=gate_eps,
        min_certified_accuracy=request.min_certified_accuracy,
        min_accuracy=request.min_accuracy,
        min_mcr=request.min_mcr,
    )
    context = certify_report.Context(
        model=str(request.model),
        dataset=prepared.dataset,
        preprocessing=prepared.preprocessing,
        notes=tuple(prepared.analysis.notes) + prepared.dataset.notes,
        precision=prepared.evaluator.precision,
        config=None if config.path is None else str(config.path),
        refinement=refinement,
    )
    if request.csv_path is not None:
        refined = None if refinement is None else refinement.refined
        write_atomically(
            request.csv_path, lambda handle: certify_report.write_csv(handle, result, refined)
        )
    warnings = []
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    clash = _is_input(summary_file, _inputs(request, config)) if summary_file else None
    if summary_file and clash:
        warnings.append(
            f"$GITHUB_STEP_SUMMARY {summary_file!r} is {clash}: the summary was not appended"
        )
    elif summary_file:
        try:
            append_text(summary_file, certify_report.markdown(context, result, gates))
        except OSError as exc:
            warnings.append(
                f"cannot append the summary to $GITHUB_STEP_SUMMARY {summary_file!r}: "
                f"{exc.strerror or exc}"
            )
    return CertifyOutcome(
        result,
        gates,
        certify_report.to_json(context, result, gates),
        context,
        tuple(warnings),
    )


def _first_given(*values: Any) -> Any:
    """The first value that is not None (0 or "" is a value, not a default)."""
    return next((v for v in values if v is not None), None)


def _gate_eps(text: str | None, eps_list: list[Eps], origin: str) -> Eps:
    """The gate's eps: given, else the first of --eps; added to the list when missing."""
    if text is None:
        return eps_list[0]
    given = parse_eps_list(str(text), what=origin)
    if len(given) != 1:
        raise UsageError(f"expected one value for {origin} but got {text!r}")
    eps = given[0]
    same = next((e for e in eps_list if e.value == eps.value), None)
    if same is None:
        eps_list.append(eps)
        return eps
    return same


def _declared_shape(request: CertifyRequest) -> tuple[int, ...] | None:
    """The model's fixed input shape, for an image folder's default resize and crop."""
    from lipcert.datasets.imagefolder import is_imagefolder
    from lipcert.frontends.declared import declared_input_shape

    if request.dataset is None or not is_imagefolder(request.dataset):
        return None
    return declared_input_shape(request.model, request.input_shape)


def _load_for(request: CertifyRequest, dataset: Dataset) -> LoadedModel:
    """The model at the dataset's image shape (or --input-shape, which must match it)."""
    image_shape = tuple(int(d) for d in dataset.images.shape[1:])
    what = "features" if dataset.is_features else "images"
    given = parse_input_shape(request.input_shape)
    if given is not None and given != image_shape:
        raise DatasetError(
            f"--input-shape {given!r} differs from the {what} of {dataset.name!r}, {image_shape!r}"
        )
    options = LoadOptions(
        input_shape=image_shape, arch=request.arch, trust_model=request.trust_model
    )
    try:
        return load_model(request.model, options)
    except ShapeError as exc:
        raise DatasetError(f"the {what} of {dataset.name!r} do not fit the model: {exc}") from None


def run_on_ray(
    prepared: Prepared, request: CertifyRequest, eps_list: list[Eps], console: Console | None
) -> CertifyResult:
    """certify_dataset's result, computed by the workers of a Ray cluster (--ray ADDRESS)."""
    import numpy as np

    from lipcert.certify.distributed import ShardJob, certify_on_ray

    job = ShardJob(
        loaded=prepared.loaded,
        analysis=prepared.analysis,
        margins=request.margins or "float32",
        threads=request.threads,
        device=request.device,
        spec=prepared.spec,
        method=prepared.method,
        preprocessing=prepared.preprocessing,
        eps_values=np.array([e.value for e in eps_list], dtype=np.float64),
        batch_size=prepared.batch_size,
        has_exact=prepared.exact is not None,
    )
    address = request.ray or "local"
    if console is None:
        return certify_on_ray(job, prepared.dataset, eps_list, address=address)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("certifying on Ray"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("certify", total=len(prepared.dataset))
        return certify_on_ray(
            job,
            prepared.dataset,
            eps_list,
            address=address,
            on_batch=lambda n: progress.advance(task, n),
        )


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
