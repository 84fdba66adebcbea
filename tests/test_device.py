"""--device: the float64 graph on a torch device, tested on the CPU through the same code.

Ground truth: the float64 evaluator (lipcert.evaluators.exact) and onnxruntime on the real
sample models; the radii of `--margins float64`. The CUDA-only parts (the safety factor, the
arithmetic settings, the refusal without a GPU) are checked without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import certify_dataset, choose_evaluators, device_evaluators
from lipcert.certify.radii import choose_method
from lipcert.cli import app
from lipcert.datasets import Dataset
from lipcert.errors import UnsoundCertificateError, UsageError
from lipcert.evaluators import Evaluation, check_agreement
from lipcert.evaluators.exact import Float64Evaluator
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
from lipcert.evaluators.torch_device import (
    CUDA_SAFETY_FACTOR,
    TorchDeviceEvaluator,
    device_spec,
    exact_arithmetic,
    resolve_device,
)
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

MODELS = Path(__file__).resolve().parents[1] / "sample_models"
CASES = [
    pytest.param(("fmnist_ce_tau8.onnx", (1, 28, 28)), id="fmnist_multiclass"),
    pytest.param(("cifar10_shaped_ce_tau16.onnx", (3, 32, 32)), id="cifar10"),
    pytest.param(("fmnist_binary_hkr_alpha0p98_m1.onnx", (1, 28, 28)), id="fmnist_binary"),
]


def _images(shape: tuple[int, ...], n: int = 24, seed: int = 0) -> np.ndarray:
    """uint8 images: random, flat and blends, so that margins range from small to large."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(n, *shape)).astype(np.float64)
    flat = rng.integers(0, 256, size=(n, 1, 1, 1)).astype(np.float64)
    mix = rng.random((n, 1, 1, 1))
    return np.clip(np.round(mix * noise + (1 - mix) * flat), 0, 255).astype(np.uint8)


def _dataset(shape: tuple[int, ...], classes: int, n: int = 24) -> Dataset:
    labels = np.arange(n, dtype=np.int64) % classes
    return Dataset("synthetic", "test", _images(shape, n), labels, classes, None, "synthetic")


@pytest.fixture(scope="module", params=CASES)
def model(request: pytest.FixtureRequest) -> tuple:
    name, shape = request.param
    loaded = load_model(MODELS / name, LoadOptions(input_shape=shape))
    return loaded, analyse(loaded.graph), shape


def test_cpu_device_is_the_float64_evaluator(model: tuple) -> None:
    loaded, analysis, shape = model
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    inputs = _images(shape).astype(np.float64) / 255
    device = TorchDeviceEvaluator(analysis.graph, spec64, device="cpu").evaluate(inputs)
    exact = Float64Evaluator(analysis.graph, spec64).evaluate(inputs)
    np.testing.assert_array_equal(device.logits, exact.logits)
    np.testing.assert_array_equal(device.allowance, exact.allowance)
    runtime = OnnxRuntimeEvaluator(loaded, spec=analysis.spec)
    check_agreement(device, runtime.evaluate(inputs), "device and onnxruntime")
    # Not vacuous: the float32 runtime differs from the float64 graph, by more than 1e-9.
    gap = np.abs(runtime.evaluate(inputs).logits - device.logits).max()
    assert 0 < gap < 1e-3


def test_radii_equal_float64_margins(model: tuple) -> None:
    loaded, analysis, shape = model
    classes = max(2, analysis.spec.num_logits)
    dataset = _dataset(shape, classes)
    method = choose_method(analysis.spec, "auto")
    eps = parse_eps_list("36/255,72/255,1")
    reference = choose_evaluators(loaded, analysis, "float64", None)
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    runtime = OnnxRuntimeEvaluator(loaded, spec=analysis.spec)
    device = device_evaluators(analysis, spec64, "cpu", runtime)
    assert device.exact is None
    results = [
        certify_dataset(chosen.evaluator, chosen.spec, method, dataset, eps, batch_size=10)
        for chosen in (reference, device)
    ]
    np.testing.assert_array_equal(results[0].certificates.radius, results[1].certificates.radius)
    np.testing.assert_array_equal(results[0].allowance, results[1].allowance)
    assert results[0].summary == results[1].summary
    assert np.any(results[1].certificates.radius > 0)


def test_first_batch_checked_against_reference(model: tuple) -> None:
    """A reference that computes something else stops the run on the first batch."""
    _, analysis, shape = model
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)

    class Shifted:
        name = "a shifted model"
        precision = "float64"
        input_dtype = np.float64

        def evaluate(self, batch: np.ndarray) -> Evaluation:
            good = Float64Evaluator(analysis.graph, spec64).evaluate(batch)
            return Evaluation(good.logits + 1e-6, good.allowance)

    evaluator = TorchDeviceEvaluator(analysis.graph, spec64, "cpu", reference=Shifted())
    inputs = _images(shape, n=4).astype(np.float64) / 255
    with pytest.raises(UnsoundCertificateError, match="a shifted model differ"):
        evaluator.evaluate(inputs)


def test_cuda_allowance_has_the_safety_factor(model: tuple) -> None:
    _, analysis, _ = model
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    norms = np.array([0.0, 1.0, 30.0])
    assert device_spec(spec64, torch.device("cpu")) is spec64
    on_gpu = device_spec(spec64, torch.device("cuda")).fp_allowance(norms)
    np.testing.assert_array_equal(on_gpu, spec64.fp_allowance(norms) * CUDA_SAFETY_FACTOR)
    # Still negligible in float64: below 1e-6 for an input of norm 30.
    assert 0 < on_gpu[-1] < 1e-6


def test_exact_arithmetic_switches_off_and_restores() -> None:
    matmul = torch.backends.cuda.matmul
    before = (matmul.allow_tf32, torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark)
    matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        with exact_arithmetic(torch.device("cuda")):
            assert not matmul.allow_tf32
            assert not matmul.allow_fp16_reduced_precision_reduction
            assert not torch.backends.cudnn.enabled
            assert not torch.backends.cudnn.benchmark
            assert not torch.backends.cudnn.allow_tf32
            assert torch.are_deterministic_algorithms_enabled()
        assert matmul.allow_tf32 and torch.backends.cudnn.benchmark
        assert not torch.are_deterministic_algorithms_enabled()
        with exact_arithmetic(torch.device("cpu")):  # nothing to change on the CPU
            assert matmul.allow_tf32
    finally:
        matmul.allow_tf32, torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = before


def test_device_names() -> None:
    assert resolve_device(None).type == "cpu"
    assert resolve_device(" CPU ").type == "cpu"
    for bad in ("tpu", "cpu:0", "cuda:x", "mps"):
        with pytest.raises(UsageError, match="expected device cpu, cuda or cuda:N"):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", ["certify", "attack"])
def test_cli_refuses_cuda_without_a_gpu(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data.npz"
    images = _images((1, 28, 28), n=4)
    np.savez(data, x=images, y=np.arange(4) % 10)
    result = CliRunner().invoke(
        app,
        [command, str(MODELS / "fmnist_ce_tau8.onnx"), "--dataset", str(data), "--device", "cuda"],
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("UsageError: device cuda needs a CUDA GPU")


def test_api_device() -> None:
    import lipcert

    model = lipcert.load(MODELS / "fmnist_ce_tau8.onnx", input_shape=(1, 28, 28))
    x = _images((1, 28, 28), n=6).astype(np.float32) / 255
    on_cpu = model.certify(x, device="cpu", eps=[36 / 255])
    default = model.certify(x, eps=[36 / 255])
    np.testing.assert_array_equal(on_cpu.radius, default.radius)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="needs a CUDA GPU"):
            model.certify(x, device="cuda")
    with pytest.raises(UsageError, match="expected device"):
        model.logits(x, device="gpu")
