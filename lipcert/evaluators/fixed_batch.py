"""Models that fix their batch size: each sample's logits must not depend on its batch.

Bounds and certificates are about the function of one sample. A model with a fixed batch
B > 1 is run on batches padded to B; if its logits mix the samples (a MatMul or a reshape
across the batch axis), the same image would get different certificates in different slots
or beside different companions. Before the first logits are used, one sample is placed in
the first and in the last slot, beside zeros and beside the batch's other samples (or their
negations), and copied into every slot (a per-slot constant of a middle slot): its logits
must agree within both rounding allowances, or the model is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lipcert.bounds.spec import CertificateSpec
from lipcert.errors import ModelLoadError
from lipcert.evaluators.base import Evaluation, agreement_gaps, input_norms


def refuse_fixed_batch_mixing(
    run: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    fixed_batch: int,
    spec: CertificateSpec | None,
) -> None:
    """Refuse a model whose logits for a sample depend on its slot or its companions.

    `run` evaluates exactly `fixed_batch` samples. Without a spec the allowance is infinite
    and nothing can be told apart: the check needs one.
    """
    if fixed_batch < 2 or spec is None:
        return
    sample = batch[:1]
    companions = np.concatenate([batch[1:fixed_batch], -batch[:fixed_batch]])[: fixed_batch - 1]
    while len(companions) < fixed_batch - 1:
        companions = np.concatenate([companions, -sample])
    zeros = np.zeros((fixed_batch - 1, *batch.shape[1:]), dtype=batch.dtype)
    placements = {
        "first slot, zeros beside": (np.concatenate([sample, zeros]), 0),
        "last slot, zeros beside": (np.concatenate([zeros, sample]), fixed_batch - 1),
        "first slot, other samples beside": (np.concatenate([sample, companions]), 0),
        "last slot, other samples beside": (np.concatenate([companions[::-1], sample]), -1),
        # a per-slot constant of a middle slot escapes the first and last slots: every row
        "every slot, copies beside": (np.concatenate([sample] * fixed_batch), None),
    }
    allowance = spec.fp_allowance(input_norms(sample))
    reference: Evaluation | None = None
    for where, (inputs, slot) in placements.items():
        logits = np.asarray(run(inputs), dtype=np.float64).reshape(fixed_batch, -1)
        rows = logits if slot is None else logits[slot : slot + 1 or None]
        evaluation = Evaluation(rows, np.repeat(allowance, len(rows)))
        if reference is None:
            reference = evaluation
            continue
        ours = Evaluation(np.repeat(reference.logits, len(rows), axis=0), evaluation.allowance)
        gap, limit = agreement_gaps(ours, evaluation)
        if np.any(gap > limit):
            raise ModelLoadError(
                f"the model's logits for a sample depend on the other samples of its batch "
                f"(fixed at {fixed_batch}): placed {where}, a sample's logits move by "
                f"{gap.max():.3g}, more than rounding allows ({limit.max():.3g}); lipcert "
                "certifies functions of one sample"
            )
