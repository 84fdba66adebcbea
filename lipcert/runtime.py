"""Computing logits of batches, in float32 (onnxruntime) or float64 (the graph in torch).

Both evaluate the function lipcert bounded: the front-ends hand over an ONNX model whose
output is the graph's logits, and the float64 evaluator executes the graph itself. The float64
evaluator checks its first batch against onnxruntime: the two may differ by rounding only,
within the sum of their worst-case rounding bounds, or lipcert refuses to go on.
"""

from __future__ import annotations

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.errors import ModelLoadError, UnsoundCertificateError
from lipcert.graph import Graph
from lipcert.model import LoadedModel


class OnnxRuntimeEvaluator:
    """float32 logits from onnxruntime, in batches (padded when the model fixes its batch).

    Bounds are computed on the function of one sample. A model that mixes the samples of a
    batch (a reshape across the batch axis, say) computes something else on a batch, so the
    first batch is checked against one-sample runs, within both rounding bounds; if they
    differ, or the batch does not run, samples are evaluated one at a time from then on.
    Without a `spec` (hence no rounding bound to compare with) the check is skipped.
    """

    precision = "float32"

    def __init__(
        self, model: LoadedModel, threads: int | None = None, spec: CertificateSpec | None = None
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model.onnx_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot run {model.path!r}: {exc}") from None
        self.input_name = model.input_name
        self.output_name = model.output_name
        self.fixed_batch = model.fixed_batch
        double_input = "double" in self.session.get_inputs()[0].type
        self.input_dtype = np.float64 if double_input else np.float32
        self.spec = spec
        self.one_at_a_time = False
        self.batch_checked = self.fixed_batch is not None or spec is None

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, K) of a batch (N, *input_shape)."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.one_at_a_time:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        if not self.batch_checked and len(batch) > 1:
            self.batch_checked = True
            if not self._batches_like_single_samples(batch):
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

    def _batches_like_single_samples(self, batch: np.ndarray) -> bool:
        probe = batch[: min(len(batch), 4)]
        try:
            together = self._run(probe).astype(np.float64)
        except Exception:  # the model does not run on a batch: one sample at a time
            return False
        alone = np.concatenate([self._run(probe[i : i + 1]) for i in range(len(probe))])
        if together.shape != alone.shape:
            return False
        norms = np.linalg.norm(probe.reshape(len(probe), -1).astype(np.float64), axis=1)
        assert self.spec is not None  # batch_checked is set when there is none
        limit = 2 * self.spec.fp_allowance(norms)
        gap = np.linalg.norm(together - alone.astype(np.float64), axis=1)
        finite = np.isfinite(gap)
        return bool(np.all(~finite | (gap <= limit)))


class Float64Evaluator:
    """float64 logits from the graph executed in torch, checked against onnxruntime."""

    precision = "float64"

    def __init__(
        self,
        graph: Graph,
        reference: OnnxRuntimeEvaluator,
        spec32: CertificateSpec,
        spec64: CertificateSpec,
        threads: int | None = None,
    ) -> None:
        import torch

        from lipcert.graph.execute import GraphExecutor

        if threads is not None:
            torch.set_num_threads(threads)
        self.executor = GraphExecutor(graph, torch.float64)
        self.reference = reference
        self.spec32 = spec32
        self.spec64 = spec64
        self.checked = False

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            values = self.executor(torch.as_tensor(np.asarray(batch, dtype=np.float64)))
        logits = values.reshape(len(batch), -1).numpy()
        if not self.checked:
            self._check(batch, logits)
            self.checked = True
        return logits

    def _check(self, batch: np.ndarray, logits64: np.ndarray) -> None:
        """onnxruntime and the graph must agree within both rounding bounds."""
        logits32 = self.reference.logits(batch).astype(np.float64)
        norms = np.linalg.norm(np.asarray(batch, dtype=np.float64).reshape(len(batch), -1), axis=1)
        limit = self.spec32.fp_allowance(norms) + self.spec64.fp_allowance(norms)
        finite = np.all(np.isfinite(logits32), axis=1) & np.all(np.isfinite(logits64), axis=1)
        gap = np.linalg.norm(logits32 - logits64, axis=1)
        worst = int(np.argmax(np.where(finite, gap - limit, -np.inf))) if len(batch) else 0
        if len(batch) and finite[worst] and gap[worst] > limit[worst]:
            raise UnsoundCertificateError(
                f"the graph evaluated in float64 and onnxruntime differ by {gap[worst]:.3g} on "
                f"sample {worst}, more than their rounding bounds allow ({limit[worst]:.3g}); "
                "lipcert cannot tell which computes the model and refuses to certify"
            )
