"""At load time: does lipcert's float64 executor of the graph compute what onnxruntime runs?

Every bound is a bound of the graph lipcert built from the file, and lipcert's executor
(`lipcert.graph.execute`) runs that graph. If the front-end or the executor read an op
differently from onnxruntime (an attribute default, broadcasting, an opset's semantics), the
bound is that of another function. `cross_check` runs a few fixed inputs of the model's
input shape through onnxruntime (float32, CPU, the a-priori rounding allowance of the
analysis) and through the executor (float64, the float64 a-priori allowance), and requires
them to agree within the sum of both allowances (`agreement_gaps`, the comparison every
evaluator check uses). A test on three inputs, not a proof: it catches a misreading that
shows on generic inputs, not one confined to a region those inputs miss.

The inputs, always the same (seeded): a standard normal vector scaled to the norm of a
mid-grey image (every entry 0.5), an image-like input uniform in [0, 1), and zero, rounded to
float32 so that both runtimes see the same values, one at a time (the graph's batch size;
for a model that fixes its batch B, in zero-padded chunks of B): three onnxruntime runs and
three float64 forwards of one sample.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lipcert.errors import ModelLoadError, UnsupportedOpError
from lipcert.evaluators.base import Evaluation, agreement_gaps, input_norms

if TYPE_CHECKING:
    from lipcert.bounds.compose import Analysis
    from lipcert.model import LoadedModel

SEED = 20_240_601
PROBES = ("random normal input", "random uniform [0, 1) input", "zero input")


def probe_inputs(sample_shape: tuple[int, ...]) -> np.ndarray:
    """The three inputs `cross_check` runs, (3, *sample_shape) float32 (see the module)."""
    size = math.prod(sample_shape)
    rng = np.random.default_rng(SEED)
    normal = rng.standard_normal(size)
    normal *= 0.5 * math.sqrt(size) / max(float(np.linalg.norm(normal)), 1e-300)
    uniform = rng.uniform(0.0, 1.0, size)
    batch = np.stack([normal, uniform, np.zeros(size)]).astype(np.float32)
    return batch.reshape(len(PROBES), *sample_shape)


def cross_check(loaded: LoadedModel, analysis: Analysis) -> str | None:
    """Check that lipcert's float64 executor of `analysis.graph` computes what onnxruntime
    computes from `loaded.onnx_bytes`, within both guaranteed rounding allowances.

    Raises ModelLoadError on a disagreement (or when the executor fails on its own graph).
    Returns None when checked, or a note to show when the executor cannot run the graph
    (an op or attribute it refuses): the bounds are then not cross-checked, and `certify`,
    which needs the executor, refuses the model.
    """
    import torch

    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF
    from lipcert.evaluators.exact import Float64Evaluator
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    graph = analysis.graph
    try:
        executor = Float64Evaluator(graph, analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF))
    except UnsupportedOpError as exc:
        return (
            "the bounds were not cross-checked against onnxruntime: lipcert's float64 "
            f"executor cannot run this graph ({exc}); certify refuses the model for the "
            "same reason"
        )
    # One thread each (torch's restored after): on a busy 2-core machine the default thread
    # pools cost more than the work (a batch of three: 0.8 s against 2.1-2.8 s on the
    # ImageNet-sized LipNet of benchmarks/imagenet_lipnet_model.py, 25-30 ms of CPU against
    # 140-230 ms on the sample models).
    runtime = OnnxRuntimeEvaluator(loaded, threads=1, spec=analysis.spec)
    # Whether a batch's samples stay apart is certify's question (it refuses a model whose
    # fixed batch mixes them); here both run the same batches: of the graph's own batch size
    # (1, or the B a model fixes), zero-padded, which is also what the executor's folded
    # shapes are for (a Reshape that merges the batch axis).
    runtime.batch_checked = True
    size = max(graph.batch_size, 1)
    batch = probe_inputs(tuple(graph.input_shape))
    chunks = []
    for start in range(0, len(batch), size):
        chunk = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
        chunk[: min(size, len(batch) - start)] = batch[start : start + size]
        chunks.append(chunk)
    theirs = [runtime.logits(chunk) for chunk in chunks]
    # with B > 1 a row may depend on the others: the allowance at the chunk's norm
    norms = [input_norms(chunk) for chunk in chunks]
    if size > 1:
        norms = [np.full(size, np.linalg.norm(n)) for n in norms]
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = [executor.run(chunk.astype(np.float64)).reshape(size, -1) for chunk in chunks]
    except Exception as exc:  # the executor fails on the graph lipcert read: a misreading
        detail = (str(exc).splitlines() or [""])[0]
        raise ModelLoadError(
            f"lipcert's float64 executor fails on its reading of the graph of "
            f"{loaded.path!r} ({type(exc).__name__}: {detail}); please report"
        ) from exc
    finally:
        torch.set_num_threads(saved_threads)
    rows = np.arange(len(batch))
    x_norms = np.concatenate(norms)[rows]
    computed = Evaluation(
        np.concatenate(ours)[rows].astype(np.float64), executor.spec.fp_allowance(x_norms)
    )
    expected = Evaluation(
        np.concatenate(theirs)[rows].astype(np.float64), analysis.spec.fp_allowance(x_norms)
    )
    _refuse_disagreement(computed, expected, loaded.path)
    return None


def _refuse_disagreement(computed: Evaluation, expected: Evaluation, path: str) -> None:
    """ModelLoadError naming the first probe, and its output, where the executor's logits
    (`computed`) and onnxruntime's (`expected`) differ by more than both allowances."""
    ours, theirs = computed.logits, expected.logits
    prefix = f"lipcert's reading of the graph of {path!r} differs from onnxruntime's"
    if ours.shape != theirs.shape:
        raise ModelLoadError(
            f"{prefix}: outputs of shape {ours.shape[1:]!r} against {theirs.shape[1:]!r} per "
            "sample; please report"
        )
    # A float32 logit may overflow where float64 does not; the converse is a misreading
    # (agreement_gaps leaves out samples with a non-finite logit: they are never certified).
    only_theirs = np.isfinite(theirs) & ~np.isfinite(ours)
    gap, limit = agreement_gaps(computed, expected)
    for sample, probe in enumerate(PROBES):
        mismatch = np.flatnonzero(only_theirs[sample])
        if len(mismatch):
            k = int(mismatch[0])
            raise ModelLoadError(
                f"{prefix} on the {probe}: output {k} is {float(ours[sample, k]):.6g} in "
                f"lipcert's float64 executor and {float(theirs[sample, k]):.6g} in onnxruntime; "
                "please report"
            )
        if gap[sample] > limit[sample]:
            k = int(np.argmax(np.abs(ours[sample] - theirs[sample])))
            raise ModelLoadError(
                f"{prefix} on the {probe}: output {k} differs by "
                f"{abs(ours[sample, k] - theirs[sample, k]):.3g} (all outputs: {gap[sample]:.3g} "
                f"in L2), more than the rounding allowance of both ({limit[sample]:.3g}); "
                "please report"
            )
