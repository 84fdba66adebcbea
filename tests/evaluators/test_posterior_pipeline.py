"""The a-posteriori evaluator's measurements (ReduceSumSquare in both ONNX opset forms, the
cut's norm in float64) bound the real error, and running onnxruntime one batch ahead
(`prefetch`, `pipeline.batches_ahead`) gives exactly the results of evaluating in turn.

Ground truth: the same weights in torch float64 (not lipcert's graph executor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
from lipcert.evaluators.posterior import PosteriorEvaluator
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz"


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def scaled(shape: tuple[int, ...]) -> np.ndarray:
        w = rng.normal(size=shape)
        return (w / np.linalg.norm(w.reshape(shape[0], -1), 2) / 3).astype(np.float32)

    return {
        "W1": scaled((8, 1, 3, 3)),
        "B1": rng.normal(size=8).astype(np.float32) * 0.1,
        "W2": scaled((8, 8, 3, 3)),
        "B2": rng.normal(size=8).astype(np.float32) * 0.1,
        "W3": scaled((10, 8 * 7 * 7)),
        "B3": rng.normal(size=10).astype(np.float32) * 0.1,
    }


def _model(path: Path, opset: int, weights: dict[str, np.ndarray]) -> Path:
    """conv -> relu -> conv (stride 2) -> relu -> flatten -> dense, on 1x14x14 inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "B3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small_convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 14, 14])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def _exact(inputs: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.as_tensor(v.astype(np.float64)) for k, v in w.items()}
    x = torch.as_tensor(inputs.astype(np.float64))
    h = torch.relu(torch.nn.functional.conv2d(x, t["W1"], t["B1"], padding=1))
    h = torch.relu(torch.nn.functional.conv2d(h, t["W2"], t["B2"], padding=1, stride=2))
    return (h.flatten(1) @ t["W3"].T + t["B3"]).numpy()


@pytest.mark.parametrize("opset", [13, 18])
def test_measured_sums_of_squares_bound_the_real_error(tmp_path: Path, opset: int) -> None:
    torch.set_num_threads(1)
    weights = _weights(opset)
    loaded = load_model(_model(tmp_path / f"m{opset}.onnx", opset, weights))
    analysis = analyse(loaded.graph)
    evaluator = PosteriorEvaluator(loaded, analysis, threads=1)
    # the first ReLU's output is measured in onnxruntime, the cut (the dense layer's input,
    # flattened) in the float64 tail
    assert evaluator.measured and evaluator.tail is not None
    assert evaluator.cut in evaluator.tail_measured and evaluator.cut not in evaluator.measured
    rng = np.random.default_rng(opset)
    scale = np.geomspace(1e-4, 1e4, 96)[:, None, None, None]
    inputs = np.concatenate(
        [rng.normal(size=(96, 1, 14, 14)) * scale, rng.random((32, 1, 14, 14)) + 100.0]
    ).astype(np.float32)
    evaluation = evaluator.evaluate(inputs)
    error = np.linalg.norm(evaluation.logits - _exact(inputs, weights), axis=1)
    assert np.all(error <= evaluation.allowance)
    # the measured norms make it tighter than the a-priori allowance, and not vacuous
    a_priori = analysis.spec.fp_allowance(np.linalg.norm(inputs.reshape(128, -1), axis=1))
    assert np.all(evaluation.allowance <= a_priori)
    assert np.all(evaluation.allowance < 1e-3 * np.linalg.norm(evaluation.logits, axis=1) + 1e-3)


def test_a_measured_norm_is_an_upper_bound_of_the_computed_tensor(tmp_path: Path) -> None:
    """Each sum of squares onnxruntime returns, made a norm bound, is at least the norm of
    the tensor as a plain onnxruntime session computes it (float64 sum of its squares)."""
    import onnx
    import onnxruntime as ort

    weights = _weights(1)
    path = _model(tmp_path / "m.onnx", 18, weights)
    loaded = load_model(path)
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    inputs = np.random.default_rng(0).normal(size=(16, 1, 14, 14)).astype(np.float32) * 1e3
    outputs = evaluator._run(inputs)
    sums = outputs[2 : 2 + len(evaluator.measured)]  # then the float64 tail's
    proto = onnx.load(str(path))
    del proto.graph.output[:]
    proto.graph.output.extend(
        [
            onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
            for n in evaluator.measured
        ]
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    tensors = session.run(None, {"x": inputs})
    from lipcert.evaluators.norms import group_size, norm_from_group_sums

    for name, squares, tensor in zip(evaluator.measured, sums, tensors, strict=True):
        size, group = evaluator.sizes[name], group_size(evaluator.sizes[name])
        bound = norm_from_group_sums(np.asarray(squares), size, group, 2.0**-24)
        truth = np.linalg.norm(np.asarray(tensor, dtype=np.float64).reshape(16, -1), axis=1)
        # r1 (1,568 values) in sums of 56: within 1e-5 (one float32 sum of all 1,568 would
        # allow 1.9e-4)
        assert group == 56 and np.asarray(squares).shape == (16, size // group)
        assert np.all(bound >= truth) and np.all(bound <= truth * (1 + 1e-5)), name


def _dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
    return Dataset("fmnist", "test", images, labels, 10, None, "Fashion-MNIST test images")


def test_prefetching_gives_the_results_of_evaluating_in_turn() -> None:
    data = np.load(DATA)
    images = data["x"][:300].reshape(-1, 1, 28, 28).astype(np.uint8)
    labels = data["y"][:300].astype(np.int64)
    loaded = load_model(
        ROOT / "sample_models" / "fmnist_ce_tau8.onnx", LoadOptions(input_shape=(1, 28, 28))
    )
    analysis = analyse(loaded.graph)
    method = choose_method(analysis.spec, "auto")
    eps = parse_eps_list("36/255,72/255,108/255,1")
    results = []
    for ahead in (True, False):
        chosen = choose_evaluators(loaded, analysis, "float32", 2)  # 1: no running ahead
        assert isinstance(chosen.evaluator, PosteriorEvaluator)
        if not ahead:
            chosen.evaluator.prefetch = None  # type: ignore[method-assign,assignment]
        saved = torch.get_num_threads()
        results.append(
            certify_dataset(
                chosen.evaluator,
                analysis.spec,
                method,
                _dataset(images, labels),
                eps,
                batch_size=64,  # 5 batches, the last one short
                exact=chosen.exact,
            )
        )
        assert torch.get_num_threads() == saved  # restored after the pipelined loop
    ahead, in_turn = results
    for field in ("prediction", "runner_up", "margin", "radius", "status"):
        assert np.array_equal(
            getattr(ahead.certificates, field), getattr(in_turn.certificates, field)
        ), field
    assert np.array_equal(ahead.allowance, in_turn.allowance)
    assert ahead.exact is not None and in_turn.exact is not None
    assert np.array_equal(ahead.exact, in_turn.exact)
    assert ahead.exact.any()  # the exact recomputation ran within the pipelined loop


def test_a_batch_evaluated_out_of_turn_is_run_again() -> None:
    """evaluate() takes a prefetched run only for the very batch it was started on."""
    loaded = load_model(
        ROOT / "sample_models" / "fmnist_ce_tau8.onnx", LoadOptions(input_shape=(1, 28, 28))
    )
    evaluator = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=2)
    rng = np.random.default_rng(0)
    first, second, third = (rng.random((8, 1, 28, 28)).astype(np.float32) for _ in range(3))
    expected = {id(b): evaluator.evaluate(b) for b in (first, second, third)}
    evaluator.prefetch(first)
    evaluator.prefetch(second)
    assert len(evaluator._ahead) == 2
    for batch in (second, third, first):  # second skips first's run; third and first: none
        got = evaluator.evaluate(batch)
        assert np.array_equal(got.logits, expected[id(batch)].logits)
        assert np.array_equal(got.allowance, expected[id(batch)].allowance)
    assert not evaluator._ahead
    # with one thread, nothing runs ahead: everything on the calling thread, as asked
    single = PosteriorEvaluator(loaded, analyse(loaded.graph), threads=1)
    single.prefetch(first)
    assert not single._ahead


def test_a_tensor_skipped_for_its_small_share_keeps_a_sound_a_priori_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tensor larger than the input whose measurement could take off less than
    _MIN_SHARE of the a-priori allowance is not measured: its a-priori size is used, the
    allowance still bounds the real error (torch float64), and it is looser than with the
    measurement (the look-alike: the same model with the tensor measured)."""
    import lipcert.evaluators.posterior as posterior

    torch.set_num_threads(1)
    weights = _weights(5)
    loaded = load_model(_model(tmp_path / "m.onnx", 18, weights))
    analysis = analyse(loaded.graph)
    # r1 (8x14x14) is 8 times the input: measured unless its share is below the threshold
    base = PosteriorEvaluator(loaded, analysis, threads=1)
    share = posterior._share(base.plan, "r1", base.units, 0.5 * np.sqrt(196))
    assert 0 < share < 1
    evaluators = {}
    for threshold in (share / 2, share * 2):
        monkeypatch.setattr(posterior, "_MIN_SHARE", threshold)
        evaluators[threshold] = PosteriorEvaluator(loaded, analysis, threads=1)
    measuring, skipping = evaluators[share / 2], evaluators[share * 2]
    assert measuring.measured == ("r1",) and skipping.measured == ()
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(64, 1, 14, 14)) * np.geomspace(1e-3, 1e3, 64)[:, None, None, None]
    inputs = inputs.astype(np.float32)
    exact = _exact(inputs, weights)
    tight, loose = measuring.evaluate(inputs), skipping.evaluate(inputs)
    for evaluation in (tight, loose):
        error = np.linalg.norm(evaluation.logits - exact, axis=1)
        assert np.all(error <= evaluation.allowance)
    assert np.array_equal(tight.logits, loose.logits)
    assert np.all(loose.allowance >= tight.allowance) and np.any(loose.allowance > tight.allowance)
