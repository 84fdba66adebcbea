"""Allocations inside If branches: refused before anything runs, naming the node.

Shape inference does not bound the sizes of tensors inside subgraphs, so the size guard
cannot check them as it checks the main graph's: a chain of Concat(t, t) (each doubles t) or
of NonZero (each holds rank(t) times its input's elements) inside a branch would allocate
terabytes during the probe run. Each hostile model is loaded in a child process whose address
space is capped, so a regression (the probe running the branch) fails with another error
instead of exhausting the machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from hostile_models import make, tensor
from onnx import TensorProto, helper

from lipcert.frontends.onnx_guard import (
    _refuse_allocations_in_subgraphs,
    refuse_large_sparse_tensors,
)

# Address space of the child: enough to import lipcert and load a small model, far below
# the terabytes the branches below would allocate.
_ADDRESS_SPACE = 12 << 30
_LIMIT_S = 120
_STEPS = 40  # 4 * 2^40 values: 16 TiB of float32


def _load_in_child(path: Path) -> subprocess.CompletedProcess[str]:
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
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=_LIMIT_S
    )


def _branch(nodes: list[onnx.NodeProto], output: str, name: str) -> onnx.GraphProto:
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)]
    )


def _model_with_branch(then_nodes: list[onnx.NodeProto], then_output: str) -> onnx.ModelProto:
    """logits = x + If(cond){ then_nodes } else { ReduceSum(w) }: the branches read the
    constant w (control flow on the input is refused before sizes are looked at), so the
    If is a constant the loader computes."""
    other = _branch(
        [helper.make_node("ReduceSum", ["w"], ["small"], keepdims=1, name="else_sum")],
        "small",
        "else",
    )
    nodes = [
        helper.make_node(
            "If",
            ["cond"],
            ["extra"],
            then_branch=_branch(then_nodes, then_output, "then"),
            else_branch=other,
            name="branch",
        ),
        helper.make_node("Add", ["x", "extra"], ["logits"], name="add"),
    ]
    inits = [tensor("cond", True, np.bool_), tensor("w", np.arange(1, 5).reshape(1, 4))]
    return make(nodes, inits, [1, 4], [1, 4])


def _concat_chain(steps: int = _STEPS) -> tuple[list[onnx.NodeProto], str]:
    nodes = []
    current = "w"
    for step in range(steps):
        nodes.append(
            helper.make_node("Concat", [current, current], [f"c{step}"], axis=1, name=f"cat{step}")
        )
        current = f"c{step}"
    nodes.append(helper.make_node("ReduceSum", [current], ["total"], keepdims=1, name="sum"))
    return nodes, "total"


def _nonzero_chain() -> tuple[list[onnx.NodeProto], str]:
    """NonZero -> Cast -> Exp (every value > 0) -> NonZero...: each step doubles the count."""
    nodes = [helper.make_node("Exp", ["w"], ["e_in"], name="exp_in")]
    current = "e_in"
    for step in range(_STEPS):
        nodes += [
            helper.make_node("NonZero", [current], [f"nz{step}"], name=f"nonzero{step}"),
            helper.make_node("Cast", [f"nz{step}"], [f"f{step}"], to=TensorProto.FLOAT),
            helper.make_node("Exp", [f"f{step}"], [f"e{step}"], name=f"exp{step}"),
        ]
        current = f"e{step}"
    nodes.append(helper.make_node("ReduceSum", [current], ["total"], keepdims=1, name="sum"))
    return nodes, "total"


def test_concat_chain_inside_an_if_branch_is_refused_before_running(tmp_path: Path) -> None:
    nodes, output = _concat_chain()
    path = tmp_path / "concat_branch.onnx"
    onnx.save(_model_with_branch(nodes, output), str(path))
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(
        "ModelLoadError: node 'cat0' (Concat) inside 'branch' (If): lipcert cannot bound"
    ), result.stdout


def test_nonzero_chain_inside_an_if_branch_is_refused_before_running(tmp_path: Path) -> None:
    nodes, output = _nonzero_chain()
    path = tmp_path / "nonzero_branch.onnx"
    onnx.save(_model_with_branch(nodes, output), str(path))
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(
        "ModelLoadError: node 'nonzero0' (NonZero) inside 'branch' (If): lipcert cannot bound"
    ), result.stdout


def test_huge_sparse_constant_inside_an_if_branch_is_refused(tmp_path: Path) -> None:
    """onnxruntime makes sparse constants dense when it builds a session, before the size
    guard: they are checked first."""
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("values", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("indices", TensorProto.INT64, [1], [0]),
        [1 << 40],
    )
    nodes = [
        helper.make_node("Constant", [], ["dense"], sparse_value=sparse, name="sparse"),
        helper.make_node("ReduceSum", ["dense"], ["total"], keepdims=1, name="sum"),
    ]
    path = tmp_path / "sparse_branch.onnx"
    onnx.save(_model_with_branch(nodes, "total"), str(path))
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("ModelLoadError: node 'sparse' (Constant) of "), result.stdout
    assert "is a sparse tensor of shape (1099511627776,)" in result.stdout, result.stdout


def test_small_branches_still_run(tmp_path: Path) -> None:
    """The Concat chain with 3 steps is what it claims (onnxruntime runs it: 8 copies of
    w); a branch of size-safe ops (a Reduce of the constant) still loads."""
    small = _model_with_branch(*_concat_chain(3))
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    session = ort.InferenceSession(small.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.allclose(session.run(None, {"x": x})[0], x + 8 * 10)
    plain = _model_with_branch(
        [helper.make_node("ReduceMax", ["w"], ["top"], keepdims=1, name="top")], "top"
    )
    path = tmp_path / "plain_branch.onnx"
    onnx.save(plain, str(path))
    result = _load_in_child(path)
    # The guard admits it (the loader then goes on to other checks: here it refuses the
    # If's constant, which its float64 recomputation does not cover).
    _refuse_allocations_in_subgraphs(list(plain.graph.node), plain.functions)
    refuse_large_sparse_tensors(plain, "plain")
    assert "bound the size" not in result.stdout, result.stdout
    assert "sparse tensor" not in result.stdout, result.stdout


def test_huge_sparse_initializer_is_refused(tmp_path: Path) -> None:
    model = _model_with_branch(
        [helper.make_node("ReduceMax", ["w"], ["top"], keepdims=1, name="top")], "top"
    )
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("unused", TensorProto.FLOAT, [1], [1.0]),
        helper.make_tensor("unused_indices", TensorProto.INT64, [1], [0]),
        [1 << 20, 1 << 20],
    )
    model.graph.sparse_initializer.append(sparse)
    path = tmp_path / "sparse_initializer.onnx"
    onnx.save(model, str(path))
    result = _load_in_child(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("ModelLoadError: initializer 'unused' of "), result.stdout
