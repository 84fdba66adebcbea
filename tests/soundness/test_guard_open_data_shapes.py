"""Data tensors whose shapes shape inference cannot follow (a Split by computed sizes).

TorchScript writes MaxMin as `a, b = x.chunk(2, dim=1)` or `x[:, :h], x[:, h:]` with h from
Shape(x): inference leaves the halves' shapes open and so the Max/Min after them. Their shapes
follow the input's shape only, so the guard reads them off a partial run and goes on; a
broadcast that those shapes make huge is still refused before it is allocated.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from hostile_models import load, make, tensor
from onnx import helper

from lipcert.bounds.compose import analyse
from lipcert.errors import LipcertError


class _MaxMinChunk(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.max(a, b), torch.min(a, b)], dim=1)


class _MaxMinHalf(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[1] // 2
        a, b = x[:, :h], x[:, h:]
        return torch.cat([torch.max(a, b), torch.min(a, b)], dim=1)


@pytest.mark.parametrize("activation", [_MaxMinChunk, _MaxMinHalf], ids=["chunk", "half"])
def test_torchscript_maxmin_loads_as_a_groupsort(activation: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        activation(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 6, 6),),
        buffer,
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    loaded = load(onnx.load_from_string(buffer.getvalue()), input_shape=(3, 6, 6))
    analysis = analyse(loaded.graph)
    assert "GroupSort" in [layer.op for layer in analysis.layers]
    # Ground truth: the bound lies between the norm of the Jacobian at random points (a lower
    # bound of the true constant) and the product of the conv's and the head's exact norms
    # (up to the zero-padded conv method's looseness on a 6x6 map).
    conv = net[0].weight.detach().double()
    dense = np.zeros((4 * 36, 3 * 36))
    for i in range(3 * 36):
        unit = torch.zeros(3 * 36, dtype=torch.float64)
        unit[i] = 1.0
        out = torch.nn.functional.conv2d(unit.reshape(1, 3, 6, 6), conv, padding=1)
        dense[:, i] = out.reshape(-1).numpy()
    head = net[3].weight.detach().double().numpy()
    product = np.linalg.norm(dense, 2) * np.linalg.norm(head, 2)
    assert analysis.spec.lipschitz_bound <= 1.2 * product
    net64 = net.double()
    for seed in range(5):
        x = torch.randn(3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        jacobian = torch.autograd.functional.jacobian(lambda v: net64(v[None])[0], x)
        norm = np.linalg.norm(jacobian.reshape(5, -1).numpy(), 2)
        assert analysis.spec.lipschitz_bound >= norm


def test_a_broadcast_of_open_halves_that_would_be_huge_is_refused() -> None:
    """Max(Unsqueeze(a, 2), Unsqueeze(b, 1)) of two halves of 2^15 values: 2^30 values."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["width"], axis=0, name="width"),
        helper.make_node("Div", ["width", "two"], ["half"], name="half"),
        helper.make_node("Concat", ["half", "half"], ["sizes"], axis=0, name="sizes"),
        helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1, name="split"),
        helper.make_node("Unsqueeze", ["a", "axis2"], ["a3"], name="a3"),
        helper.make_node("Unsqueeze", ["b", "axis1"], ["b3"], name="b3"),
        helper.make_node("Max", ["a3", "b3"], ["grid"], name="outer"),
        helper.make_node("ReduceMax", ["grid"], ["logits"], axes=[2], keepdims=0, name="pool"),
    ]
    initializers = [
        tensor("one", [1], np.int64),
        tensor("two", [2], np.int64),
        tensor("axis1", [1], np.int64),
        tensor("axis2", [2], np.int64),
    ]
    model = make(nodes, initializers, ["n", 1 << 16], ["n", 1 << 15])
    with pytest.raises(LipcertError, match="would hold 1073741824 values"):
        load(model)
