"""float32 logits from onnxruntime (CPU), with the worst-case a-priori rounding allowance."""

from __future__ import annotations

from typing import Any

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.errors import ModelLoadError
from lipcert.evaluators.base import Evaluation, agree, input_norms
from lipcert.evaluators.batch_axis import batch_axis_stays_leading
from lipcert.evaluators.fixed_batch import refuse_fixed_batch_mixing
from lipcert.model import LoadedModel


def make_session(
    model_bytes: bytes, path: Any, threads: int | None, *, spinning: bool = True
) -> Any:
    """An onnxruntime CPU session (the only provider lipcert's rounding analysis covers).
    `spinning=False`: its idle worker threads sleep instead of spinning (for a session that
    runs next to other work in the same process)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"onnxruntime cannot run {str(path)!r}: {exc}") from None


class OnnxRuntimeEvaluator:
    """float32 logits from onnxruntime, in batches (padded when the model fixes its batch).

    The allowance is the a-priori bound of the spec, c + d ||x|| (`float_error_bound`), or
    infinite without a spec. Bounds are computed on the function of one sample. A model that
    mixes the samples of a batch (a reshape across the batch axis, say) computes something
    else on a batch, so the first batch is checked against one-sample runs within both
    allowances; if they differ, or the batch does not run, samples are evaluated one at a
    time from then on. Without a `spec` the check is skipped.
    """

    name = "onnxruntime float32"
    precision = "float32"

    def __init__(
        self, model: LoadedModel, threads: int | None = None, spec: CertificateSpec | None = None
    ) -> None:
        self.session = make_session(model.onnx_bytes, model.path, threads)
        self.onnx_bytes = model.onnx_bytes
        self.input_name = model.input_name
        self.output_name = model.output_name
        self.fixed_batch = model.fixed_batch
        double_input = "double" in self.session.get_inputs()[0].type
        self.input_dtype: type = np.float64 if double_input else np.float32
        self.spec = spec
        self.one_at_a_time = False
        self.batch_checked = spec is None or self.fixed_batch == 1

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        return self.evaluation_of(batch, self.logits(batch))

    def evaluation_of(
        self, batch: np.ndarray, logits: np.ndarray, norms: np.ndarray | None = None
    ) -> Evaluation:
        """The evaluation of onnxruntime's `logits` of `batch`: the a-priori allowance.
        `norms`: `input_norms(batch)`, when the caller has them."""
        logits = np.asarray(logits, dtype=np.float64).reshape(len(batch), -1)
        if self.spec is None:
            return Evaluation(logits, np.full(len(logits), np.inf))
        return Evaluation(
            logits, self.spec.fp_allowance(input_norms(batch) if norms is None else norms)
        )

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, K) of a batch (N, *input_shape), as onnxruntime returns them."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.one_at_a_time:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        if not self.batch_checked and self.fixed_batch is not None and len(batch):
            self.batch_checked = True
            refuse_fixed_batch_mixing(self._run, batch, self.fixed_batch, self.spec)
        if not self.batch_checked and len(batch) > 1:
            self.batch_checked = True
            if not self.batches_like_single_samples(batch):
                self.one_at_a_time = True
                return self.logits(batch)
        if self.fixed_batch is None:
            return self._run(batch)
        parts = []
        for start in range(0, len(batch), self.fixed_batch):
            chunk = batch[start : start + self.fixed_batch]
            padded = np.zeros((self.fixed_batch, *batch.shape[1:]), dtype=batch.dtype)
            padded[: len(chunk)] = chunk
            parts.append(self._run(padded)[: len(chunk)])
        return np.concatenate(parts)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out).reshape(len(batch), -1)

    def batches_like_single_samples(self, batch: np.ndarray) -> bool:
        """Whether a batch gives the logits its samples give one at a time (within rounding)."""
        probe = batch[: min(len(batch), 4)]
        # the values of a few samples show a mixing only where they happen to: the shapes of
        # every tensor at batch 1 and 2 show where the batch axis goes (batch_axis)
        moved = batch_axis_stays_leading(
            self.onnx_bytes, self.input_name, tuple(batch.shape[1:]), self.input_dtype
        )
        if moved is not None:
            return False
        try:
            together = self._run(probe).astype(np.float64)
        except Exception:  # the model does not run on a batch: one sample at a time
            return False
        alone = np.concatenate([self._run(probe[i : i + 1]) for i in range(len(probe))])
        if together.shape != alone.shape or self.spec is None:
            return together.shape == alone.shape
        allowance = self.spec.fp_allowance(input_norms(probe))
        return agree(
            Evaluation(together, allowance), Evaluation(alone.astype(np.float64), allowance)
        )
