"""The exact function, within ~1e-11: the graph executed in float64 by torch on the CPU.

One implementation with `--device`: this is `TorchDeviceEvaluator` on the CPU (whose allowance
has no safety factor), checking every batch against its reference instead of the first.
"""

from __future__ import annotations

from lipcert.bounds.spec import CertificateSpec
from lipcert.evaluators.base import Evaluator
from lipcert.evaluators.torch_device import TorchDeviceEvaluator
from lipcert.graph import Graph


class Float64Evaluator(TorchDeviceEvaluator):
    """float64 logits from the graph executed in torch on the CPU, with the float64 a-priori
    allowance (`spec64`, about 1e-11 on the sample models).

    With a `reference` evaluator (onnxruntime), EVERY batch is also evaluated there and the two
    must agree within their allowances (`check_agreement`), else lipcert refuses to go on:
    the executor and the model file would not compute the same function.
    """

    def __init__(
        self,
        graph: Graph,
        spec64: CertificateSpec,
        reference: Evaluator | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(
            graph, spec64, "cpu", reference=reference, check_every=True, threads=threads
        )
        self.name = "graph float64"
