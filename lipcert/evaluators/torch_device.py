"""The graph in float64 on a torch device (a CUDA GPU, or the CPU through the same code).

Why torch on CUDA rather than onnxruntime-gpu: the allowance is a guarantee only for
arithmetic the rounding analysis covers. torch lets lipcert run its own executor of the graph
(the ops lipcert bounded, nothing fused behind its back) in float64 and switch off, for the
duration of each call, every setting that would leave that arithmetic: TF32, reduced-precision
reductions, cuDNN (whose float64 algorithms include FFT-based ones) and autotuning.
onnxruntime-gpu's CUDA provider picks cuDNN algorithms and fuses nodes by its own heuristics
and computes the model in float32: its error would have to be bounded for kernels lipcert
does not see.

What the allowance assumes on CUDA (docs/soundness.md, "GPUs"):
- every sum of products is computed by ordinary float64 operations (with or without fused
  multiply-adds) in some order: cuBLAS DGEMM and torch's native CUDA kernels (im2col + GEMM
  convolutions once cuDNN is off), FP64 tensor cores included (they are IEEE FP64 FMAs);
- no TF32, bfloat16 or float16 anywhere (the graph runs in float64, where none of them apply,
  and they are switched off anyway).
The float64 allowance of the graph is then multiplied by `CUDA_SAFETY_FACTOR` (2^10, exact in
floating point): a margin, not part of the argument, that would also cover an FFT
convolution (a few hundred u in norm, Higham §24.1) should a kernel use one after all. No bound
for every cuDNN algorithm is claimed: cuDNN stays off (docs/soundness.md, "GPUs"). On the
ImageNet-sized LipNet of benchmarks/imagenet_lipnet.py that makes 5.9e-5 at the median input
(5.8e-8 without the factor), against a median margin of 0.014 there: it takes about 0.6 % off
such a radius.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.errors import UsageError
from lipcert.evaluators.base import Evaluation, Evaluator, check_agreement, input_norms
from lipcert.graph import Graph

# Multiplies the float64 allowance on a CUDA device (a power of two: the product is exact).
CUDA_SAFETY_FACTOR = 2.0**10
DEVICES = ("cpu", "cuda")


def resolve_device(name: str | None) -> Any:
    """The torch.device for `--device` (cpu, cuda or cuda:N); a usage error naming what is
    missing when CUDA is asked for on a machine or torch build without it."""
    import torch

    text = "cpu" if name is None else str(name).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"expected device cpu, cuda or cuda:N but got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {text} needs a CUDA GPU, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(
                f"device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return torch.device(text)


def safety_factor(device: Any) -> float:
    """What the float64 allowance is multiplied by on `device` (1 on the CPU, whose kernels
    the analysis is written for; `CUDA_SAFETY_FACTOR` elsewhere)."""
    return 1.0 if getattr(device, "type", str(device)) == "cpu" else CUDA_SAFETY_FACTOR


def device_spec(spec64: CertificateSpec, device: Any) -> CertificateSpec:
    """The float64 spec with the rounding allowance of a run on `device`."""
    factor = safety_factor(device)
    if factor == 1.0:
        return spec64
    return replace(
        spec64,
        fp_error_constant=spec64.fp_error_constant * factor,
        fp_error_slope=spec64.fp_error_slope * factor,
    )


@contextmanager
def exact_arithmetic(device: Any) -> Iterator[None]:
    """Within: on CUDA, no TF32, no reduced-precision reductions, no cuDNN (so no FFT or
    Winograd convolution), no autotuning, deterministic algorithms where torch has them.
    Everything is restored on exit: lipcert does not change the caller's settings."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = {
        name: getattr(matmul, name)
        for name in (
            "allow_tf32",
            "allow_fp16_reduced_precision_reduction",
            "allow_bf16_reduced_precision_reduction",
        )
        if hasattr(matmul, name)
    }
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        for name in saved:
            setattr(matmul, name, False)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with torch.backends.cudnn.flags(
            enabled=False, benchmark=False, deterministic=True, allow_tf32=False
        ):
            yield
    finally:
        for name, value in saved.items():
            setattr(matmul, name, value)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextmanager
def no_tf32(device: Any) -> Iterator[None]:
    """Within: on CUDA, float32 matmuls and convolutions in float32, not TF32 (a 10-bit
    mantissa); cuDNN stays on. For float32 work whose results are confirmed elsewhere (the
    attack's gradients): it keeps float32's precision without exact_arithmetic's cost.
    Restored on exit."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        ):
            yield
    finally:
        matmul.allow_tf32 = saved


def placed(device: Any) -> Any:
    """A context in which the tensors torch creates (the executor's index lists, pooling
    counts) go to `device`. On the CPU, where they are made anyway, none: a torch device
    mode would intercept every op."""
    import torch

    device = torch.device(device)
    return nullcontext() if device.type == "cpu" else torch.device(device)


def placed_executor(graph: Graph, dtype: Any, device: Any) -> Any:
    """A GraphExecutor of `graph` in `dtype` whose constants live on `device`; run it within
    `placed(device)`."""
    from lipcert.graph.execute import GraphExecutor

    with placed(device):
        executor = GraphExecutor(graph, dtype)
    executor.constants = {key: value.to(device) for key, value in executor.constants.items()}
    return executor


class TorchDeviceEvaluator:
    """float64 logits of the graph executed by torch on `device`, with the float64 a-priori
    allowance (`spec64`) times the device's safety factor (`device_spec`).

    With a `reference` evaluator (onnxruntime on the CPU), the first batch (every batch with
    `check_every`) is also evaluated there and both must agree within their allowances
    (`check_agreement`), else lipcert refuses to go on. On device="cpu" it computes what
    `lipcert.evaluators.exact.Float64Evaluator` (this class, checking every batch) computes.
    """

    precision = "float64"
    input_dtype: type = np.float64

    def __init__(
        self,
        graph: Graph,
        spec64: CertificateSpec,
        device: Any = "cpu",
        reference: Evaluator | None = None,
        check_every: bool = False,
        threads: int | None = None,
    ) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.spec = device_spec(spec64, self.device)
        self.reference = reference
        self.check_every = check_every
        self.checked = False
        self.name = f"graph float64 on {self.device}"
        self.executor = placed_executor(graph, torch.float64, self.device)

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        evaluation = self.evaluate_unchecked(batch)
        if self.reference is not None and (self.check_every or not self.checked):
            self.checked = True
            check_agreement(
                evaluation,
                self.reference.evaluate(batch),
                f"{self.name} and {self.reference.name}",
            )
        return evaluation

    def evaluate_unchecked(self, batch: np.ndarray) -> Evaluation:
        """The device evaluation alone (the caller compares it with another evaluator)."""
        batch = np.ascontiguousarray(batch, dtype=np.float64)
        values = self.run(batch)
        logits = np.asarray(values, dtype=np.float64).reshape(len(batch), -1)
        return Evaluation(logits, self.spec.fp_allowance(input_norms(batch)))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph's output on `batch`, computed on the device, as a float64 array."""
        import torch

        with torch.no_grad(), placed(self.device), exact_arithmetic(self.device):
            inputs = torch.from_numpy(batch).to(self.device)
            values = self.executor(inputs)
        return values.detach().to("cpu").numpy()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.evaluate(batch).logits
