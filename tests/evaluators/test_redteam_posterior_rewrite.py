"""Red team of the default evaluator's rewrite of the file's model (sums of squares of the
measured tensors, the float64 tail): tensors whose leading axis is not the batch axis.

A model may merge the batch axis with the axes after it, (N, 64) -> (8 N, 8) (the batch
checks keep such tensors batched: each sample's data stays in its own row-major block). Its
sums of squares over "the rest of the leading axis" ([0, -1] targets) are then per row of 8
values, not per sample: certify crashed (a numpy broadcast error for 5 samples, an
IndexError for one) when the cut of the float64 tail was such a tensor, and lipcert's
executor, running a tail from it, failed to reshape the logits (a RuntimeError). Ground
truth: onnxruntime on the file (predictions) and certify with precision="float64".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lipcert
from lipcert.evaluators.posterior import PosteriorEvaluator


def _merged_batch_model(path: Path, conv_tail: bool, merged: bool = True) -> Path:
    """x (N, 64) -> (8 N, 8) -> @Q -> relu -> @Q -> (N, 64) -> dense(10). `conv_tail`: a 1x1
    convolution between the second product and the dense layer (a tail onnxruntime cannot
    copy in float64: lipcert's executor runs it). Not `merged`: the same function on (N, 64)
    rows, the products by the block-diagonal matrix diag(Q, ..., Q)."""
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0].astype(np.float32)
    w = rng.normal(size=(10, 64))
    w = (w / np.linalg.norm(w, 2)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(q if merged else np.kron(np.eye(8, dtype=np.float32), q), "Q"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "K"),
        numpy_helper.from_array(np.array([-1, 8 if merged else 64], np.int64), "rows"),
        numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"),
        numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "image"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "rows"], ["r"]),
        helper.make_node("MatMul", ["r", "Q"], ["m"]),
        helper.make_node("Relu", ["m"], ["mr"]),
        helper.make_node("MatMul", ["mr", "Q"], ["m2"]),
    ]
    if conv_tail:
        nodes += [
            helper.make_node("Reshape", ["m2", "image"], ["m4"]),
            helper.make_node("Conv", ["m4", "K"], ["c"]),
            helper.make_node("Flatten", ["c"], ["f"]),
        ]
    else:
        nodes.append(helper.make_node("Reshape", ["m2", "flat"], ["f"]))
    nodes.append(helper.make_node("Gemm", ["f", "W"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "merged_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("conv_tail", [False, True])
@pytest.mark.parametrize(("samples", "batch_size"), [(1, 64), (5, 64), (7, 3)])
def test_a_tensor_with_the_batch_merged_into_its_leading_axis(
    tmp_path: Path, conv_tail: bool, samples: int, batch_size: int
) -> None:
    path = _merged_batch_model(tmp_path / "m.onnx", conv_tail)
    x = np.random.default_rng(1).normal(size=(samples, 64)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    truth = np.argmax(session.run(None, {"x": x})[0], axis=1)
    model = lipcert.load(path)
    fast = model.certify(x, truth, batch_size=batch_size)
    exact = model.certify(x, truth, precision="float64", batch_size=batch_size)
    assert fast.prediction.tolist() == exact.prediction.tolist() == truth.tolist()
    assert np.all(fast.radius > 0)
    assert np.all(fast.radius <= exact.radius * (1 + 1e-6) + 1e-12)
    # Every allowance is one per sample, finite and above the float64 run's.
    assert fast.allowance.shape == (samples,)
    assert np.all(np.isfinite(fast.allowance))


def test_merged_tensors_are_neither_the_cut_nor_measured(tmp_path: Path) -> None:
    """The evaluator's choices behind the test above: the float64 tail starts at the (N, 64)
    tensor, and the (8 N, 8) ones are left to their a-priori sizes; a look-alike with the
    same products on (N, 64) rows (a 64 x 64 block-diagonal matrix) still has its tail
    start at the first product's input."""
    path = _merged_batch_model(tmp_path / "m.onnx", conv_tail=False)
    model = lipcert.load(path)
    evaluator = PosteriorEvaluator(model.loaded, model.analysis)
    assert evaluator.cut == "f"
    merged = {"r", "m", "mr", "m2"}
    assert not merged & {*evaluator.measured, *evaluator.tail_measured}
    assert evaluator.tail_in_onnxruntime
    lookalike = lipcert.load(_merged_batch_model(tmp_path / "l.onnx", False, merged=False))
    evaluator = PosteriorEvaluator(lookalike.loaded, lookalike.analysis)
    assert evaluator.cut == "r"
    assert {"r", "mr"} <= set(evaluator.tail_measured)


@pytest.mark.parametrize("samples", [1, 5])
def test_a_sum_of_squares_not_one_per_sample_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, samples: int
) -> None:
    """Behind the shape guard, the run's own check: with the guard off (every tensor taken
    for batch-leading), the (8 N, 8) cut's float64 sums come back 8 N per batch of N, and
    certify stops with one line naming the tensor instead of a numpy error."""
    import lipcert.evaluators.posterior as posterior
    from lipcert.errors import UnsoundCertificateError

    monkeypatch.setattr(posterior, "_batch_leading", lambda graph, name: True)
    path = _merged_batch_model(tmp_path / "m.onnx", conv_tail=False)
    x = np.random.default_rng(1).normal(size=(samples, 64)).astype(np.float32)
    with pytest.raises(UnsoundCertificateError, match="not one per sample") as error:
        lipcert.load(path).certify(x)
    assert "\n" not in str(error.value)


def test_an_empty_tensor_is_not_measured(tmp_path: Path) -> None:
    """relu(x)[:, 0:0] doubled (an Add of two empty tensors) and concatenated to relu(x),
    then a dense layer: the empty sum's groups of 0 values made onnxruntime refuse the
    evaluator's model (Reshape to (N, -1, 0)), and certify fell back to the a-priori
    allowance. Its size is left a priori (zero) and the rest is measured as usual."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 64))
    w = (w / np.linalg.norm(w, 2)).astype(np.float32)
    ints = {"start": [0], "end": [0], "axis": [1]}
    initializers = [numpy_helper.from_array(w, "W")] + [
        numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["rx"]),
        helper.make_node("Slice", ["rx", "start", "end", "axis"], ["e"]),
        helper.make_node("Add", ["e", "e"], ["z"]),
        helper.make_node("Concat", ["rx", "z"], ["cc"], axis=1),
        helper.make_node("Gemm", ["cc", "W"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    path = tmp_path / "e.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = lipcert.load(path)
    evaluator = PosteriorEvaluator(model.loaded, model.analysis)  # no ModelLoadError
    assert "z" not in evaluator.measured
    x = rng.normal(size=(5, 64)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    truth = np.argmax(session.run(None, {"x": x})[0], axis=1)
    assert np.argmax(evaluator.evaluate(x).logits, axis=1).tolist() == truth.tolist()
    fast = model.certify(x, truth)
    exact = model.certify(x, truth, precision="float64")
    assert fast.prediction.tolist() == truth.tolist()
    assert np.all(fast.radius <= exact.radius * (1 + 1e-6) + 1e-12)


def test_norms_of_lipcerts_float64_tail_cover_underflowed_squares(tmp_path: Path) -> None:
    """A tail lipcert's executor runs (LeakyRelu is not copied into onnxruntime's float64
    run): relu(x W^T) @ I, then five products by s = fl32(1e-38), each followed by a
    LeakyRelu (the identity on the positive values used here), five by 1e38, a dense layer.
    At a cut of ones, the fifth product holds 64 values of about 1e-190, whose float64 squares
    underflow to 0: its norm came back 0, below the exact 8 s^5 (the float64 sums in
    onnxruntime's run add n times the smallest normal number; these did not)."""
    from fractions import Fraction

    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 64))
    w = (w / np.linalg.norm(w, 2)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.eye(64, dtype=np.float32), "I"),
        numpy_helper.from_array(np.array(1e-38, np.float32), "s"),
        numpy_helper.from_array(np.array(1e38, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "I"], ["g0"], transB=1),
        helper.make_node("Relu", ["g0"], ["h0"]),
        helper.make_node("Gemm", ["h0", "I"], ["h"], transB=1),
    ]
    current = "h"
    for i, scale in enumerate(["s"] * 5 + ["b"] * 5):
        nodes += [
            helper.make_node("Mul", [current, scale], [f"m{i}"]),
            helper.make_node("LeakyRelu", [f"m{i}"], [f"a{i}"]),
        ]
        current = f"a{i}"
    nodes.append(helper.make_node("Gemm", [current, "W"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    path = tmp_path / "t.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = lipcert.load(path)
    evaluator = PosteriorEvaluator(model.loaded, model.analysis)
    assert not evaluator.tail_in_onnxruntime and evaluator.tail is not None
    assert evaluator.cut == "h0" and "m4" in evaluator.tail_measured
    _, norms = evaluator.tail(np.ones((1, 64), np.float32), ("m4",))
    s = Fraction(float(np.float32(1e-38)))
    # m4 = fl64(...fl64(1 * s) ... * s): five roundings of relative 2^-53 at most, downwards
    exact_lower = 8 * s**5 * (1 - Fraction(1, 2**50))
    assert Fraction(float(norms["m4"][0])) >= exact_lower


def test_samples_run_one_at_a_time_still_meet_the_executor_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model whose batches mix samples (its first batch differs from its one-sample runs)
    is run one sample at a time by the plain evaluator; the first-sample check against
    lipcert's float64 executor was skipped on that path, so an op the executor reads
    differently from onnxruntime (here its Conv made 1 % larger, as in
    test_first_sample_cross_check) certified onnxruntime's function with the bounds of
    another. The mixing is stood for by the batch check's answer."""
    import lipcert.graph.execute as execute
    from lipcert.bounds.compose import analyse
    from lipcert.certify.pipeline import choose_evaluators
    from lipcert.errors import UnsoundCertificateError
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    root = Path(__file__).resolve().parents[2]
    loaded = load_model(root / "sample_models" / "fmnist_ce_tau8.onnx", LoadOptions())
    batch = np.random.default_rng(0).uniform(0, 1, size=(4, 1, 28, 28)).astype(np.float32)

    def chosen() -> PosteriorEvaluator:
        evaluator = choose_evaluators(loaded, analyse(loaded.graph), "float32", 1).evaluator
        assert isinstance(evaluator, PosteriorEvaluator)
        monkeypatch.setattr(evaluator.plain, "batches_like_single_samples", lambda b: False)
        return evaluator

    evaluation = chosen().evaluate(batch)  # the executor agrees: certified as usual
    assert evaluation.logits.shape == (4, 10)
    conv = execute._OPS["Conv"]

    def misread(node, args, ex):
        return conv(node, [args[0], args[1] * 1.01, *args[2:]], ex)

    monkeypatch.setitem(execute._OPS, "Conv", misread)
    evaluator = chosen()
    with pytest.raises(UnsoundCertificateError, match="executor"):
        evaluator.evaluate(batch)
    assert evaluator.plain.one_at_a_time
