"""The table of op versions and attributes lipcert implements, against ONNX's own schemas.

For every op that has a Lipschitz rule or an executor implementation, every version of its
schema that is in force at some opset lipcert accepts must be either implemented, with all of
its attributes read (the allow-list), or refused with a reason. A new ONNX release that adds a
version or an attribute makes this test fail until someone reads the specification.
"""

from __future__ import annotations

import onnx.defs
import pytest
from onnx import helper

from lipcert.bounds.registry import bound_node, supported_ops
from lipcert.errors import UnsupportedOpError
from lipcert.graph.execute import GraphExecutor
from lipcert.graph.execute import supported_ops as executor_ops
from lipcert.graph.ir import Graph, Node
from lipcert.graph.opsets import MIN_OPSET, SUPPORT, check_node, in_force, is_lipcert_op

LATEST = onnx.defs.onnx_opset_version()


def _history(op: str) -> list[onnx.defs.OpSchema]:
    return sorted(
        (s for s in onnx.defs.get_all_schemas_with_history() if s.name == op and s.domain == ""),
        key=lambda s: s.since_version,
    )


def _versions_in_force(op: str) -> list[onnx.defs.OpSchema]:
    """The schemas of `op` in force at some opset from MIN_OPSET to the latest."""
    history = _history(op)
    found = []
    for i, schema in enumerate(history):
        last = history[i + 1].since_version - 1 if i + 1 < len(history) else LATEST
        if last >= MIN_OPSET:
            found.append(schema)
    return found


ONNX_OPS = sorted(op for op in set(supported_ops()) | set(executor_ops()) if not is_lipcert_op(op))


def test_every_rule_and_executor_op_is_in_the_table() -> None:
    assert sorted(set(ONNX_OPS) - set(SUPPORT)) == []


@pytest.mark.parametrize("op", ONNX_OPS)
def test_every_version_in_force_is_implemented_or_refused(op: str) -> None:
    support = SUPPORT[op]
    schemas = _versions_in_force(op)
    assert schemas, f"ONNX has no schema for {op}"
    for schema in schemas:
        version = schema.since_version
        if version in support.versions:
            unread = sorted(set(schema.attributes) - support.attrs)
            assert not unread, f"{op}-{version} has attributes nobody reads: {unread}"
        else:
            assert version in support.refused, (
                f"{op}-{version} is neither implemented nor refused with a reason"
            )
    listed = {s.since_version for s in _history(op)}
    assert support.versions <= listed, f"{op}: versions ONNX does not have"


def _graph(node: Node, opset: int) -> Graph:
    return Graph(
        input_name="x",
        output_name="y",
        nodes=[node],
        constants={},
        shapes={"x": (1, 3, 4), "y": (1, 3, 4)},
        opset=opset,
    )


def test_an_attribute_nobody_reads_is_refused() -> None:
    node = Node("relu", "LeakyRelu", ("x",), ("y",), {"alpha": 0.1, "beta": 2.0})
    with pytest.raises(UnsupportedOpError, match=r"node 'relu' \(LeakyRelu\): attribute 'beta'"):
        check_node(node, _graph(node, 17))


def test_an_unreviewed_version_is_refused() -> None:
    node = Node("celu", "Celu", ("x",), ("y",), {})
    version = in_force("Celu", LATEST)
    if version in SUPPORT["Celu"].versions:
        pytest.skip("every Celu version is reviewed")  # pragma: no cover
    with pytest.raises(UnsupportedOpError, match=r"node 'celu' \(Celu\): Celu version"):
        check_node(node, _graph(node, LATEST))


def test_an_unknown_opset_is_refused_by_the_rules_and_the_executor() -> None:
    node = Node("relu", "Relu", ("x",), ("y",), {})
    graph = _graph(node, 0)
    with pytest.raises(UnsupportedOpError, match=r"node 'relu' \(Relu\): the model's opset"):
        bound_node(node, graph)
    with pytest.raises(UnsupportedOpError, match=r"node 'relu' \(Relu\): the model's opset"):
        GraphExecutor(graph)


def test_a_fused_body_is_checked() -> None:
    inner = Node("inner", "Relu", ("x",), ("y",), {"bogus": 1})
    fused = Node("fused", "GroupSort", ("x",), ("y",), {}, body=(inner,))
    with pytest.raises(UnsupportedOpError, match=r"node 'inner' \(Relu\): attribute 'bogus'"):
        check_node(fused, _graph(fused, 17))


def test_the_checker_rejects_attributes_outside_the_schema() -> None:
    """Why the table only lists schema attributes: the front-end's checker refuses others."""
    node = helper.make_node("Relu", ["x"], ["y"], bogus=1)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_node(node, onnx.checker.DEFAULT_CONTEXT)
