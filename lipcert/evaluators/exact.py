"""The exact function, within ~1e-11: the graph executed in float64 by torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lipcert.bounds.spec import CertificateSpec
from lipcert.evaluators.base import Evaluation, Evaluator, check_agreement, input_norms
from lipcert.graph import Graph, Node
from lipcert.graph.execute import GraphExecutor, _conv_padding

# Samples per float64 convolution: unfolded patches of a few samples stay in cache.
_CONV_CHUNK = 4


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
        self.executor = _executor(graph)
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


def _executor(graph: Graph) -> GraphExecutor:
    return _Float64Executor(graph, torch.float64)


class _Float64Executor(GraphExecutor):
    """The graph in float64, with 2-D convolutions as patches times the kernel matrix.

    torch's own float64 convolution takes 5 to 10 times as long as float32 on CPU; a matrix
    product of unfolded patches (by chunks of samples) about half as long. It is still a sum
    of products in float64, which is what the float64 rounding bound covers.
    """

    def _run(self, nodes: Any, values: dict[str, Any]) -> None:
        for node in nodes:
            if node.body:
                self._run(node.body, values)
            elif node.op == "Conv" and int(node.attr("group", 1)) == 1:
                args = [values[name] if name else None for name in node.inputs]
                if args[1] is not None and args[1].dim() == 4:
                    values[node.outputs[0]] = _conv2d(node, args)
                else:
                    super()._run([node], values)
            else:
                super()._run([node], values)


def _conv2d(node: Node, args: list[Any]) -> torch.Tensor:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    x, win = _conv_padding(node, x, weight)
    out_channels, _, kh, kw = weight.shape
    matrix = weight.reshape(out_channels, -1)
    sizes = [
        (x.shape[2 + axis] - win.dilations[axis] * (k - 1) - 1) // win.strides[axis] + 1
        for axis, k in enumerate((kh, kw))
    ]
    parts = []
    for start in range(0, len(x), _CONV_CHUNK):
        patches = F.unfold(
            x[start : start + _CONV_CHUNK],
            (kh, kw),
            dilation=tuple(win.dilations),
            stride=tuple(win.strides),
        )
        parts.append(matrix @ patches)
    out = torch.cat(parts).reshape(len(x), out_channels, *sizes)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out
