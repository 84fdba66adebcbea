"""Red team: local functions with overloads (ONNX IR 10), walked as onnxruntime calls them.

A FunctionProto is identified by (domain, name, overload), and a node calls the overload it
names. lipcert walked local functions keyed by (domain, name) only, so with two overloads
it checked the last one defined, while onnxruntime ran the one the node names (measured
below: the node calling overload "mul" computes 2 x, not the "add" overload's x + 2). A
Concat chain of 16 TiB in the called overload then passed the size guard, and a
RandomNormalLike in it passed the refusal of random ops. Ground truth: onnxruntime's output,
and the load in a child process whose address space is capped (so a regression fails
instead of exhausting the machine).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipcert.errors import LipcertError
from lipcert.frontends.onnx_flow import nested_nodes, refuse_random_and_loops
from lipcert.frontends.onnx_guard import _refuse_allocations_in_subgraphs

_ADDRESS_SPACE = 12 << 30
_STEPS = 40  # 4 * 2^40 values: 16 TiB of float32


def _function(overload: str, nodes: list[onnx.NodeProto]) -> onnx.FunctionProto:
    function = helper.make_function(
        "custom", "F", ["X"], ["Y"], nodes, [helper.make_opsetid("", 18)]
    )
    function.overload = overload
    return function


def _model(
    called: str, functions: list[onnx.FunctionProto], constant_input: bool = False
) -> onnx.ModelProto:
    """logits = x + F(w) (F of a constant: computed by the loader) or F(x)."""
    call = helper.make_node("F", ["w" if constant_input else "x"], ["f"], domain="custom")
    call.overload = called
    nodes = [call]
    if constant_input:
        nodes.append(helper.make_node("Add", ["x", "f"], ["logits"], name="add"))
    else:
        nodes.append(helper.make_node("Identity", ["f"], ["logits"], name="out"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.arange(1, 5, dtype=np.float32).reshape(1, 4), "w")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("custom", 1)],
        functions=functions,
        ir_version=10,
    )
    onnx.checker.check_model(model)
    return model


def _scaled(op: str) -> list[onnx.NodeProto]:
    two = numpy_helper.from_array(np.array(2.0, np.float32))
    return [
        helper.make_node("Constant", [], ["c"], value=two),
        helper.make_node(op, ["X", "c"], ["Y"]),
    ]


def _concat_chain() -> list[onnx.NodeProto]:
    nodes, current = [], "X"
    for step in range(_STEPS):
        nodes.append(
            helper.make_node("Concat", [current, current], [f"c{step}"], axis=1, name=f"cat{step}")
        )
        current = f"c{step}"
    nodes.append(helper.make_node("ReduceSum", [current], ["s"], keepdims=1, name="sum"))
    nodes.append(helper.make_node("Mul", ["X", "s"], ["Y"], name="scale"))
    return nodes


def test_onnxruntime_runs_the_overload_the_node_names() -> None:
    """The premise: with overloads "mul" (2 x) and "add" (x + 2), a call of "mul" gives 2 x,
    and lipcert walks the nodes of "mul" (it walks every overload of the name)."""
    model = _model("mul", [_function("mul", _scaled("Mul")), _function("add", _scaled("Add"))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_array_equal(out, 2 * np.ones((1, 4), np.float32))
    walked = [inner.op_type for _, inner in nested_nodes(model.graph.node, model.functions)]
    assert "Mul" in walked, walked


@pytest.mark.parametrize("order", ["called_first", "called_last"])
def test_concat_chain_in_the_called_overload_is_refused(order: str) -> None:
    functions = [
        _function("big", _concat_chain()),
        _function("small", [helper.make_node("Identity", ["X"], ["Y"])]),
    ]
    if order == "called_last":
        functions.reverse()
    model = _model("big", functions, constant_input=True)
    with pytest.raises(LipcertError, match="cat0"):
        _refuse_allocations_in_subgraphs(list(model.graph.node), model.functions)


def test_random_op_in_the_called_overload_is_refused() -> None:
    noisy = [
        helper.make_node("RandomNormalLike", ["X"], ["r"], scale=0.1, name="noise"),
        helper.make_node("Add", ["X", "r"], ["Y"]),
    ]
    plain = [helper.make_node("Relu", ["X"], ["Y"])]
    model = _model("noisy", [_function("noisy", noisy), _function("plain", plain)])
    with pytest.raises(LipcertError, match="random"):
        refuse_random_and_loops(list(model.graph.node), model.functions)


def test_concat_chain_in_the_called_overload_is_refused_before_running(tmp_path: Path) -> None:
    functions = [
        _function("big", _concat_chain()),
        _function("small", [helper.make_node("Identity", ["X"], ["Y"])]),
    ]
    path = tmp_path / "overload.onnx"
    onnx.save(_model("big", functions, constant_input=True), str(path))
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({_ADDRESS_SPACE}, {_ADDRESS_SPACE}))
        from lipcert.errors import LipcertError
        from lipcert.frontends import load_model
        try:
            load_model({str(path)!r})
        except LipcertError as exc:
            print(type(exc).__name__ + ": " + str(exc))
            sys.exit(2)
        except MemoryError as exc:
            print("MemoryError: " + str(exc))
            sys.exit(3)
        print("loaded")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cat0" in result.stdout, result.stdout
