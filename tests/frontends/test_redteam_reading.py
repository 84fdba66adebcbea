"""Red team: files that onnxruntime runs one way and lipcert could read another.

Every bound is a bound of lipcert's reading of the file; the load-time cross-check compares
the logits only, on three inputs. Each case below is a construct the ONNX checker admits,
with onnxruntime's run of the file as the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import lipcert
from lipcert.errors import ModelLoadError


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


# --- the default domain imported twice -----------------------------------------------------


def _softmax_model(imports: list[tuple[str, int]]) -> onnx.ModelProto:
    """probs = Softmax(x, axis=1) on (N, 2, 3): at opset < 13 over the flattened (2, 3) (it
    keeps the argmax of the six logits), from 13 over axis 1 alone (it does not)."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["z"], name="logits"),
            helper.make_node("Softmax", ["z"], ["probs"], axis=1, name="softmax"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, 3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(domain, v) for domain, v in imports]
    )
    model.ir_version = 8
    return model


# the logits' argmax is 3 (0.5); Softmax over axis 1 gives column 1 (0, -3) -> 0.95 at index 1
_CENTER = np.array([[[0.0, 0.0, 0.0], [0.5, -3.0, 0.0]]], np.float32)


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param([("", 11), ("", 17)], id="empty_twice"),
        pytest.param([("ai.onnx", 11), ("", 17)], id="alias_then_empty"),
        pytest.param([("", 11), ("ai.onnx", 17)], id="empty_then_alias"),
    ],
)
def test_default_domain_imported_at_two_versions_is_refused(
    tmp_path: Path, imports: list[tuple[str, int]]
) -> None:
    model = _softmax_model(imports)
    # onnxruntime runs the last import (17): the file's decision at the center is class 1,
    # while the argmax of its logits, which lipcert certified reading the first (11), is 3
    # (before the refusal: radius 0.354 for class 3 at this very point)
    probs = _ort(model, _CENTER).reshape(-1)
    assert int(np.argmax(probs)) == 1
    assert int(np.argmax(_CENTER.reshape(-1))) == 3
    assert np.allclose(probs.reshape(2, 3).sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(ModelLoadError, match=r"imports the default ONNX domain at several"):
        lipcert.load(_save(model, tmp_path / "twice.onnx"))


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param([("", 11)], id="once"),
        pytest.param([("", 11), ("ai.onnx", 11)], id="twice_same_version"),
    ],
)
def test_default_domain_imported_once_keeps_the_decision(
    tmp_path: Path, imports: list[tuple[str, int]]
) -> None:
    model = _softmax_model(imports)
    loaded = lipcert.load(_save(model, tmp_path / "once.onnx"))
    assert loaded.lipschitz_bound == pytest.approx(1.0)
    x = np.random.default_rng(0).standard_normal((64, 1, 2, 3)).astype(np.float32)
    for sample in x:
        probs = _ort(model, sample).reshape(-1)
        assert np.allclose(probs.sum(), 1.0, atol=1e-6)  # over all six, as at opset 11
        certified = loaded.certify(sample)
        assert int(certified.prediction[0]) == int(np.argmax(probs))
