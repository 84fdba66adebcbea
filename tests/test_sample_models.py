"""Every sample model loads from both of its files, with the bound its README table shows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lipcert.bounds.compose import analyse
from lipcert.frontends import load_model
from lipcert.model import LoadOptions
from lipcert.runtime import OnnxRuntimeEvaluator

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
FACTORIES = {
    "fmnist_binary": "lipcert.zoo:fashion_mnist_binary_lipnet",
    "cifar10_shaped": "lipcert.zoo:cifar10_lipnet",
    "fmnist": "lipcert.zoo:fashion_mnist_lipnet",
}


def table() -> dict[str, float]:
    """Model name -> 'L (logit vector)' column of sample_models/README.md."""
    text = (SAMPLES / "README.md").read_text()
    block = text.split("<!-- lipcert-table:start -->")[1].split("<!-- lipcert-table:end -->")[0]
    header, *rows = [line for line in block.strip().splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    column = columns.index("L (logit vector)")
    bounds = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.fullmatch(r"`(.+)`", cells[0])
        if match:
            bounds[match.group(1)] = float(cells[column])
    return bounds


TABLE = table()


def factory(name: str) -> str:
    return next(arch for prefix, arch in FACTORIES.items() if name.startswith(prefix))


def test_the_table_lists_every_sample_model() -> None:
    files = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
    assert sorted(TABLE) == files
    assert len(files) >= 8


@pytest.mark.parametrize("name", sorted(TABLE))
def test_both_files_load_with_the_tabled_bound_and_the_same_logits(name: str) -> None:
    onnx_model = load_model(SAMPLES / f"{name}.onnx")
    checkpoint = load_model(SAMPLES / f"{name}.safetensors", LoadOptions(arch=factory(name)))
    bounds = [analyse(m.graph).spec.lipschitz_bound for m in (onnx_model, checkpoint)]
    for bound in bounds:
        assert bound == pytest.approx(TABLE[name], abs=5e-5)  # the table rounds to 4 decimals
    assert bounds[0] == pytest.approx(bounds[1], rel=1e-9)
    shape = onnx_model.graph.input_shape
    assert checkpoint.graph.input_shape == shape  # read from the safetensors metadata
    x = np.random.default_rng(0).random((8, *shape)).astype(np.float32)
    np.testing.assert_allclose(
        OnnxRuntimeEvaluator(onnx_model).logits(x),
        OnnxRuntimeEvaluator(checkpoint).logits(x),
        rtol=1e-5,
        atol=1e-5,
    )
