"""Expand on the data path: its size follows its shape input and the data's shape only.

The channel zero-padding of SLL, CPL and LBDN (`out = zeros(...); out[:, :k] = x`) exports
with TorchScript as an Expand of the input to a shape computed from Shape(x): its size is fixed
by the input's shape, and it loads. An Expand whose shape is computed from the input's values
changes size with them: refused, naming the node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hostile_models import load, make, run, tensor
from onnx import helper

from lipcert.errors import LipcertError


class _PaddingChannels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4, *x.shape[2:], dtype=x.dtype)
        out[:, : x.shape[1]] = x
        return out.flatten(1)


def test_torchscript_channel_padding_loads(tmp_path: Path) -> None:
    path = tmp_path / "padding.onnx"
    torch.onnx.export(
        _PaddingChannels(),
        (torch.zeros(1, 2, 3, 3),),
        path,
        dynamo=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    model = onnx.load(path)
    assert any(node.op_type == "Expand" for node in model.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(model, x), _PaddingChannels()(torch.from_numpy(x)).numpy())
    loaded = load(model)
    assert loaded.graph.shape(loaded.graph.output_name)[1:] == (36,)


def test_expand_to_a_shape_read_from_the_input_values_is_refused() -> None:
    """Expand(x, (1, ceil |x_0|)): its size follows the input's values."""
    nodes = [
        helper.make_node("Gather", ["x", "zero"], ["first"], axis=1, name="pick"),
        helper.make_node("Abs", ["first"], ["size_f"], name="magnitude"),
        helper.make_node("Ceil", ["size_f"], ["size_c"], name="ceil"),
        helper.make_node("Cast", ["size_c"], ["size"], to=onnx.TensorProto.INT64, name="cast"),
        helper.make_node("Concat", ["one", "size"], ["shape"], axis=0, name="shape"),
        helper.make_node("Expand", ["x", "shape"], ["wide"], name="expand"),
        helper.make_node("ReduceSum", ["wide", "axes"], ["logits"], keepdims=1, name="total"),
    ]
    inits = [
        tensor("zero", [0], np.int64),
        tensor("one", [1], np.int64),
        tensor("axes", [1], np.int64),
    ]
    model = make(nodes, inits, [1, 1], [1, 1])
    with pytest.raises(
        LipcertError, match=r"node 'expand' \(Expand\).*depends on the input's values"
    ):
        load(model)
