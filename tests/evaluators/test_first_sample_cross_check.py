"""The default evaluator runs the first sample of its first batch through lipcert's float64
graph executor too: the bounds are those of the graph lipcert executes, so an op whose meaning
the executor reads differently from onnxruntime (as a one-sided inverse DFT once was) stops
certify instead of certifying with the bound of another function.

Ground truth: onnxruntime's own outputs; the executor's Conv is made to compute something
else (a kernel 1 % larger, outside the float64 tail, which has no Conv) to stand for such a
misreading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lipcert.graph.execute as execute
from lipcert.bounds.compose import analyse
from lipcert.certify.pipeline import choose_evaluators
from lipcert.errors import UnsoundCertificateError
from lipcert.evaluators.posterior import PosteriorEvaluator
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "fmnist_ce_tau8.onnx"
DATA = ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz"


def _evaluators():
    loaded = load_model(MODEL, LoadOptions())
    chosen = choose_evaluators(loaded, analyse(loaded.graph), "float32", 1)
    assert isinstance(chosen.evaluator, PosteriorEvaluator)
    return chosen


def _batch() -> np.ndarray:
    with np.load(DATA) as data:
        images = data[data.files[0]][:16]
    return (images.reshape(16, 1, 28, 28) / np.float32(255)).astype(np.float32)


def test_a_graph_onnxruntime_computes_passes_and_is_checked_once() -> None:
    chosen = _evaluators()
    calls = []
    exact = chosen.exact
    assert exact is not None
    original = exact.evaluate

    def counted(batch: np.ndarray):
        calls.append(len(batch))
        return original(batch)

    exact.evaluate = counted  # type: ignore[method-assign]
    batch = _batch()
    first = chosen.evaluator.evaluate(batch)
    second = chosen.evaluator.evaluate(batch)
    assert calls == [1]  # one sample, once
    np.testing.assert_array_equal(first.logits, second.logits)
    np.testing.assert_array_equal(first.allowance, second.allowance)


def test_an_executor_that_misreads_a_conv_stops_the_first_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conv = execute._OPS["Conv"]

    def misread(node, args, ex):
        return conv(node, [args[0], args[1] * 1.01, *args[2:]], ex)

    monkeypatch.setitem(execute._OPS, "Conv", misread)
    chosen = _evaluators()
    with pytest.raises(UnsoundCertificateError, match="executor"):
        chosen.evaluator.evaluate(_batch())
