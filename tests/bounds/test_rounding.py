"""The floating-point allowance: a worst-case bound of ||f computed in float32 - f||."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, FLOAT64_UNIT_ROUNDOFF, analyse, gamma
from lipcert.frontends import load_model
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.model import LoadOptions
from lipcert.runtime import OnnxRuntimeEvaluator

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
U = FLOAT32_UNIT_ROUNDOFF


def test_gamma() -> None:
    assert gamma(0) == 0.0
    assert gamma(10) == pytest.approx(10 * U / (1 - 10 * U), rel=1e-15)
    assert gamma(10) >= 10 * U / (1 - 10 * U)
    assert gamma(2**24) == float("inf")


def test_one_gemm_by_hand() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 50)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    loaded = load_from_proto(model, LoadOptions(), source="t", fmt="onnx")
    spec = analyse(loaded.graph).spec
    w64 = w.astype(np.float64)
    norm = np.linalg.svd(w64, compute_uv=False)[0]
    abs_norm = np.linalg.svd(np.abs(w64), compute_uv=False)[0]
    # input rounding 2u||x||, carried by ||W||, then the sums of 50 products (+2 for alpha, bias)
    # on the rounded input: gamma_52 |W| (||x|| + 2u||x||)
    expected = 2 * U * norm + gamma(52) * abs_norm * (1 + 2 * U)
    # gradual underflow: n roundings of 2^-150 in each of 3 outputs, as an offset sqrt(3) 2^-124
    underflow = gamma(52) * np.sqrt(3) * 2.0**-124
    assert underflow >= 52 * np.sqrt(3) * 2.0**-150
    assert spec.fp_error_constant == pytest.approx(underflow, rel=1e-9)
    assert spec.fp_error_slope >= expected
    assert spec.fp_error_slope == pytest.approx(expected, rel=1e-9)


def _export(module: torch.nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.zeros(1, *shape),),
        buffer,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=18,
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


class GroupSort2(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        pairs = x.view(shape[0], shape[1] // 2, 2, *shape[2:])
        return torch.cat([pairs.min(2, keepdim=True)[0], pairs.max(2, keepdim=True)[0]], 2).view(
            shape
        )


def random_networks() -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        GroupSort2(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 64),
        GroupSort2(),
        torch.nn.Linear(64, 10),
    )
    smooth = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(48, 200),
        torch.nn.Tanh(),
        torch.nn.Linear(200, 200),
        torch.nn.Sigmoid(),
        torch.nn.Linear(200, 5),
    )

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.body(x)
            return torch.nn.functional.max_pool2d(h, 2).flatten(1)

    return [
        ("conv_groupsort", conv, (3, 16, 16)),
        ("tanh_sigmoid", smooth, (3, 4, 4)),
        ("residual_maxpool", Residual(), (3, 8, 8)),
    ]


NETWORKS = random_networks()


def _measured_errors(loaded, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    analysis = analyse(loaded.graph)
    spec32 = analysis.spec
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    logits32 = OnnxRuntimeEvaluator(loaded).logits(inputs).astype(np.float64)
    with torch.no_grad():
        logits64 = (
            GraphExecutor(loaded.graph, torch.float64)(torch.as_tensor(inputs))
            .numpy()
            .reshape(len(inputs), -1)
        )
    norms = np.linalg.norm(inputs.reshape(len(inputs), -1), axis=1)
    errors = np.linalg.norm(logits32 - logits64, axis=1)
    return errors, spec32.fp_allowance(norms) + spec64.fp_allowance(norms)


def _probe_inputs(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    uniform = rng.random((64, *shape))
    large = rng.normal(size=(16, *shape)) * 50.0  # far outside [0, 1]: errors grow with ||x||
    tiny = rng.random((16, *shape)) * 1e-6
    return np.concatenate([uniform, large, tiny])


@pytest.mark.parametrize(("name", "module", "shape"), NETWORKS, ids=[n for n, _, _ in NETWORKS])
def test_measured_float32_error_is_within_the_allowance(
    name: str, module: torch.nn.Module, shape: tuple[int, ...]
) -> None:
    loaded = load_from_proto(_export(module, shape), LoadOptions(), source=name, fmt="onnx")
    errors, allowance = _measured_errors(loaded, _probe_inputs(shape, np.random.default_rng(1)))
    assert np.all(errors <= allowance), (errors / allowance).max()


@pytest.mark.parametrize("name", ["fmnist_ce_tau8", "fmnist_ce_tau128"])
def test_sample_models_float32_error_is_within_the_allowance(name: str) -> None:
    path = SAMPLES / f"{name}.onnx"
    if not path.exists():
        pytest.fail(f"sample model {path} is missing")
    loaded = load_model(path)
    data = np.load(SAMPLES / "data" / "fashion_mnist_test_1000.npz")
    inputs = data["x"][:200].astype(np.float64) / 255
    errors, allowance = _measured_errors(loaded, inputs)
    assert np.all(errors <= allowance)
    assert errors.max() > 0  # the runtime does round: the comparison is not vacuous
