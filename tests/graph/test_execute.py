"""The torch executor of the graph against onnxruntime.

GraphExecutor(graph, float64) must compute what onnxruntime computes on the model file, on
batches of several samples (the front-end folds shapes at batch 1): for every model of the
rule reference test, for a few ops only the executor knows, for deel-torchlip exports (a
torch.export model fixes its batch and is fed that batch) and for exporter-style Reshape and
Expand targets computed from Shape(x).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from test_patterns import (
    EXPORT_IDS,
    EXPORTS,
    FIXED_BATCH,
    INPUT_SHAPE,
    deel_export,
    load_graph,
    rc,
)

from lipcert.bounds.compose import analyse
from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor
from lipcert.graph.execute import supported_ops as executor_ops

BATCH = 5


def executed(graph: Graph, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return GraphExecutor(graph, torch.float64)(torch.as_tensor(x)).numpy()


def all_ops(graph: Graph) -> set[str]:
    """The ops the executor runs: a fused node runs its body."""
    found: set[str] = set()
    pending = list(graph.nodes)
    while pending:
        node = pending.pop()
        if node.body:
            pending.extend(node.body)
        else:
            found.add(node.op)
    return found


def _unary(
    case_id: str,
    op: str,
    function: rc.Reference,
    *,
    before: str | None = None,
    after: str | None = None,
    constants: dict[str, np.ndarray] | None = None,
    attrs: dict[str, object] | None = None,
) -> rc.RuleCase:
    """A case whose op only the executor needs (bodies of patterns, refused ops)."""
    nodes, source = [], "x"
    if before is not None:
        nodes.append(helper.make_node(before, ["x"], ["prepared"], name="before"))
        source = "prepared"
    target = "out" if after is not None else "y"
    nodes.append(
        helper.make_node(
            op, [source, *(constants or {})], [target], name=op.lower(), **(attrs or {})
        )
    )
    if after is not None:
        nodes.append(helper.make_node(after, ["out"], ["y"], name="after"))
    return rc.graph_case(
        case_id, op, nodes, function, (3, 4), initializers=constants, linear=False, exact=False
    )


EXECUTOR_ONLY = [
    _unary("exp", "Exp", torch.exp),
    _unary(
        "pow_float_exponent",
        "Pow",
        lambda x: x.abs() ** 3,
        before="Abs",
        constants={"e": rc.f32(3.0)},
    ),
    _unary("pow_integer_exponent", "Pow", lambda x: x**2, constants={"e": rc.i64(2)}),
    _unary("sqrt", "Sqrt", lambda x: x.abs().sqrt(), before="Abs"),
    _unary("sign", "Sign", torch.sign),
    _unary(
        "softmax_inside",
        "Softmax",
        lambda x: torch.softmax(x, 1),
        after="Identity",
        attrs={"axis": 1},
    ),
    _unary(
        "logsoftmax_inside",
        "LogSoftmax",
        lambda x: torch.log_softmax(x, -1),
        after="Identity",
        attrs={"axis": -1},
    ),
]

# Executor ops that differ from onnxruntime: known defects reported to the lead engineer.
EXECUTOR_BUGS: dict[str, str] = {}
CASES = [*rc.all_cases(), *EXECUTOR_ONLY]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=EXECUTOR_BUGS[case.id])]
            if case.id in EXECUTOR_BUGS
            else [],
        )
        for case in CASES
    ],
)
def test_executor_equals_onnxruntime_on_a_batch(case: rc.RuleCase) -> None:
    graph = load_graph(case.model)
    x = rc.random_inputs(case, BATCH, "executor")
    rc.assert_close_to_onnxruntime(executed(graph, x), rc.run_onnxruntime(case.model, x))


def test_silu_node_without_its_body_equals_onnxruntime() -> None:
    # ONNX has no SiLU op: the fused node runs its body (Sigmoid, Mul). The executor's own
    # SiLU op serves a node that comes without one.
    (case,) = [case for case in CASES if case.op == "SiLU"]
    graph = analyse(load_graph(case.model)).graph
    (fused,) = graph.nodes
    graph.nodes = [dataclasses.replace(fused, body=())]
    x = rc.random_inputs(case, BATCH, "executor")
    rc.assert_close_to_onnxruntime(executed(graph, x), rc.run_onnxruntime(case.model, x))


def test_every_executor_op_is_compared_with_onnxruntime() -> None:
    exercised = {"SiLU"}  # test_silu_node_without_its_body_equals_onnxruntime
    for case in CASES:
        exercised |= all_ops(load_graph(case.model))
    assert set(executor_ops()) <= exercised, sorted(set(executor_ops()) - exercised)


@pytest.mark.parametrize(("name", "vanilla", "dynamo"), EXPORTS, ids=EXPORT_IDS)
def test_executor_equals_onnxruntime_on_deel_exports(
    name: str, vanilla: bool, dynamo: bool
) -> None:
    model = deel_export(name, vanilla, dynamo)
    graph = load_graph(model)
    batch = FIXED_BATCH if dynamo else BATCH
    x = rc.rng_for(f"deel/{name}").uniform(0, 1, (batch, *INPUT_SHAPE)).astype(np.float32)
    rc.assert_close_to_onnxruntime(executed(graph, x), rc.run_onnxruntime(model, x))


# --- shape arithmetic folded at batch 1 ----------------------------------------------------


def _shape_of_x_nodes() -> list[onnx.NodeProto]:
    """Shape(x)[0:1] as exporters compute the batch size: folded to [1] by the front-end."""
    return [
        helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
        helper.make_node("Gather", ["x_shape", "zero"], ["batch_scalar"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["batch_scalar", "zero_axis"], ["batch"], name="unsqueeze"),
    ]


FOLDED = [
    pytest.param(
        [
            *_shape_of_x_nodes(),
            helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="target", axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"], name="flatten"),
        ],
        lambda x: x.reshape(x.shape[0], -1),
        id="reshape_to_batch_minus1",
    ),
    pytest.param(
        [
            *_shape_of_x_nodes(),
            helper.make_node("Concat", ["batch", "pairs"], ["target"], name="target", axis=0),
            helper.make_node("Reshape", ["x", "target"], ["grouped"], name="group"),
            helper.make_node(
                "ReduceMax", ["grouped", "pair_axis"], ["y"], name="reduce", keepdims=0
            ),
        ],
        lambda x: x.reshape(x.shape[0], 2, 2, 3, 4).amax(dim=2),
        id="reshape_to_pairs_then_max",
    ),
    pytest.param(
        [
            *_shape_of_x_nodes(),
            helper.make_node("Concat", ["batch", "tail"], ["target"], name="target", axis=0),
            helper.make_node("Expand", ["c", "target"], ["c_batch"], name="expand"),
            helper.make_node("Add", ["x", "c_batch"], ["y"], name="add"),
        ],
        lambda x: x + 0.5,
        id="expand_constant_to_batch",
    ),
]
_FOLDED_CONSTANTS = {
    "zero": rc.i64(0),
    "zero_axis": rc.i64([0]),
    "minus_one": rc.i64([-1]),
    "pairs": rc.i64([2, 2, 3, 4]),
    "pair_axis": rc.i64([2]),
    "tail": rc.i64([4, 3, 4]),
    "c": rc.f32(np.full((1, 4, 3, 4), 0.5)),
}


@pytest.mark.parametrize(("nodes", "reference"), FOLDED)
def test_targets_folded_at_batch_one_follow_the_batch(
    nodes: list[onnx.NodeProto], reference: rc.Reference
) -> None:
    used = {name for n in nodes for name in n.input}
    constants = {k: v for k, v in _FOLDED_CONSTANTS.items() if k in used}
    model = rc.make_model(nodes, [4, 3, 4], constants)
    graph = load_graph(model)
    assert "x_shape" not in graph.shapes  # the shape arithmetic was folded
    x = rc.rng_for("folded").standard_normal((BATCH, 4, 3, 4)).astype(np.float32)
    expected = rc.run_onnxruntime(model, x)
    np.testing.assert_allclose(
        reference(torch.as_tensor(x, dtype=torch.float64)).numpy(), expected, rtol=1e-6
    )
    rc.assert_close_to_onnxruntime(executed(graph, x), expected)
