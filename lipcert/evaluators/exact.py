"""The exact function, within ~1e-11: the graph executed in float64 by torch."""

from __future__ import annotations

import numpy as np
import torch

from lipcert.bounds.spec import CertificateSpec
from lipcert.evaluators.base import Evaluation, Evaluator, check_agreement, input_norms
from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor


class Float64Evaluator:
    """float64 logits from the graph executed in torch, with the float64 a-priori allowance
    (`spec64`, about 1e-11 on the sample models).

    With a `reference` evaluator (onnxruntime), EVERY batch is also evaluated there and the two
    must agree within their allowances (`check_agreement`), else lipcert refuses to go on:
    the executor and the model file would not compute the same function.
    """

    name = "graph float64"
    precision = "float64"
    input_dtype: type = np.float64

    def __init__(
        self,
        graph: Graph,
        spec64: CertificateSpec,
        reference: Evaluator | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.executor = GraphExecutor(graph, torch.float64)
        self.spec64 = spec64
        self.reference = reference

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        evaluation = self.evaluate_unchecked(batch)
        if self.reference is not None:
            check_agreement(
                evaluation,
                self.reference.evaluate(batch),
                f"the graph evaluated in float64 and {self.reference.name}",
            )
        return evaluation

    def evaluate_unchecked(self, batch: np.ndarray) -> Evaluation:
        """The float64 evaluation alone (the caller compares it with another evaluator)."""
        batch = np.asarray(batch, dtype=np.float64)
        with torch.no_grad():
            values = self.executor(torch.as_tensor(batch))
        logits = values.reshape(len(batch), -1).numpy()
        return Evaluation(logits, self.spec64.fp_allowance(input_norms(batch)))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.evaluate(batch).logits
