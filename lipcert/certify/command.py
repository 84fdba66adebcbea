"""The options of `lipcert certify` and `lipcert attack`: the [tool.lipcert] table merged
in, and every check that needs no file read (usage errors come before any work).

This is the command line's side of those commands: option strings and their origins (a flag,
or a key of a config file) are named in messages here. The work itself goes through the
Python API (`lipcert.api`): nothing here loads a dataset, certifies or prints. What is read
here is the config file, whether the model file exists, and, for an image folder, the input
shape the model file declares (its default crop).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lipcert.certify.gates import FRACTION_GATES, check_threshold
from lipcert.certify.metrics import Eps, eps_from_fraction
from lipcert.config import TABLE, Config, resolve_config
from lipcert.datasets.catalog import canonical_name
from lipcert.errors import ModelLoadError, UsageError
from lipcert.model import check_sample_shape
from lipcert.reports.files import check_output_path

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
    mcr_tolerance: float | None = None  # recompute in float64 until the MCR gap bound is this


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
    tolerance = request.mcr_tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise UsageError(f"expected --mcr-tolerance in [0, 1) (a fraction) but got {tolerance!r}")
    if tolerance is not None and request.ray is not None:
        raise UsageError("--mcr-tolerance is not supported with --ray")
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
class CertifyOptions:
    """A certify request with the config merged in and checked, ready for the API."""

    request: CertifyRequest
    config: Config
    eps: list[Eps]
    gate_eps: Eps | None  # the certified-accuracy gate's eps (None without that gate)
    batch_size: int
    certificate: str
    refine: bool  # --refine or --refine-radius: local certificates after the global ones

    def inputs(self) -> list[tuple[str, str | Path | None]]:
        """The files the run reads, which no output may overwrite."""
        return _inputs(self.request, self.config)


def resolve_certify(request: CertifyRequest) -> CertifyOptions:
    """The config resolved and merged into the request, and every option checked."""
    config = resolve_config(request.config_path, no_config=request.no_config)
    request, from_config = with_config(request, config)
    eps_list, gate_eps = check_request(request, config, from_config)
    refine = check_refine_options(request.refine, request.refine_budget, request.refine_radius)
    return CertifyOptions(
        request,
        config,
        eps_list,
        gate_eps,
        batch_size=request.batch_size or DEFAULT_BATCH_SIZE,
        certificate=request.certificate or "auto",
        refine=refine,
    )


def check_refine_options(refine: bool, budget: float | None, radius: float | None) -> bool:
    """Whether --refine / --refine-budget / --refine-radius ask for a refinement."""
    if budget is not None and not budget > 0:
        raise UsageError(f"expected --refine-budget > 0 (seconds) but got {budget!r}")
    if radius is not None and not radius > 0:
        raise UsageError(f"expected --refine-radius > 0 but got {radius!r}")
    if not refine and radius is None:
        if budget is not None:
            raise UsageError("--refine-budget needs --refine or --refine-radius")
        return False
    return True


def resolve_attack(request: CertifyRequest, config: Config) -> tuple[int, str]:
    """The batch size and certificate of `lipcert attack` (the config found from the working
    folder may set them: the API's attack_certificates takes both as arguments), after the
    checks certify makes before reading any file."""
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
    if request.csv_path is not None:
        check_output_path(
            request.csv_path,
            option="--csv",
            inputs=[
                ("the model", request.model),
                ("the dataset", None if canonical_name(request.dataset) else request.dataset),
            ],
        )
    return batch_size, _first_given(request.certificate, config.get("certificate"), "auto")


def step_summary_clash(path: str, options: CertifyOptions) -> str | None:
    """What the $GITHUB_STEP_SUMMARY file `path` is when it is one of the run's inputs."""
    return _is_input(path, options.inputs())


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


def parse_mean_std(
    mean: str | None, std: str | None, channels: int, per: str = "channel"
) -> tuple[np.ndarray, np.ndarray] | None:
    """--mean/--std: comma-separated, one value or one per channel (or feature); std > 0.
    The (mean, std) arrays, one value per channel, for the API's mean= and std=."""
    if mean is None and std is None:
        return None
    values = []
    for name, text, default in (("--mean", mean, 0.0), ("--std", std, 1.0)):
        if text is None:
            values.append(np.full(channels, default))
            continue
        # plain decimal numbers only: Python's float() reads "0_5" as 5.0
        numbers = [parse_number(v) for v in text.split(",") if v.strip()]
        if any(v is None for v in numbers):
            raise UsageError(f"expected {name} like 0.5,0.5,0.5 but got {text!r}")
        parsed = np.array(numbers, dtype=np.float64)
        if parsed.size == 1:
            parsed = np.full(channels, parsed[0])
        if parsed.size != channels:
            count = "1 value" if channels == 1 else f"1 or {channels} values (one per {per})"
            raise UsageError(f"expected {name} with {count} but got {text!r}")
        if not np.all(np.isfinite(parsed)):
            raise UsageError(f"expected finite {name} values but got {text!r}")
        values.append(parsed)
    if np.any(values[1] <= 0):
        raise UsageError(f"expected --std > 0 but got {std!r}")
    return values[0], values[1]


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str) -> float | None:
    """A plain decimal number ('0.5', '1e-3'); None for anything else ('1_0', 'inf', 'nan')."""
    text = text.strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def parse_eps_list(text: str, *, what: str = "--eps") -> list[Eps]:
    """--eps '36/255,72/255,1' -> thresholds; each a number or a fraction a/b, finite, > 0,
    distinct, labelled as typed. Each value is the smallest float >= the exact number typed
    (`eps_from_fraction`): "radius > eps" then proves the radius exceeds what was typed."""
    from fractions import Fraction

    values: list[Eps] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pieces = [parse_number(piece) for piece in part.split("/", 1)]
        if any(piece is None for piece in pieces):
            raise UsageError(
                f"expected {what} values like 36/255 or 0.5 (finite decimal numbers) but got "
                f"{part!r}"
            )
        numbers = [float(piece) for piece in pieces if piece is not None]
        if len(numbers) == 2 and numbers[1] == 0:
            raise UsageError(f"expected {what} values with a non-zero denominator but got {part!r}")
        exact = [Fraction(piece.strip()) for piece in part.split("/", 1)]
        value = eps_from_fraction(exact[0] / exact[1] if len(exact) == 2 else exact[0], part)
        if not math.isfinite(value.value):
            raise UsageError(f"expected finite {what} values but got {part!r}")
        if value.value <= 0:
            raise UsageError(f"expected {what} values > 0 but got {part!r}")
        same = next((e for e in values if e.value == value.value), None)
        if same is not None:
            raise UsageError(
                f"expected distinct {what} values but got {same.label!r} and {part!r}, both "
                f"{value.value:.6g}"
            )
        values.append(value)
    if not values:
        raise UsageError(f"expected at least one {what} value but got {text!r}")
    return values


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """--input-shape 'C,H,W' (also 'CxHxW', 'C' or 'C,L') as a tuple of positive ints; None
    when not given."""
    if text is None or text.strip() == "":
        return None
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"expected --input-shape like 3,32,32 but got {text!r}") from None
    check_sample_shape(dims, what="--input-shape")
    return dims


def declared_shape(request: CertifyRequest) -> tuple[int, ...] | None:
    """The model's fixed input shape, for an image folder's default resize and crop."""
    from lipcert.datasets.imagefolder import is_imagefolder
    from lipcert.frontends.declared import declared_input_shape

    if request.dataset is None or not is_imagefolder(request.dataset):
        return None
    return declared_input_shape(request.model, parse_input_shape(request.input_shape))
