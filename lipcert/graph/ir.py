"""The internal graph: the data path of a model, with constant weights and static shapes.

Both front-ends (ONNX files and PyTorch checkpoints) produce a `Graph`; nothing downstream
knows which file format a model came from. Ops and attributes follow ONNX names and
semantics, so that one table of bound rules serves every format.

Conventions:
- Every data tensor has a static shape with a leading batch axis of size `batch_size`: 1,
  unless the model fixes another batch size (its samples are still processed independently,
  which the rules check where an op could mix them).
- Shape arithmetic (Shape, Gather, Concat of int64, ...) has been folded into constants: the
  nodes left are the ones that carry data from the model input to the logits.
- Constant tensors keep the dtype of the file; bound rules convert weights to float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lipcert.errors import UnsupportedOpError


@dataclass(frozen=True)
class Node:
    """One operation on the data path.

    `body` is empty for an ordinary op. A fused pattern (GroupSort, L2-norm pooling, ...) keeps
    the original nodes it replaced in `body`: executing the body reproduces the model exactly,
    while the bound rule for the fused op uses what the pattern proves as a whole.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    body: tuple[Node, ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def walk(self) -> Iterator[Node]:
        """This node and, for a fused node, the nodes of its body (depth first)."""
        yield self
        for inner in self.body:
            yield from inner.walk()


@dataclass
class Graph:
    """A model's data path from its input to the logits, at one static input shape."""

    input_name: str
    output_name: str
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    size_known: bool = True
    batch_size: int = 1
    # The model fixes its batch at batch_size (a static batch axis, even of 1): its shape
    # constants may hold it (a Reshape merging the batch axis), so it runs in chunks of it.
    batch_fixed: bool = False
    source: str = ""
    notes: list[str] = field(default_factory=list)
    # Values of the data tensors at a zero input (float64), when the front-end computed them.
    zero_input_values: dict[str, np.ndarray] = field(default_factory=dict)
    # The model's ai.onnx opset: it fixes which version of each op, with which attributes and
    # defaults, a node means (lipcert.graph.opsets). 0 when unknown: every op is then refused.
    opset: int = 0
    # Constants computed from the shape of a data tensor (Shape, Size and what follows): when
    # the input size is left open (`size_known` False) they hold for the probe's size only.
    size_dependent: frozenset[str] = frozenset()
    # Constants the model computes inexactly in float32 (a weight normalisation, ...): held
    # here in float64, while the runtime uses their float32 roundings (lipcert.bounds.folded).
    inexact_constants: frozenset[str] = frozenset()
    # For each of them, a bound rho of |c64 - c| / |c| (c the exact value) elementwise.
    folded_error: dict[str, float] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, without the batch axis."""
        return self.shapes[self.input_name][1:]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.output_name][1:]

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def constant(self, name: str) -> np.ndarray:
        return self.constants[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def data_inputs(self, node: Node) -> list[str]:
        """The inputs of a node that carry data (neither constant nor absent)."""
        return [name for name in node.inputs if name and name not in self.constants]

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                users.setdefault(name, []).append(node)
        return users

    def copy(self) -> Graph:
        """A copy whose node list, tables and notes can change without touching this graph.

        Nodes are immutable and constant arrays are never written in place, so they are shared.
        """
        return replace(
            self,
            nodes=list(self.nodes),
            constants=dict(self.constants),
            shapes=dict(self.shapes),
            notes=list(self.notes),
            zero_input_values=dict(self.zero_input_values),
        )

    def fresh_name(self, base: str) -> str:
        """`base`, or `base#2`, `base#3`...: a tensor name no constant, data tensor or node
        (fused bodies included) of the graph uses. A weight lipcert derives (a folded
        BatchNorm) under a name the file gives another tensor would replace that tensor for
        every node reading it (a Gemm bounded with another layer's weight)."""
        used = set(self.constants) | set(self.shapes)
        for node in (inner for top in self.nodes for inner in top.walk()):
            used.update(node.inputs)
            used.update(node.outputs)
        name, suffix = base, 2
        while name in used:
            name, suffix = f"{base}#{suffix}", suffix + 1
        return name

    def unique_node_names(self) -> None:
        """Give each node a name no other node has (the first keeps its own, later ones get
        '#2', '#3'...). Names key per-node tables (the unit roundoff each node ran in), and a
        file may name a node as lipcert names an unnamed one (Mul_0) or a fused pair
        (conv+bn): a Gemm named 'conv+bn' run in float64 gave the float32 Conv+BN it shared
        the name with the float64 unit, 35 times too small an allowance."""
        taken = {node.name for node in self.nodes}
        seen: set[str] = set()
        for index, node in enumerate(self.nodes):
            if node.name in seen:
                suffix = 2
                while f"{node.name}#{suffix}" in taken:
                    suffix += 1
                name = f"{node.name}#{suffix}"
                taken.add(name)
                self.nodes[index] = replace(node, name=name)
            seen.add(self.nodes[index].name)

    def prune(self) -> None:
        """Drop the nodes that do not lead to the output, and unused constants."""
        needed = {self.output_name}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(out in needed for out in node.outputs):
                kept.append(node)
                needed.update(name for inner in node.walk() for name in inner.inputs if name)
        self.nodes = kept[::-1]
        self.constants = {k: v for k, v in self.constants.items() if k in needed}


def refuse(node: Node, why: str) -> UnsupportedOpError:
    """The error for a node lipcert knows the op of but cannot use as it is."""
    return UnsupportedOpError(f"node {node.name!r} ({node.op}): {why}")
