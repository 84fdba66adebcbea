"""At load time (`lipcert.load`, `lipcert verify`), lipcert's float64 executor of the graph it
bounds must compute what onnxruntime runs, within both guaranteed rounding allowances.

Ground truth: onnxruntime's own outputs on the file. Misreadings are simulated by changing
one op of the executor (a Conv 1 % too large, a Gemm whose transB is ignored): the bounds
are then those of another function and the load must fail; a difference below the sum of
the allowances must not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lipcert
import lipcert.graph.execute as execute
from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.cli import app
from lipcert.errors import ModelLoadError
from lipcert.evaluators.base import input_norms
from lipcert.evaluators.crosscheck import PROBES, cross_check, probe_inputs
from lipcert.evaluators.torch_device import TorchDeviceEvaluator
from lipcert.frontends import load_model
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadOptions

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
ONNX_SAMPLES = sorted(SAMPLES.glob("*.onnx"))
CHECKPOINTS = sorted(SAMPLES.glob("*.safetensors"))
TAU32 = SAMPLES / "fmnist_ce_tau32.onnx"
DIFFERS = r"differs from onnxruntime's on the .* please report"
runner = CliRunner()


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_sample_models_are_all_there() -> None:
    assert len(ONNX_SAMPLES) == 8 and len(CHECKPOINTS) == 8


@pytest.mark.parametrize("path", ONNX_SAMPLES, ids=_ids(ONNX_SAMPLES))
def test_every_onnx_sample_model_passes(path: Path) -> None:
    import torch

    loaded = load_model(path, LoadOptions())
    analysis = analyse(loaded.graph)
    assert cross_check(loaded, analysis) is None
    # independently: onnxruntime and the executor agree on the probes far within 1e-5
    batch = probe_inputs(tuple(analysis.graph.input_shape))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (theirs,) = session.run(None, {session.get_inputs()[0].name: batch})
    with torch.no_grad():
        ours = GraphExecutor(analysis.graph)(torch.from_numpy(batch.astype(np.float64))).numpy()
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours.reshape(theirs.shape), theirs, atol=1e-5 * scale)


@pytest.mark.parametrize("path", CHECKPOINTS, ids=_ids(CHECKPOINTS))
def test_every_checkpoint_sample_model_loads(path: Path) -> None:
    model = lipcert.load(path)  # arch from the file's metadata
    assert not any("cross-checked" in note for note in model.notes)


def test_the_probes_are_fixed_and_image_like() -> None:
    batch = probe_inputs((1, 28, 28))
    assert batch.dtype == np.float32 and batch.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(batch, probe_inputs((1, 28, 28)))
    norms = np.linalg.norm(batch.reshape(3, -1).astype(np.float64), axis=1)
    np.testing.assert_allclose(norms[0], 0.5 * 28, rtol=1e-6)  # a mid-grey image's norm
    assert batch[1].min() >= 0 and batch[1].max() < 1 and norms[2] == 0
    assert len(PROBES) == 3


def _misread_conv(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    conv = execute._OPS["Conv"]

    def misread(node, args, ex):
        return [conv(node, args, ex)[0] * factor]

    monkeypatch.setitem(execute._OPS, "Conv", misread)


def test_a_conv_one_percent_too_large_fails_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _misread_conv(monkeypatch, 1.01)
    with pytest.raises(ModelLoadError, match=DIFFERS) as caught:
        lipcert.load(TAU32)
    message = str(caught.value)
    assert "\n" not in message
    assert "output " in message and "rounding allowance of both" in message


def test_a_conv_one_percent_too_large_fails_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    _misread_conv(monkeypatch, 1.01)
    result = runner.invoke(app, ["verify", str(TAU32)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ModelLoadError: lipcert's reading of the graph")
    assert "please report" in lines[0]


def test_a_conv_off_by_far_less_than_the_allowance_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _misread_conv(monkeypatch, 1 + 1e-6)  # logits move by ~1e-6, the allowance is ~1e-3
    model = lipcert.load(TAU32)
    assert model.lipschitz_bound > 0


def _square_gemm_onnx(path: Path) -> Path:
    """x (8) -> Gemm(W 8x8, transB=1) -> Relu -> Gemm(head 8x3): W not symmetric, so reading
    the first transB wrong gives another function of the same shapes."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    head = rng.standard_normal((8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "H"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "square_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.full(8, 0.1, np.float32), "b"),
            numpy_helper.from_array(head, "H"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def _ignore_trans_b(monkeypatch: pytest.MonkeyPatch) -> None:
    gemm = execute._OPS["Gemm"]

    def misread(node, args, ex):
        return gemm(dataclasses.replace(node, attrs={**node.attrs, "transB": 0}), args, ex)

    monkeypatch.setitem(execute._OPS, "Gemm", misread)


def test_a_square_gemm_read_untransposed_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _square_gemm_onnx(tmp_path / "square.onnx")
    assert lipcert.load(path).num_logits == 3  # read right, it loads
    _ignore_trans_b(monkeypatch)
    with pytest.raises(ModelLoadError, match=DIFFERS):
        lipcert.load(path)
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 2 and "ModelLoadError: lipcert's reading" in result.stderr


def test_a_gemm_read_untransposed_that_cannot_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    _ignore_trans_b(monkeypatch)  # (64, 3136) weight: the executor fails on the shapes
    with pytest.raises(ModelLoadError, match=r"executor fails on its reading .* please report"):
        lipcert.load(TAU32)


def _offset_executor(monkeypatch: pytest.MonkeyPatch, fraction: float) -> None:
    """The executor's logit 0 moved by `fraction` of the sum of both allowances (the
    float32 a-priori one of the analysis and the float64 one) at each input's norm."""
    loaded = load_model(TAU32, LoadOptions())
    analysis = analyse(loaded.graph)
    spec32 = analysis.spec
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    run = TorchDeviceEvaluator.run

    def moved(self, batch):
        values = np.array(run(self, batch), dtype=np.float64).reshape(len(batch), -1)
        norms = input_norms(batch)
        values[:, 0] += fraction * (spec32.fp_allowance(norms) + spec64.fp_allowance(norms))
        return values

    monkeypatch.setattr(TorchDeviceEvaluator, "run", moved)


def test_a_difference_below_both_allowances_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    _offset_executor(monkeypatch, 0.9)
    assert lipcert.load(TAU32).num_logits == 10


def test_a_difference_above_both_allowances_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    _offset_executor(monkeypatch, 1.1)
    with pytest.raises(ModelLoadError, match=r"random normal input: output 0 differs"):
        lipcert.load(TAU32)


def test_a_nan_only_in_the_executor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    run = TorchDeviceEvaluator.run

    def with_nan(self, batch):
        values = np.array(run(self, batch), dtype=np.float64).reshape(len(batch), -1)
        values[np.all(batch.reshape(len(batch), -1) == 0, axis=1), 4] = np.nan
        return values

    monkeypatch.setattr(TorchDeviceEvaluator, "run", with_nan)
    with pytest.raises(ModelLoadError, match=r"zero input: output 4 is nan in lipcert's"):
        lipcert.load(TAU32)


def test_a_graph_the_executor_cannot_run_is_reported_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(execute._OPS, "Gemm")
    model = lipcert.load(TAU32)
    assert any(
        note.startswith("the bounds were not cross-checked against onnxruntime")
        and "/fc1/Gemm" in note
        for note in model.notes
    )
    result = runner.invoke(app, ["verify", str(TAU32), "--json"])
    assert result.exit_code == 0, result.output
    assert "not cross-checked against onnxruntime" in result.stdout


def test_a_float32_overflow_only_in_onnxruntime_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator

    run = OnnxRuntimeEvaluator._run

    def overflowing(self, batch):
        values = np.array(run(self, batch))
        values[:, 4] = np.inf  # float32's range is the smaller one
        return values

    monkeypatch.setattr(OnnxRuntimeEvaluator, "_run", overflowing)
    assert lipcert.load(TAU32).num_logits == 10


def _fixed_batch_onnx(path: Path, batch: int, mix: float) -> Path:
    """x (batch, 8) fixed -> MatMul W -> + mix * (the next sample's row): mix 0 keeps the
    samples apart, mix 2 makes each sample's logits depend on its neighbour."""
    rng = np.random.default_rng(5)
    roll = (np.roll(np.eye(batch), 1, axis=1) * mix).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
        helper.make_node("MatMul", ["ht", "R"], ["mt"]),
        helper.make_node("Transpose", ["mt"], ["m"], perm=[1, 0]),
        helper.make_node("Add", ["h", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(np.ascontiguousarray(roll.T), "R"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))
    return path


def _recorded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    run = TorchDeviceEvaluator.run

    def recorded(self, batch):
        sizes.append(len(batch))
        return run(self, batch)

    monkeypatch.setattr(TorchDeviceEvaluator, "run", recorded)
    return sizes


def test_the_executor_runs_the_graphs_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _recorded_sizes(monkeypatch)
    lipcert.load(TAU32)
    assert sizes == [1, 1, 1]  # the graph is read at batch 1: one probe at a time


def test_a_fixed_batch_model_runs_in_chunks_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _recorded_sizes(monkeypatch)
    path = _fixed_batch_onnx(tmp_path / "fixed2.onnx", 2, 0.0)
    model = lipcert.load(path)
    assert model.loaded.fixed_batch == 2
    assert sizes == [2, 2]  # three probes: two chunks of 2, the last padded


def test_a_fixed_batch_model_that_mixes_samples_loads_and_certify_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _fixed_batch_onnx(tmp_path / "mixing4.onnx", 4, 2.0)
    model = lipcert.load(path)  # the same batches in both: they agree
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(ModelLoadError, match="depend on the other samples of its batch"):
        model.certify(x)
    matmul = execute._OPS["MatMul"]  # a misread MatMul still fails on such a model

    def misread(node, args, ex):
        return [matmul(node, args, ex)[0] * 1.05]

    monkeypatch.setitem(execute._OPS, "MatMul", misread)
    with pytest.raises(ModelLoadError, match=DIFFERS):
        lipcert.load(path)
