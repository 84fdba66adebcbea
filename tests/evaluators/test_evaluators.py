"""The evaluators' allowances bound the real error, against an independent exact function.

Ground truth: the sample models' own torch modules (lipcert.zoo with the safetensors weights)
run in float64, not lipcert's graph executor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.errors import UnsoundCertificateError
from lipcert.evaluators import Evaluation, agree, check_agreement, input_norms
from lipcert.evaluators.exact import Float64Evaluator
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
from lipcert.evaluators.posterior import PosteriorEvaluator
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "sample_models"
DATA = MODELS / "data" / "fashion_mnist_test_1000.npz"


def _exact_module(name: str, factory: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    from lipcert import zoo

    module = getattr(zoo, factory)()
    module.load_state_dict(load_file(str(MODELS / f"{name}.safetensors")))
    return module.double().eval()


def _hard_inputs(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Real images, and inputs made to stress rounding: large, tiny, signed, constant."""
    n, shape = len(images), images.shape[1:]
    return np.concatenate(
        [
            images,
            images * 40.0,
            images * 1e-5,
            rng.normal(size=(n, *shape)) * 30.0,
            rng.normal(size=(n, *shape)) + 5.0,
            np.full((4, *shape), 1e3),
        ]
    ).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        pytest.param("fmnist_ce_tau128", "fashion_mnist_lipnet", id="tau128"),
        pytest.param("fmnist_ce_tau2", "fashion_mnist_lipnet", id="tau2"),
        pytest.param("fmnist_binary_hkr_alpha0p98_m1", "fashion_mnist_binary_lipnet", id="binary"),
    ],
)
def test_posterior_allowance_bounds_the_real_error(name: str, factory: str) -> None:
    torch.set_num_threads(1)
    loaded = load_model(MODELS / f"{name}.onnx", LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    evaluator = PosteriorEvaluator(loaded, analysis, threads=1)
    assert evaluator.tail is not None and evaluator.measured  # the model exercises both
    images = (np.load(DATA)["x"][:64].astype(np.float32) / np.float32(255)).reshape(-1, 1, 28, 28)
    inputs = _hard_inputs(images, np.random.default_rng(0))
    evaluation = evaluator.evaluate(inputs)
    with torch.no_grad():
        exact = _exact_module(name, factory)(torch.as_tensor(inputs.astype(np.float64)))
    error = np.linalg.norm(evaluation.logits - exact.numpy().reshape(len(inputs), -1), axis=1)
    worst = int(np.argmax(error / evaluation.allowance))
    assert np.all(error <= evaluation.allowance), (
        f"error {error[worst]:.3g} above the allowance {evaluation.allowance[worst]:.3g}"
    )
    # every margin within its own bound, for every pair of classes
    if evaluation.head is not None:
        exact_logits = exact.numpy().reshape(len(inputs), -1)
        classes = exact_logits.shape[1]
        for p in range(classes):
            rows = evaluation.head.margin_allowance(np.full(len(inputs), p))
            computed = evaluation.logits[:, [p]] - evaluation.logits
            truth = exact_logits[:, [p]] - exact_logits
            assert np.all(np.abs(computed - truth) <= rows), p
        assert np.median(rows[:, 1:].max(axis=1) / (np.sqrt(2) * evaluation.allowance)) < 1
    # and it is the tighter bound it claims to be: below the a-priori allowance
    a_priori = analysis.spec.fp_allowance(input_norms(inputs))
    assert np.all(evaluation.allowance <= a_priori)
    assert np.median(a_priori[:64] / evaluation.allowance[:64]) > 3


def test_a_float64_tail_that_differs_from_onnxruntime_is_refused(monkeypatch) -> None:
    """The look-alike: a tail that does not compute the model (here a Gemm off by 0.5 in
    float64 only) must not get the a-posteriori bound; the per-batch check refuses it. The
    tail runs in lipcert's executor here (no op runs in onnxruntime's float64 copy);
    tests/evaluators/test_float64_tail.py has the onnxruntime one."""
    import lipcert.evaluators.posterior as posterior
    import lipcert.graph.execute as execute

    monkeypatch.setattr(posterior, "_FLOAT64_OPS", frozenset())

    original = execute._OPS["Gemm"]

    def wrong_in_float64(node, args, ex):
        (out,) = original(node, args, ex)
        return [out + 0.5 if ex.dtype == torch.float64 else out]

    monkeypatch.setitem(execute._OPS, "Gemm", wrong_in_float64)
    loaded = load_model(MODELS / "fmnist_ce_tau8.onnx", LoadOptions(input_shape=(1, 28, 28)))
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    assert not evaluator.tail_in_onnxruntime and evaluator.tail is not None
    images = np.load(DATA)["x"][:8].astype(np.float32).reshape(-1, 1, 28, 28) / 255
    with pytest.raises(UnsoundCertificateError, match="float64 tail and onnxruntime differ"):
        evaluator.evaluate(images)


class _Reference:
    """An evaluator that is right on its first batch and off by 1 on the later ones."""

    name = "a reference"
    precision = "float32"
    input_dtype = np.float32

    def __init__(self, exact: Float64Evaluator) -> None:
        self.exact = exact
        self.calls = 0

    def evaluate(self, batch: np.ndarray) -> Evaluation:
        self.calls += 1
        evaluation = self.exact.evaluate_unchecked(batch)
        shift = 0.0 if self.calls == 1 else 1.0
        return Evaluation(evaluation.logits + shift, evaluation.allowance)


def test_the_exact_evaluator_compares_every_batch_with_its_reference() -> None:
    loaded = load_model(MODELS / "fmnist_ce_tau8.onnx", LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    reference = _Reference(Float64Evaluator(analysis.graph, spec64))
    exact = Float64Evaluator(analysis.graph, spec64, reference=reference)
    images = np.load(DATA)["x"][:8].astype(np.float64).reshape(-1, 1, 28, 28) / 255
    exact.evaluate(images[:4])
    with pytest.raises(UnsoundCertificateError, match="a reference differ"):
        exact.evaluate(images[4:])
    # and onnxruntime, the real reference, agrees on every batch
    runtime = OnnxRuntimeEvaluator(loaded, spec=analysis.spec)
    checked = Float64Evaluator(analysis.graph, spec64, reference=runtime)
    for start in range(0, 8, 4):
        checked.evaluate(images[start : start + 4])


def test_agreement_check() -> None:
    logits = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, 0.0]])
    first = Evaluation(logits, np.array([0.1, 0.1, 0.1]))
    close = Evaluation(logits + np.array([[0.1, 0.0], [0.0, 0.0], [5.0, 5.0]]), np.zeros(3))
    far = Evaluation(logits + np.array([[0.0, 0.0], [0.0, 0.2], [0.0, 0.0]]), np.zeros(3))
    assert agree(first, close)  # within 0.1 + 0; the non-finite sample is never certified
    assert not agree(first, far)
    with pytest.raises(UnsoundCertificateError, match=r"differ by 0\.2 on sample 1"):
        check_agreement(first, far, "these two")
    with pytest.raises(UnsoundCertificateError, match="shapes"):
        check_agreement(first, Evaluation(logits[:, :1], np.zeros(3)), "these two")


def test_a_model_without_a_float64_tail(tmp_path: Path) -> None:
    """A model ending in a convolution: no float64 tail, the logits come from onnxruntime
    with an a-posteriori allowance; checked against an explicit float64 product."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = (rng.normal(size=(3, 1, 4, 4)) / 4).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"]),
            helper.make_node("Flatten", ["c"], ["logits"]),
        ],
        "conv_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight, "W")],
    )
    path = tmp_path / "conv_only.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    loaded = load_model(path)
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    assert evaluator.tail is None
    inputs = rng.normal(size=(64, 1, 4, 4)) * np.geomspace(1e-3, 1e3, 64)[:, None, None, None]
    inputs = inputs.astype(np.float32)
    evaluation = evaluator.evaluate(inputs)
    exact = inputs.reshape(64, -1).astype(np.float64) @ weight.reshape(3, -1).T.astype(np.float64)
    error = np.linalg.norm(evaluation.logits - exact, axis=1)
    assert np.all(error <= evaluation.allowance)
