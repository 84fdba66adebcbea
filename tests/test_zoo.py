"""The zoo's factories, and the sample models trained into them."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from lipcert import zoo

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"

FACTORIES = [
    pytest.param(zoo.fashion_mnist_lipnet, (1, 28, 28), 10, 1_000_000, id="fashion_mnist_lipnet"),
    pytest.param(
        zoo.fashion_mnist_binary_lipnet, (1, 28, 28), 1, 1_000_000, id="fashion_mnist_binary_lipnet"
    ),
    pytest.param(zoo.cifar10_lipnet, (3, 32, 32), 10, 2_000_000, id="cifar10_lipnet"),
]

# name -> (factory, bundled data file)
MODELS = {
    "fmnist_ce_tau128": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_ce_tau32": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_ce_tau8": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_ce_tau2": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_hkr_alpha0p98_m0p5": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_hkr_alpha0p98_m2": ("fashion_mnist_lipnet", "fashion_mnist_test_1000"),
    "fmnist_binary_hkr_alpha0p98_m1": (
        "fashion_mnist_binary_lipnet",
        "fashion_mnist_binary_test_1000",
    ),
    "cifar10_shaped_ce_tau16": ("cifar10_lipnet", "fashion_mnist_test_1000"),
}


@pytest.mark.parametrize(("factory", "input_shape", "outputs", "max_bytes"), FACTORIES)
def test_factory_shapes_and_size(factory, input_shape, outputs, max_bytes):
    model = factory().eval()
    with torch.no_grad():
        logits = model(torch.rand(5, *input_shape))
    assert logits.shape == (5, outputs)
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert n_bytes < max_bytes


def test_group_sort2_sorts_each_channel_pair():
    x = torch.randn(3, 6, 4, 5)
    want = torch.sort(x.view(3, 3, 2, 4, 5), dim=2).values.view(3, 6, 4, 5)
    assert torch.equal(zoo.GroupSort2()(x), want)


@pytest.mark.parametrize("shape", [(4, 8), (2, 16, 7, 7)], ids=["dense", "conv"])
def test_group_sort2_matches_deel_torchlip(shape):
    functional = pytest.importorskip("deel.torchlip.functional")
    x = torch.randn(shape)
    assert torch.equal(zoo.GroupSort2()(x), functional.group_sort(x, 2))


def test_group_sort2_refuses_odd_channels():
    with pytest.raises(ValueError, match="even number of channels, got 5"):
        zoo.GroupSort2()(torch.zeros(1, 5))


def test_every_sample_model_is_listed():
    assert sorted(p.stem for p in SAMPLES.glob("*.safetensors")) == sorted(MODELS)
    assert sorted(p.stem for p in SAMPLES.glob("*.onnx")) == sorted(MODELS)


def _inputs(data: str, input_shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    bundle = np.load(SAMPLES / "data" / f"{data}.npz")
    x = torch.from_numpy(bundle["x"][:n]).to(torch.float32) / 255.0
    if input_shape == (3, 32, 32):  # Fashion-MNIST rendered in the CIFAR-10 shape
        x = F.pad(x, (2, 2, 2, 2)).expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.numpy()), bundle["y"][:n]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_model_safetensors_matches_onnx(name):
    factory_name, data = MODELS[name]
    path = SAMPLES / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["arch"] == f"lipcert.zoo:{factory_name}"
    module_name, _, attr = meta["arch"].partition(":")
    model = getattr(importlib.import_module(module_name), attr)()
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()

    input_shape = tuple(int(d) for d in meta["input_shape"].split(","))
    x, y = _inputs(data, input_shape, 200)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()

    session = ort.InferenceSession(
        str(SAMPLES / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    # A trained model, not a fresh one: well above chance on these images.
    pred = (want[:, 0] > 0).astype(np.int64) if want.shape[1] == 1 else want.argmax(axis=1)
    assert (pred == y).mean() > 0.6


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_onnx_has_named_io_and_dynamic_batch(name):
    graph = onnx.load(str(SAMPLES / f"{name}.onnx")).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
