"""A model with its bounds, ready to certify: `lipcert.load` and `lipcert.from_torch`.

The rounding allowance is the model's business: `Model.certify` evaluates the logits itself
(onnxruntime in float32, or the graph in float64) and takes that evaluator's guaranteed error
bound off every margin. No argument lets a caller pass an allowance, or logits computed
elsewhere, so no call through this API returns a radius larger than the guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, LayerReport, analyse
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.pipeline import (
    STATUS_NAMES,
    Evaluators,
    certify_batch,
    choose_evaluators,
    evaluated_ahead,
)
from lipcert.certify.radii import Certificates, Method, Status, choose_method
from lipcert.errors import UsageError
from lipcert.evaluators.crosscheck import cross_check
from lipcert.model import LoadedModel, LoadOptions, check_sample_shape

if TYPE_CHECKING:
    import pandas as pd

Precision = Literal["float32", "float64"]
Certificate = Literal["auto", "pairwise", "global", "binary"]
DEFAULT_BATCH_SIZE = 256


def load(
    path: str | Path,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    trust: bool = False,
) -> Model:
    """Load an ONNX file or a PyTorch checkpoint and bound it.

    `input_shape` is the shape of one sample, e.g. (1, 28, 28), when the file does not fix
    it; `arch` ("package.module:factory") builds the module of a state_dict or safetensors
    file; `trust=True` allows formats that can run code when read (pickled modules,
    TorchScript, .pt2): only for files whose author you trust.
    """
    from lipcert.frontends import load_model

    options = LoadOptions(input_shape=_shape(input_shape), arch=arch, trust_model=bool(trust))
    return Model(load_model(path, options))


def from_torch(module: Any, input_shape: Sequence[int], name: str = "<torch module>") -> Model:
    """Bound a torch module in memory, with no file: the module is not modified.

    A copy of the module is put in eval mode, its parametrizations (spectral norm, Björck,
    ...) evaluated into the weights they compute with, exported to ONNX in memory and checked
    against the copy, exactly as a checkpoint file is loaded. The certificates hold for the
    weights as they are now: after more training steps, call `from_torch` again.
    """
    from lipcert.frontends.torch_checkpoint import load_module

    shape = _shape(input_shape)
    if shape is None:
        raise UsageError("expected an input_shape for a torch module, e.g. (1, 28, 28)")
    return Model(load_module(module, shape, source=name))


def _shape(shape: Sequence[int] | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise UsageError(f"expected input_shape as a sequence of ints but got {shape!r}") from None
    if any(isinstance(d, bool) or int(d) != d for d in shape):
        raise UsageError(f"expected input_shape as a sequence of ints but got {shape!r}")
    check_sample_shape(dims, what="input_shape")
    return dims


@dataclass(frozen=True)
class CertifiedBatch:
    """Per-sample certificates of a batch: arrays of length N.

    `radius[i]` is a guaranteed L2 radius around x_i (in the model input's space) within
    which the prediction cannot change; 0 when nothing is certified. `status` says why:
    certified, within_allowance (a positive margin the rounding allowance swallows), tie, or
    non_finite (NaN or Inf logits). `label` and `correct` are None when no labels were given.
    """

    prediction: np.ndarray
    runner_up: np.ndarray
    margin: np.ndarray
    radius: np.ndarray
    status: np.ndarray  # strings, see STATUS_NAMES
    allowance: np.ndarray  # the bound of the logits' rounding error taken off the margins
    method: str
    label: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.radius)

    @property
    def correct(self) -> np.ndarray | None:
        return None if self.label is None else self.prediction == self.label

    @property
    def signed_radius(self) -> np.ndarray | None:
        """The radius, negative where the prediction is wrong (what the MCR averages)."""
        correct = self.correct
        return None if correct is None else np.where(correct, self.radius, -self.radius)

    def to_pandas(self) -> pd.DataFrame:
        """One row per sample."""
        import pandas as pd

        columns: dict[str, Any] = {}
        if self.label is not None:
            columns["label"] = self.label
        columns.update(prediction=self.prediction)
        if self.label is not None:
            columns.update(correct=self.correct)
        columns.update(
            margin=self.margin,
            radius=self.radius,
            runner_up=self.runner_up,
            status=self.status,
            allowance=self.allowance,
        )
        return pd.DataFrame(columns)

    @staticmethod
    def from_certificates(
        certificates: Certificates, allowance: np.ndarray, label: np.ndarray | None
    ) -> CertifiedBatch:
        return CertifiedBatch(
            prediction=certificates.prediction,
            runner_up=certificates.runner_up,
            margin=certificates.margin,
            radius=certificates.radius,
            status=np.array([STATUS_NAMES[Status(s)] for s in certificates.status], dtype=object),
            allowance=allowance,
            method=certificates.method.value,
            label=label,
        )


class Model:
    """A model lipcert has bounded: its bounds, and certificates of inputs.

    Built by `lipcert.load` or `lipcert.from_torch`. The bounds are guaranteed upper bounds of
    L2 Lipschitz constants of the model as it computes (its weights as they are, not the
    constant its layers claim).
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self._loaded = loaded
        self._analysis: Analysis = analyse(loaded.graph)
        # The bounds are those of the graph lipcert read: it must compute what onnxruntime
        # runs (three fixed inputs; ModelLoadError if not, a note if it cannot run it).
        note = cross_check(loaded, self._analysis)
        if note is not None:
            self._analysis.notes.append(note)
        self._evaluators: dict[tuple[str, int | None], Evaluators] = {}

    # --- bounds ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._loaded.path

    @property
    def format(self) -> str:
        """'onnx' or 'pytorch'."""
        return self._loaded.format

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample."""
        return tuple(self._analysis.graph.input_shape)

    @property
    def num_logits(self) -> int:
        return self.spec.num_logits

    @property
    def num_classes(self) -> int:
        """Classes the model predicts: its logits, or 2 for one logit (positive: class 1)."""
        return 2 if self.num_logits == 1 else self.num_logits

    @property
    def spec(self) -> CertificateSpec:
        """The certificate spec (bounds, and the float32 rounding allowance)."""
        return self._analysis.spec

    @property
    def lipschitz_bound(self) -> float:
        """Guaranteed upper bound of the L2 Lipschitz constant of the logit vector."""
        return float(self.spec.lipschitz_bound)

    @property
    def layers(self) -> tuple[LayerReport, ...]:
        """One entry per node: its bound, whether exact, and the bound from the input to it."""
        return tuple(self._analysis.layers)

    @property
    def notes(self) -> tuple[str, ...]:
        """What the analysis wants the reader to know (e.g. a size-independent conv bound)."""
        return tuple(self._analysis.notes)

    @property
    def loaded(self) -> LoadedModel:
        """The model as its front-end read it (format, path, ONNX for the runtime)."""
        return self._loaded

    @property
    def analysis(self) -> Analysis:
        """The bound analysis: per-node bounds, the spec, notes (what reports render)."""
        return self._analysis

    def empirical_lower_bound(self, *, restarts: int = 16, steps: int = 8, seed: int = 0) -> float:
        """A lower bound of the L2 Lipschitz constant found by gradient ascent on the
        Jacobian's spectral norm: it shows how tight `lipschitz_bound` is, never certifies."""
        from lipcert.empirical import empirical_lower_bound

        return empirical_lower_bound(
            self._analysis.graph, restarts=restarts, steps=steps, seed=seed
        )

    def layers_frame(self) -> pd.DataFrame:
        """The per-layer table as a pandas DataFrame, one row per node."""
        import pandas as pd

        names = [f.name for f in fields(LayerReport)]
        return pd.DataFrame(
            [{n: getattr(layer, n) for n in names} for layer in self.layers], columns=names
        )

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, input_shape={self.input_shape}, logits={self.num_logits}, "
            f"lipschitz_bound={self.lipschitz_bound:.6g})"
        )

    # --- certificates ------------------------------------------------------------------

    def logits(
        self, x: Any, precision: Precision = "float32", device: str | None = None
    ) -> np.ndarray:
        """The logits (N, K) of a batch, as lipcert evaluates them when it certifies."""
        inputs = self._inputs(x)
        return self._evaluators_for(precision, device).evaluator.evaluate(inputs).logits

    def certify(
        self,
        x: Any,
        y: Any = None,
        *,
        eps: Sequence[float | Fraction] = (),
        precision: Precision = "float32",
        certificate: Certificate = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | None = None,
        threads: int | None = None,
    ) -> CertifiedBatch:
        """Certified radius, prediction and margin of every sample of `x`.

        `x` is a batch (N, *input_shape), numpy or torch, of floating-point inputs as the model
        takes them (one sample of shape input_shape is a batch of one). `y`, optional, are the
        labels. precision="float32" (default) runs onnxruntime, takes its guaranteed rounding
        bound off the margins, and recomputes in float64 the samples whose certificate that
        bound may change (a decision within it, or a radius near one of `eps`), as
        `lipcert certify` does; "float64" runs the graph in float64 for every sample.
        certificate="auto" uses the pairwise bounds of a linear head when there is one.
        device="cuda" (or "cuda:N") runs the graph in float64 on that GPU for every sample,
        whatever `precision`, as `lipcert certify --device cuda` does (the first batch checked
        against onnxruntime on the CPU); "cpu" or None: the CPU as above. `threads` caps
        onnxruntime's threads (default all cores). Batches of `batch_size` run as
        `certify_dataset` runs them (onnxruntime one batch ahead, torch on one thread
        meanwhile).
        """
        inputs = self._inputs(x)
        labels = None if y is None else self.labels(y, len(inputs))
        method = self.method(certificate)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"expected batch_size >= 1 but got {batch_size!r}")
        eps_values = _eps_values(eps)
        evaluators = self._evaluators_for(precision, device, threads)
        parts = []
        # each chunk handed to the evaluator one ahead, as `lipcert certify` does
        starts = range(0, len(inputs), batch_size)
        chunks = ((start, inputs[start : start + batch_size]) for start in starts)
        with closing(evaluated_ahead(evaluators.evaluator, chunks)) as ahead:
            for _, chunk in ahead:
                certificates, allowance, _ = certify_batch(
                    evaluators.evaluator,
                    evaluators.spec,
                    method,
                    chunk,
                    eps_values,
                    exact=evaluators.exact,
                )
                parts.append(CertifiedBatch.from_certificates(certificates, allowance, None))
        if not parts:
            empty = np.zeros(0)
            return CertifiedBatch(
                empty.astype(np.int64),
                empty.astype(np.int64),
                empty,
                empty,
                np.zeros(0, dtype=object),
                empty,
                method.value,
                labels,
            )
        return CertifiedBatch(
            prediction=np.concatenate([p.prediction for p in parts]),
            runner_up=np.concatenate([p.runner_up for p in parts]),
            margin=np.concatenate([p.margin for p in parts]),
            radius=np.concatenate([p.radius for p in parts]),
            status=np.concatenate([p.status for p in parts]),
            allowance=np.concatenate([p.allowance for p in parts]),
            method=method.value,
            label=labels,
        )

    def method(self, certificate: Certificate = "auto") -> Method:
        """The certificate method `certificate` resolves to for this model."""
        return choose_method(self.spec, certificate)

    def labels(self, y: Any, count: int | None = None) -> np.ndarray:
        """Labels as int64 class indices, checked against the model's classes."""
        labels = _as_array(y)
        if labels.ndim != 1 or (count is not None and len(labels) != count):
            raise UsageError(
                f"expected {count if count is not None else 'N'} labels (one per sample) but "
                f"got an array of shape {labels.shape!r}"
            )
        integral = np.issubdtype(labels.dtype, np.integer) or (
            np.issubdtype(labels.dtype, np.floating)
            and bool(np.all(np.isfinite(labels)))
            and bool(np.all(labels == np.round(labels)))
        )
        if labels.size and not integral:
            raise UsageError(f"expected integer class labels but got dtype {str(labels.dtype)!r}")
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UsageError(
                f"expected labels in 0..{self.num_classes - 1} (the model has "
                f"{self.num_logits} logit(s)) but got {int(labels.min())}..{int(labels.max())}"
            )
        return labels

    # --- internals ---------------------------------------------------------------------

    def _inputs(self, x: Any) -> np.ndarray:
        array = _as_array(x)
        if not np.issubdtype(array.dtype, np.floating):
            raise UsageError(
                f"expected floating-point inputs but got dtype {str(array.dtype)!r}; "
                "scale integer pixels first (e.g. x / 255), as the model was trained"
            )
        if array.shape == self.input_shape:
            array = array[None]
        if array.shape[1:] != self.input_shape:
            raise UsageError(
                f"expected inputs of shape (N, {', '.join(map(str, self.input_shape))}) but got "
                f"{array.shape!r}"
            )
        return array

    def spec_for(self, precision: Precision) -> CertificateSpec:
        """The spec with the rounding allowance of an evaluation at `precision`."""
        if precision not in ("float32", "float64"):
            raise UsageError(f"expected precision 'float32' or 'float64' but got {precision!r}")
        if precision == "float32":
            return self.spec
        return self._analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)

    def _evaluators_for(
        self, precision: Precision, device: str | None = None, threads: int | None = None
    ) -> Evaluators:
        """The evaluators `lipcert certify --margins <precision> --device <device>` uses,
        made once per (precision, device, threads)."""
        precision, device = _run_options(precision, device)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise UsageError(f"expected threads >= 1 (or None) but got {threads!r}")
        key = (precision if device is None else f"float64@{device}", threads)
        if key not in self._evaluators:
            self._evaluators[key] = choose_evaluators(
                self._loaded, self._analysis, precision, threads=threads, device=device
            )
        return self._evaluators[key]

    def _run_spec(self, precision: Precision, device: str | None) -> tuple[CertificateSpec, bool]:
        """The spec `_evaluators_for(precision, device)` certifies with (its rounding
        allowance), and whether those evaluators recompute samples exactly, without building
        them (a Ray driver only sends this to its workers, which build their own)."""
        precision, device = _run_options(precision, device)
        spec64 = self._analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
        if device is not None:
            from lipcert.evaluators.torch_device import device_spec, resolve_device

            return device_spec(spec64, resolve_device(device)), False
        if precision == "float64":
            return spec64, False
        return self._analysis.spec, True


def _run_options(precision: Precision, device: str | None) -> tuple[Precision, str | None]:
    """(precision, device) checked; device None for the CPU, else torch's name of it."""
    if precision not in ("float32", "float64"):
        raise UsageError(f"expected precision 'float32' or 'float64' but got {precision!r}")
    if device is not None:
        from lipcert.evaluators.torch_device import resolve_device

        device = str(resolve_device(device))
        if device == "cpu":
            device = None
    return precision, device


def _eps_values(eps: Sequence[float | Fraction] | float | Fraction) -> np.ndarray:
    """The radii `certify` recomputes near, as `certify_dataset` takes them (none: empty)."""
    if not isinstance(eps, (int, float, Fraction)) and len(eps) == 0:
        return np.zeros(0, dtype=np.float64)
    from lipcert.api.data import eps_thresholds

    return np.array([e.value for e in eps_thresholds(eps)], dtype=np.float64)


def _as_array(value: Any) -> np.ndarray:
    """A numpy view of an array-like or a torch tensor (moved to the CPU, detached)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
