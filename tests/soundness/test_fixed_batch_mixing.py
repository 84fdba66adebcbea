"""A model that fixes its batch (of 4) and mixes the samples in it.

logits_i = x_i + 2 x_(i+1 mod 4): one image gets a decision that depends on its neighbour in
the batch. lipcert must not give the same image two certificates: it refuses the model, or
certifies it the same wherever it sits. The look-alike without mixing is certified, with
the same certificate in every slot.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostile_models import certify, make, tensor
from onnx import helper

from lipcert.errors import LipcertError

BATCH = 4


def _fixed_batch_model(mix: float) -> object:
    roll = np.roll(np.eye(BATCH), 1, axis=1) * mix  # row i picks sample i + 1
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0], name="to_columns"),
        helper.make_node("MatMul", ["xt", "roll"], ["mixed_t"], name="mix"),
        helper.make_node("Transpose", ["mixed_t"], ["mixed"], perm=[1, 0], name="to_rows"),
        helper.make_node("Add", ["x", "mixed"], ["logits"], name="add"),
    ]
    return make(nodes, [tensor("roll", roll.T)], [BATCH, 2], [BATCH, 2])


def _certificates_in_two_slots(model: object) -> tuple[tuple, tuple]:
    image = np.array([0.2, 0.5], np.float32)
    other = np.array([0.9, -0.3], np.float32)
    another = np.array([-0.9, 0.6], np.float32)
    first = np.stack([image, other, other, other])
    last = np.stack([another, other, other, image])
    p1, r1 = certify(model, first)  # type: ignore[arg-type]
    p2, r2 = certify(model, last)  # type: ignore[arg-type]
    return (p1[0], r1[0]), (p2[-1], r2[-1])


def test_mixing_with_a_fixed_batch_is_refused() -> None:
    model = _fixed_batch_model(2.0)
    with pytest.raises(LipcertError, match=r"depend on the other samples of its batch"):
        _certificates_in_two_slots(model)


def test_same_image_same_certificate_without_mixing() -> None:
    model = _fixed_batch_model(0.0)
    first, last = _certificates_in_two_slots(model)
    assert first[0] == last[0] == 1
    assert first[1] == pytest.approx(last[1], rel=1e-6)
    assert first[1] > 0
