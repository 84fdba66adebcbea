"""Look-alikes of Fourier blocks that must not get the per-frequency bound as they are
(lipcert.bounds.fourier_operator): an open input size, and a full-spectrum block whose
real-part Slice also crops the channels.

Ground truth: the dense Jacobian of the file as onnxruntime computes it, f(e_j) - f(0)
column by column, and its SVD.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from affine_zoo import export
from fourier_zoo import LOTReference, random_symbol
from onnx import helper, numpy_helper

from lipcert.bounds import affine_operator as ops
from lipcert.bounds.compose import analyse
from lipcert.bounds.fourier_operator import fourier_analysis, fourier_block, fourier_bound
from lipcert.errors import UnsupportedOpError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph import Graph, Node
from lipcert.model import LoadOptions

SHAPE = (3, 5, 5)


@functools.cache
def _full_spectrum() -> onnx.ModelProto:
    """LOT's forward without padding (fft2, a random 3x3 matrix per bin, ifft2, real part,
    bias) on 3 x 5 x 5, as dynamo exports it: the real part is a Gather of index 0."""
    symbol = random_symbol((5, 6), (3, 3), 29).reshape(5, 6, 3, 3)[:, :5]
    return export(LOTReference(symbol, pad=0).eval(), SHAPE, dynamo=True)


def _real_part_by_slice(keep: int) -> onnx.ModelProto:
    """The same file with the real part taken by Slice [0, 1) along the components, then a
    Squeeze; the Slice also keeps only the first `keep` channels (3: all of them)."""
    model = onnx.ModelProto()
    model.CopyFrom(_full_spectrum())
    graph = model.graph
    nodes = list(graph.node)
    last_dft = [n for n in nodes if n.op_type == "DFT"][-1]
    (gather,) = [n for n in nodes if last_dft.output[0] in n.input]
    assert gather.op_type == "Gather"
    (add,) = [n for n in nodes if gather.output[0] in n.input]
    assert add.op_type == "Add"
    rank = 5  # (batch, channels, 5, 5, components)
    cropped = "real_part_cropped"
    constants = {
        "rp_starts": np.array([0, 0], np.int64),
        "rp_ends": np.array([keep, 1], np.int64),
        "rp_axes": np.array([1, rank - 1], np.int64),
        "rp_squeeze": np.array([rank - 1], np.int64),
    }
    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    slice_node = helper.make_node(
        "Slice",
        [last_dft.output[0], "rp_starts", "rp_ends", "rp_axes"],
        [cropped],
        name="real_part_slice",
    )
    squeeze = helper.make_node("Squeeze", [cropped, "rp_squeeze"], [gather.output[0]])
    at = nodes.index(gather)
    nodes[at : at + 1] = [slice_node, squeeze]
    del graph.node[:]
    graph.node.extend(nodes)
    bias_name = next(name for name in add.input if name != gather.output[0])
    (bias,) = [t for t in graph.initializer if t.name == bias_name]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias)[:keep], bias_name))
    del graph.value_info[:]
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = keep
    onnx.checker.check_model(model)
    return model


def _ort_norm(model: onnx.ModelProto) -> float:
    """||J||_2 of the file's function from its dense Jacobian under onnxruntime (float32)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    n = int(np.prod(SHAPE))
    zero = session.run(None, {feed: np.zeros((1, *SHAPE), np.float32)})[0].reshape(-1)
    units = np.eye(n, dtype=np.float32).reshape(n, *SHAPE)
    columns = [session.run(None, {feed: units[j : j + 1]})[0].reshape(-1) - zero for j in range(n)]
    jacobian = np.array(columns, dtype=np.float64).T
    return float(np.linalg.svd(jacobian, compute_uv=False)[0])


def _analysed(model: onnx.ModelProto) -> tuple[Graph, Node, tuple[float, str, bool]]:
    """The graph with its blocks grouped (by analyse), its one AffineBlock and its row."""
    result = analyse(load_from_proto(model, LoadOptions(), source="model", fmt="onnx").graph)
    (block,) = [node for node in result.graph.nodes if node.op == "AffineBlock"]
    (row,) = [layer for layer in result.layers if layer.op == "AffineBlock"]
    return result.graph, block, (row.bound, row.method, row.exact)


def test_full_spectrum_block_with_a_slice_keeping_every_channel_is_exact() -> None:
    """The look-alike's twin: the real part by Slice, all channels kept, is still the core."""
    model = _real_part_by_slice(keep=3)
    graph, block, (bound, method, exact) = _analysed(model)
    assert exact and "per-frequency" in method, method
    assert fourier_block(block, graph) is not None
    found = fourier_bound(block, graph, ops.body_bounds(block, graph))
    assert found is not None and found[2], found
    truth = _ort_norm(model)
    assert truth * (1 - 1e-5) <= found[0] <= truth * (1 + 1e-5), (found, truth)
    assert truth * (1 - 1e-5) <= bound <= truth * (1 + 1e-5), (bound, truth)


def test_real_part_slice_that_crops_channels_is_not_the_core() -> None:
    """Slice [0, 1) of the components and channels [0, 2): the block is the full one followed
    by a crop, whose norm can be smaller than the full block's. The per-frequency method must
    not take the crop as part of the core (before 5e8de3d it did, called the full block's
    norm exact, and the rule skipped the probe): the rule's bound is sound against the
    file's dense Jacobian, and when called exact it is that Jacobian's norm."""
    model = _real_part_by_slice(keep=2)
    truth = _ort_norm(model)
    full_truth = _ort_norm(_real_part_by_slice(keep=3))
    assert truth < full_truth * (1 - 1e-3), (truth, full_truth)  # the crop shows
    graph, block, (bound, method, exact) = _analysed(model)
    assert fourier_block(block, graph) is None
    found = fourier_bound(block, graph, ops.body_bounds(block, graph))
    assert found is None or not found[2], found
    assert bound >= truth * (1 - 1e-5), (bound, truth, method)
    if exact:
        assert bound <= truth * (1 + 1e-5), (bound, truth, method)


def test_fourier_block_of_a_graph_with_an_open_size_is_refused() -> None:
    """The per-frequency matrices are the probe size's: with `size_known` False the method
    refuses the block (one line naming it) instead of stating a bound for every size."""
    graph, block, _ = _analysed(_full_spectrum())
    bounds = ops.body_bounds(block, graph)
    assert fourier_bound(block, graph, bounds) is not None  # the method reaches this block
    graph.size_known = False
    for call in (fourier_bound, fourier_analysis):
        with pytest.raises(UnsupportedOpError, match=f"node {block.name!r}") as caught:
            call(block, graph, bounds)
        assert "\n" not in str(caught.value)
