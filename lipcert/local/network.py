"""A model's graph rewritten for linear bound propagation: affine steps and ReLUs only.

Every nonlinearity the local certificate handles is written with ReLU and affine maps, which
are exact rewrites of the same function:

- LeakyReLU / PReLU(x; s) = s x + (1 - s) relu(x);  Abs(x) = 2 relu(x) - x;
- Max(a, b) = b + relu(a - b),  Min(a, b) = a - relu(a - b), one ReLU per pair shared by
  both: a GroupSort2 (ReduceMin / ReduceMax over an axis of size 2), MaxMin and a sorted pair
  (TopK of 2 over an axis of size 2) all become such pairs, so the relaxation sees the
  difference a - b, whose bounds are far tighter than those of a and b.

Affine steps keep the model's own ops (run by lipcert's graph executor), with their additive
constants split off: `linear` applies the exact linear part A, `magnitude` applies |A| (used to
bound rounding errors and interval widths), `constant` is c = F(0). Any other op raises
`LocalUnsupported`: a sample of such a model keeps its global certificate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lipcert.graph import execute as _execute
from lipcert.graph.ir import Graph, Node

Tensor = torch.Tensor
Linear = Callable[..., Tensor]
# (l2 factor, elementwise factor) of each input, and a lookup of any tensor's -> the output's.
Factors = tuple[float, float]
Spread = Callable[[list[Factors], Callable[[str], Factors]], Factors]

# Ops that move or copy elements without mixing them: an element's deviation stays bounded.
_NON_MIXING = frozenset(
    {
        "Identity",
        "Dropout",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Split",
        "DepthToSpace",
        "SpaceToDepth",
        "Cast",
    }
)
_STRUCTURAL = _NON_MIXING | frozenset(
    {
        "Concat",
        "Pad",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "ReduceSum",
        "Sum",
        "Mean",
        "Add",
        "Gather",
        "Expand",
        "Tile",
    }
)
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization"})
_FLOAT_TYPES = frozenset({1, 11})  # ONNX FLOAT, DOUBLE


class LocalUnsupported(Exception):
    """The graph holds an op the local certificate has no relaxation for."""


@dataclass
class AffineStep:
    """output = A(inputs) + c, exactly, with A linear."""

    name: str
    output: str
    inputs: tuple[str, ...]
    linear: Linear
    magnitude: Linear
    constant: Tensor  # (1, *output shape), c as computed
    constant_error: Tensor  # (1, *output shape), a bound of |computed c - exact c|
    # Bounds of how far an element of the output can move, as a multiple of the input's:
    # (l2 factor, elementwise factor), or None when unknown.
    spread: Spread | None = None
    weighted: bool = False  # a layer with weights (Conv, Gemm, ...): its input is a cut
    # The transpose written out, for steps that only move, copy or add elements (exact).
    transpose: Callable[[Tensor], tuple[Tensor, ...]] | None = None
    _vjp: Callable[[Tensor], tuple[Tensor, ...]] | None = field(default=None, repr=False)
    _matrices: list[Tensor] | None = field(default=None, repr=False)
    _input_shapes: tuple[tuple[int, ...], ...] = ()

    def vjp(self, rows: Tensor) -> tuple[Tensor, ...]:
        """rows (K, *output) -> rows A for each input (K, *input).

        A small step is made an explicit matrix once (the transpose applied to the identity,
        each entry one weight or a sum with exact zeros), then one product per call.
        """
        if self.transpose is not None:
            return self.transpose(rows)
        k = rows.shape[0]
        if self._matrices is None and self._dense_size() <= _DENSE_LIMIT:
            n_out = int(np.prod(rows.shape[1:]))
            eye = torch.eye(n_out, dtype=torch.float64).reshape(n_out, *rows.shape[1:])
            self._matrices = [m.reshape(n_out, -1) for m in self._pullback(eye)]
        if self._matrices is not None:
            flat = rows.reshape(k, -1)
            return tuple(
                (flat @ m).reshape(k, *shape)
                for m, shape in zip(self._matrices, self._input_shapes, strict=True)
            )
        return self._pullback(rows)

    def _dense_size(self) -> int:
        n_out = int(np.prod(self.constant.shape[1:]))
        return n_out * sum(int(np.prod(s)) for s in self._input_shapes)

    def _pullback(self, rows: Tensor) -> tuple[Tensor, ...]:
        if self._vjp is None:
            zeros = [torch.zeros((1, *s), dtype=torch.float64) for s in self._input_shapes]
            _, pullback = torch.func.vjp(self.linear, *zeros)[:2]
            self._vjp = torch.func.vmap(pullback)
        grads = self._vjp(rows.unsqueeze(1))
        return tuple(g.squeeze(1) for g in grads)


# Steps with at most this many matrix entries (inputs x outputs) are applied as matrices.
_DENSE_LIMIT = 1 << 20


@dataclass
class ReluStep:
    """output = relu(input), elementwise."""

    name: str
    output: str
    input: str


Step = AffineStep | ReluStep


@dataclass
class Network:
    """The rewritten graph: steps in topological order, per-sample shapes."""

    input_name: str
    output_name: str
    shapes: dict[str, tuple[int, ...]]
    steps: list[Step]
    # Bounds of the Lipschitz constant of input -> tensor (L2), where lipcert's analysis has one.
    lipschitz: dict[str, float]

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    @property
    def largest(self) -> int:
        return max(self.numel(name) for name in self.shapes)

    def relu_inputs(self) -> list[str]:
        return [s.input for s in self.steps if isinstance(s, ReluStep)]


def build_network(graph: Graph, lipschitz: dict[str, float] | None = None) -> Network:
    """Rewrite `graph` (patterns fused or not) into affine steps and ReLUs.

    Raises LocalUnsupported naming the first node that has no sound rewrite.
    """
    if graph.batch_size != 1:
        raise LocalUnsupported(f"the model fixes batch size {graph.batch_size}")
    inexact = sorted(n for n in graph.inexact_constants if graph.folded_error.get(n, 0.0) > 0)
    if inexact:
        # the steps take the graph's float64 value c64 as the constant, which is only within
        # rho |c| of the exact one (lipcert.bounds.folded): a tight bound of the c64 network
        # proved a ball 1e-10 beyond the exact model's decision boundary
        raise LocalUnsupported(
            f"the constant {inexact[0]!r}, computed inside the model, is known in float64 "
            f"only to {graph.folded_error[inexact[0]]:.3g} of itself"
        )
    return _Builder(graph, lipschitz or {}).build()


def _flatten(nodes: list[Node] | tuple[Node, ...]) -> list[Node]:
    found: list[Node] = []
    for node in nodes:
        found.extend(_flatten(node.body) if node.body else [node])
    return found


class _Builder:
    def __init__(self, graph: Graph, lipschitz: dict[str, float]) -> None:
        self.graph = graph
        self.executor = _execute.GraphExecutor(graph, torch.float64)
        self.executor._batch = 1
        self.constants = self.executor.constants
        self.shapes: dict[str, tuple[int, ...]] = {graph.input_name: graph.input_shape}
        self.steps: list[Step] = []
        self.lipschitz = {k: v for k, v in lipschitz.items() if math.isfinite(v)}
        self.pairs: dict[tuple[str, ...], tuple[str, str, str]] = {}
        self.counter = 0
        # Every name the graph uses: the names made up here must not be one of them (a file's
        # tensor named like the ReLU of a pair, m1#relu2, was overwritten by that ReLU).
        self.taken = {graph.input_name, graph.output_name, *self.constants}
        for node in _flatten(graph.nodes):
            self.taken.update(node.inputs)
            self.taken.update(node.outputs)

    def build(self) -> Network:
        for node in _flatten(self.graph.nodes):
            self._node(node)
        if self.graph.output_name not in self.shapes:
            raise LocalUnsupported(f"the output {self.graph.output_name!r} is not computed")
        return Network(
            input_name=self.graph.input_name,
            output_name=self.graph.output_name,
            shapes=self.shapes,
            steps=self.steps,
            lipschitz=self.lipschitz,
        )

    # --- helpers ----------------------------------------------------------------------------

    def _fresh(self, base: str, tag: str) -> str:
        while True:
            self.counter += 1
            name = f"{base}#{tag}{self.counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def _define(self, name: str, shape: tuple[int, ...]) -> None:
        """Register a step's output: each tensor is computed once."""
        if name in self.shapes:
            raise LocalUnsupported(f"the tensor {name!r} is computed twice")
        self.shapes[name] = shape

    def _data(self, node: Node) -> list[str]:
        data = []
        for name in node.inputs:
            if not name:
                continue
            if name in self.shapes:
                data.append(name)
            elif name not in self.constants:
                raise LocalUnsupported(
                    f"node {node.name!r} ({node.op}) reads {name!r}, which is neither data nor "
                    "a constant"
                )
        return data

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.graph.shape(name)[1:])

    def _refuse(self, node: Node, why: str) -> LocalUnsupported:
        return LocalUnsupported(f"node {node.name!r} ({node.op}): {why}")

    def _add_affine(
        self,
        name: str,
        output: str,
        inputs: list[str],
        shape: tuple[int, ...],
        full: Linear,
        linear: Linear,
        magnitude: Linear,
        constant_error: Tensor | None = None,
        spread: Spread | None = None,
        weighted: bool = False,
        transpose: Callable[[Tensor], tuple[Tensor, ...]] | None = None,
    ) -> None:
        input_shapes = tuple(self.shapes[i] for i in inputs)
        zeros = [torch.zeros((1, *s), dtype=torch.float64) for s in input_shapes]
        try:
            with torch.no_grad():
                constant = full(*zeros).detach().clone()
                probe = linear(*zeros)
        except RuntimeError as exc:
            raise LocalUnsupported(
                f"node {name!r}: it does not run on one sample alone ({exc})".split("\n")[0]
            ) from exc
        if tuple(constant.shape[1:]) != shape or tuple(probe.shape[1:]) != shape:
            raise LocalUnsupported(
                f"node {name!r}: expected output shape {shape!r} but computed "
                f"{tuple(constant.shape[1:])!r}"
            )
        _check_batch_axis(name, linear, input_shapes, shape, constant)
        error = constant_error if constant_error is not None else torch.zeros_like(constant)
        step = AffineStep(
            name=name,
            output=output,
            inputs=tuple(inputs),
            linear=linear,
            magnitude=magnitude,
            constant=constant,
            constant_error=error,
            spread=spread,
            weighted=weighted,
            transpose=transpose,
        )
        step._input_shapes = input_shapes
        self.steps.append(step)
        self._define(output, shape)

    def _op(self, node: Node, replaced: dict[int, Any] | None = None, attrs: dict | None = None):
        """A function of the data inputs running the executor's implementation of `node`."""
        data = [n for n in node.inputs if n and n in self.shapes]
        run_node = node if attrs is None else replace(node, attrs={**node.attrs, **attrs})
        fixed: dict[int, Any] = {}
        for index, name in enumerate(node.inputs):
            if name and name not in self.shapes:
                fixed[index] = self.constants[name]
        fixed.update(replaced or {})
        executor = self.executor

        def apply(*xs: Tensor) -> Tensor:
            values = dict(zip(data, xs, strict=True))
            args = []
            for index, name in enumerate(node.inputs):
                if index in fixed:
                    args.append(fixed[index])
                elif name:
                    args.append(values[name])
                else:
                    args.append(None)
            executor._batch = int(xs[0].shape[0])
            return executor.run_node(run_node, args)[0]

        return apply

    # --- dispatch ---------------------------------------------------------------------------

    def _node(self, node: Node) -> None:
        data = self._data(node)
        if not data:
            raise self._refuse(node, "no data input (constant subgraphs should be folded)")
        op = node.op
        if op == "Relu":
            self.steps.append(ReluStep(node.name, node.outputs[0], data[0]))
            self._define(node.outputs[0], self._shape(node.outputs[0]))
            return
        if op in ("LeakyRelu", "PRelu", "Abs"):
            self._leaky(node, data[0])
            return
        if op in ("Max", "Min"):
            self._max_min(node, data)
            return
        if op in ("ReduceMax", "ReduceMin"):
            self._reduce_pair(node, data[0])
            return
        if op == "TopK":
            self._top_k(node, data[0])
            return
        if op == "Neg":
            self._affine_node(node, data, magnitude_op="Identity")
            return
        if op == "Sub":
            self._affine_node(node, data, magnitude_op="Add" if len(data) == 2 else "Identity")
            return
        if op in _WEIGHTED or op in ("Mul", "Div"):
            self._weighted(node, data)
            return
        if op in _STRUCTURAL:
            self._check_structural(node, data)
            self._affine_node(node, data)
            return
        raise self._refuse(node, "no linear relaxation for this op")

    # --- affine ops -------------------------------------------------------------------------

    def _offsets_zeroed(self, node: Node) -> dict[int, Any]:
        """Constant inputs that add to the output, replaced by zeros (the linear part)."""
        zeroed: dict[int, Any] = {}
        if node.op in ("Add", "Sub", "Sum", "Mean", "Concat"):
            for index, name in enumerate(node.inputs):
                if name and name not in self.shapes:
                    zeroed[index] = torch.zeros_like(self.constants[name])
        if node.op == "Pad" and len(node.inputs) > 2 and node.inputs[2]:
            zeroed[2] = None
        if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2:
            zeroed[2] = None
        if node.op == "BatchNormalization":
            zeroed[2] = torch.zeros_like(self.constants[node.inputs[2]])
            zeroed[3] = torch.zeros_like(self.constants[node.inputs[3]])
        return zeroed

    def _affine_node(
        self,
        node: Node,
        data: list[str],
        magnitude_op: str | None = None,
        magnitude_args: dict[int, Any] | None = None,
        magnitude_attrs: dict | None = None,
        constant_error: Tensor | None = None,
    ) -> None:
        outputs = [o for o in node.outputs if o]
        if node.op == "Dropout":
            outputs = list(node.outputs[:1])
        elif node.op != "Split" and len(outputs) != 1:
            raise self._refuse(node, "expected one output")
        for output in outputs[:1]:
            full = self._op(node)
            zeroed = self._offsets_zeroed(node)
            linear = self._op(node, zeroed)
            if magnitude_op == "Identity" or magnitude_op == "Add":
                magnitude = _sum_inputs(self._shape(output))
            elif magnitude_args is not None or magnitude_attrs is not None:
                magnitude = self._op(node, {**zeroed, **(magnitude_args or {})}, magnitude_attrs)
            else:
                magnitude = linear
            self._add_affine(
                node.name,
                output,
                data,
                self._shape(output),
                full,
                linear,
                magnitude,
                constant_error,
                spread=self._spread_rule(node),
                weighted=node.op in _WEIGHTED or node.op in ("Mul", "Div"),
                transpose=self._reshape_transpose(node, data, output),
            )

    def _reshape_transpose(
        self, node: Node, data: list[str], output: str
    ) -> Callable[[Tensor], tuple[Tensor, ...]] | None:
        """Ops that only reshape: their transpose reshapes back."""
        reshaping = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast")
        if node.op not in reshaping or len(data) != 1:
            return None
        shape = self.shapes[data[0]]
        if int(np.prod(shape)) != int(np.prod(self._shape(output))):
            return None
        return lambda rows: (rows.reshape(rows.shape[0], *shape),)

    def _spread_rule(self, node: Node) -> Spread | None:
        constant_pad = node.op == "Pad" and node.attr("mode", "constant") == "constant"
        if node.op in _NON_MIXING or constant_pad:
            return lambda parts, _: parts[0]
        if node.op == "Concat":
            return lambda parts, _: (
                math.sqrt(sum(p[0] ** 2 for p in parts)) * (1 + 1e-12),
                max(p[1] for p in parts),
            )
        return None

    def _check_structural(self, node: Node, data: list[str]) -> None:
        op = node.op
        if op == "Cast" and int(node.attr("to", 1)) not in _FLOAT_TYPES:
            raise self._refuse(node, f"a cast to type {node.attr('to')!r} is not linear")
        if op == "Pad":
            if node.attr("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
                raise self._refuse(node, f"unknown pad mode {node.attr('mode')!r}")
            if float(node.attr("value", 0.0) or 0.0) != 0.0:
                raise self._refuse(node, "a pad value given as an attribute")
            if len(data) != 1 or node.inputs[0] != data[0]:
                raise self._refuse(node, "pads or value computed from data")
        if op == "Dropout" and len(node.inputs) > 2 and node.inputs[2]:
            mode = self.constants.get(node.inputs[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise self._refuse(node, "dropout in training mode")
        indexed = ("Slice", "Gather", "Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Split")
        if op in indexed and (len(data) != 1 or node.inputs[0] != data[0]):
            raise self._refuse(node, "indices or shapes computed from data")
        if op in ("ReduceMean", "ReduceSum") and (len(data) != 1 or node.inputs[0] != data[0]):
            raise self._refuse(node, "axes computed from data")
        if op == "Split" and len([o for o in node.outputs if o]) > 1:
            raise self._refuse(node, "Split with several outputs is not rewritten yet")
        if op == "Split" and not (node.outputs and node.outputs[0]):
            # the steps run the node's first output: ('', b) would make b the first piece
            raise self._refuse(node, "only the first output of a Split is rewritten")

    def _weighted(self, node: Node, data: list[str]) -> None:
        op = node.op
        if len(data) != 1:
            raise self._refuse(node, "a product of two data tensors is not linear")
        position = node.inputs.index(data[0])
        absolute: dict[int, Any] = {}
        attrs: dict | None = None
        if op in ("Conv", "ConvTranspose", "Gemm"):
            if position != 0:
                raise self._refuse(node, "data as the weight")
            absolute[1] = self.constants[node.inputs[1]].abs()
            if op == "Gemm":
                attrs = {"alpha": abs(float(node.attr("alpha", 1.0)))}
        elif op in ("MatMul", "Mul"):
            other = 1 - position
            absolute[other] = self.constants[node.inputs[other]].abs()
        elif op == "Div":
            if position != 0:
                raise self._refuse(node, "division by data")
            absolute[1] = self.constants[node.inputs[1]].abs()
        elif op == "BatchNormalization":
            if position != 0 or node.attr("training_mode", 0):
                raise self._refuse(node, "batch statistics in training mode")
            absolute[1] = self.constants[node.inputs[1]].abs()
        constant_error = None
        if op == "BatchNormalization":
            constant_error = self._batchnorm_constant_error(node)
        self._affine_node(
            node,
            data,
            magnitude_args=absolute,
            magnitude_attrs=attrs,
            constant_error=constant_error,
        )

    def _batchnorm_constant_error(self, node: Node) -> Tensor:
        scale, bias, mean, var = (self.constants[n] for n in node.inputs[1:5])
        eps = float(node.attr("epsilon", 1e-5))
        factor = (scale / torch.sqrt(var + eps)).abs()
        per_channel = 16 * 2.0**-53 * (bias.abs() + mean.abs() * factor)
        shape = (1, -1) + (1,) * (len(self._shape(node.outputs[0])) - 1)
        return per_channel.reshape(shape).expand(1, *self._shape(node.outputs[0])).clone()

    # --- nonlinear ops as ReLUs -------------------------------------------------------------

    def _leaky(self, node: Node, source: str) -> None:
        shape = self._shape(node.outputs[0])
        if node.op == "Abs":
            slope: Tensor | float = -1.0
        elif node.op == "LeakyRelu":
            slope = float(node.attr("alpha", 0.01))
        else:
            if len(node.inputs) < 2 or node.inputs[1] not in self.constants:
                raise self._refuse(node, "a slope computed from data")
            slope = self.constants[node.inputs[1]]
        r = self._fresh(node.outputs[0], "relu")
        self.steps.append(ReluStep(node.name, r, source))
        self._define(r, self.shapes[source])
        slope_t = torch.as_tensor(slope, dtype=torch.float64)
        rest = 1.0 - slope_t

        def combine(x: Tensor, y: Tensor) -> Tensor:
            return slope_t * x + rest * y

        def combine_abs(x: Tensor, y: Tensor) -> Tensor:
            return slope_t.abs() * x + rest.abs() * y

        # The constants are applied with one rounding each: |A| covers them within gamma.
        def transpose(rows: Tensor) -> tuple[Tensor, ...]:
            return slope_t * rows, rest * rows

        self._add_affine(
            node.name,
            node.outputs[0],
            [source, r],
            shape,
            combine,
            combine,
            combine_abs,
            transpose=transpose if slope_t.dim() == 0 else None,
        )

    def _pair(self, source: str, axis: int, keep: bool, node: Node) -> tuple[str, str, str]:
        """a, b (the two halves of `source` along `axis`) and r = relu(a - b), once per pair."""
        key = (source, str(axis), str(keep))
        if key in self.pairs:
            return self.pairs[key]
        shape = self.shapes[source]
        if axis < 0 or axis >= len(shape) or shape[axis] != 2:
            raise self._refuse(node, f"expected an axis of size 2 but got {shape!r} at {axis}")
        half = list(shape)
        if keep:
            half[axis] = 1
        else:
            del half[axis]
        names = []
        for start in (0, 1):
            name = self._fresh(source, "half")

            def take(x: Tensor, _start: int = start) -> Tensor:
                piece = x.narrow(axis + 1, _start, 1)
                return piece if keep else piece.squeeze(axis + 1)

            def put(rows: Tensor, _start: int = start) -> tuple[Tensor, ...]:
                full = rows.new_zeros((rows.shape[0], *shape))
                full.narrow(axis + 1, _start, 1).copy_(rows if keep else rows.unsqueeze(axis + 1))
                return (full,)

            self._add_affine(
                node.name,
                name,
                [source],
                tuple(half),
                take,
                take,
                take,
                spread=lambda parts, _: parts[0],
                transpose=put,
            )
            names.append(name)
        a, b = names
        d = self._fresh(source, "diff")

        def difference_spread(parts: list[Factors], lookup: Callable[[str], Factors]) -> Factors:
            (ra, ca), (rb, cb) = parts
            # a and b are disjoint halves of one tensor t: |da_i - db_i| <= ||a - b|| <=
            # sqrt(2) sqrt(||da||^2 + ||db||^2) <= sqrt(2) ||dt||.
            whole = math.sqrt(2.0) * lookup(source)[0] * (1 + 1e-12)
            return min(ra + rb, whole), min(ca + cb, whole)

        self._add_affine(
            node.name,
            d,
            [a, b],
            tuple(half),
            torch.sub,
            torch.sub,
            torch.add,
            spread=difference_spread,
            transpose=_difference_transpose,
        )
        r = self._fresh(source, "relu")
        self.steps.append(ReluStep(node.name, r, d))
        self._define(r, tuple(half))
        self.pairs[key] = (a, b, r)
        return a, b, r

    def _select(self, node: Node, output: str, a: str, b: str, r: str, largest: bool) -> None:
        """max(a, b) = b + r or min(a, b) = a - r with r = relu(a - b)."""
        shape = self.shapes[r]
        base = b if largest else a
        sign = 1.0 if largest else -1.0

        def select(x: Tensor, y: Tensor) -> Tensor:
            return x + sign * y

        def select_abs(x: Tensor, y: Tensor) -> Tensor:
            return x + y

        def transpose(rows: Tensor) -> tuple[Tensor, ...]:
            return rows, sign * rows

        self._add_affine(
            node.name, output, [base, r], shape, select, select, select_abs, transpose=transpose
        )

    def _reduce_pair(self, node: Node, source: str) -> None:
        rank = len(self.shapes[source]) + 1
        if len(node.inputs) > 1 and node.inputs[1]:
            if node.inputs[1] not in self.constants:
                raise self._refuse(node, "axes computed from data")
            axes = [int(a) for a in self.constants[node.inputs[1]].reshape(-1).tolist()]
        else:
            axes = [int(a) for a in node.attr("axes", [])]
        reduced = sorted({a % rank for a in axes}) if axes else list(range(rank))
        sizes = [(1, *self.shapes[source])[a] for a in reduced]
        big = [a for a, s in zip(reduced, sizes, strict=True) if s != 1]
        if 0 in reduced or len(big) != 1 or int(np.prod(sizes)) != 2:
            raise self._refuse(node, "only a reduction over one axis of size 2 is relaxed")
        if len(reduced) != 1:
            raise self._refuse(node, "a reduction over several axes")
        keep = bool(node.attr("keepdims", 1))
        a, b, r = self._pair(source, big[0] - 1, keep, node)
        self._select(node, node.outputs[0], a, b, r, node.op == "ReduceMax")
        if tuple(self.shapes[node.outputs[0]]) != self._shape(node.outputs[0]):
            raise self._refuse(node, "unexpected output shape")

    def _max_min(self, node: Node, data: list[str]) -> None:
        if len(node.inputs) != 2:
            raise self._refuse(node, "expected two inputs")
        out_shape = self._shape(node.outputs[0])
        first, second = node.inputs
        if len(data) == 2:
            if self.shapes[first] != out_shape or self.shapes[second] != out_shape:
                raise self._refuse(node, "broadcast between the two data inputs")
            key = (first, second)
            if key in self.pairs:
                a, b, r = self.pairs[key]
            elif (second, first) in self.pairs:
                # The pair was met as (second, first), r = relu(second - first): max and min
                # are symmetric, so max(first, second) = first + r and min = second - r, as
                # _select gives for a = second, b = first. (Reading r as relu(first - second)
                # made Max(b, a) into a + relu(a - b): a local radius 1.41 for a true 1.)
                a, b, r = self.pairs[(second, first)]
            else:
                d = self._fresh(node.outputs[0], "diff")
                self._add_affine(
                    node.name, d, [first, second], out_shape, torch.sub, torch.sub, torch.add
                )
                r = self._fresh(node.outputs[0], "relu")
                self.steps.append(ReluStep(node.name, r, d))
                self._define(r, out_shape)
                a, b = first, second
                self.pairs[key] = (a, b, r)
            self._select(node, node.outputs[0], a, b, r, node.op == "Max")
            return
        source = data[0]
        if self.shapes[source] != out_shape:
            raise self._refuse(node, "broadcast of the data input")
        other = self.constants[first if source == second else second]
        c = torch.broadcast_to(other, (1, *out_shape)).clone()
        d = self._fresh(node.outputs[0], "diff")
        self._add_affine(
            node.name, d, [source], out_shape, lambda x: x - c, lambda x: x, lambda x: x
        )
        r = self._fresh(node.outputs[0], "relu")
        self.steps.append(ReluStep(node.name, r, d))
        self._define(r, out_shape)
        # max(x, c) = c + relu(x - c); min(x, c) = x - relu(x - c).
        if node.op == "Max":
            self._add_affine(
                node.name,
                node.outputs[0],
                [r],
                out_shape,
                lambda y: y + c,
                lambda y: y,
                lambda y: y,
            )
        else:
            self._add_affine(
                node.name,
                node.outputs[0],
                [source, r],
                out_shape,
                torch.sub,
                torch.sub,
                torch.add,
            )

    def _top_k(self, node: Node, source: str) -> None:
        axis = int(node.attr("axis", -1)) % (len(self.shapes[source]) + 1)
        if len(node.inputs) < 2 or node.inputs[1] not in self.constants:
            raise self._refuse(node, "k computed from data")
        k = int(self.constants[node.inputs[1]].reshape(-1)[0])
        if len(node.outputs) > 1 and node.outputs[1] and self._used(node.outputs[1]):
            raise self._refuse(node, "its indices are used")
        if axis == 0 or self.shapes[source][axis - 1] != 2 or k not in (1, 2):
            raise self._refuse(node, "only TopK over an axis of size 2 is relaxed")
        if k == 2 and not int(node.attr("sorted", 1)):
            raise self._refuse(node, "the order of unsorted TopK values is unspecified")
        largest = bool(node.attr("largest", 1))
        a, b, r = self._pair(source, axis - 1, True, node)
        if k == 1:
            self._select(node, node.outputs[0], a, b, r, largest)
            return
        first, second = self._fresh(node.outputs[0], "top"), self._fresh(node.outputs[0], "bottom")
        self._select(node, first, a, b, r, largest)
        self._select(node, second, a, b, r, not largest)
        out_shape = self._shape(node.outputs[0])

        def stack(x: Tensor, y: Tensor) -> Tensor:
            return torch.cat([x, y], dim=axis)

        self._add_affine(
            node.name, node.outputs[0], [first, second], out_shape, stack, stack, stack
        )

    def _used(self, name: str) -> bool:
        if name == self.graph.output_name:
            return True
        return any(name in n.inputs for n in _flatten(self.graph.nodes))


def _check_batch_axis(
    name: str,
    linear: Linear,
    input_shapes: tuple[tuple[int, ...], ...],
    shape: tuple[int, ...],
    constant: Tensor,
) -> None:
    """Refuse a step that does not treat axis 0 as independent samples.

    The bounds run steps on batches of rows (the first-layer Jacobian, a chunk of basis
    vectors at once): a fixed-batch-1 file may act on axis 0 (Pad or Tile along it, then a
    Slice; Flatten(axis=0)), the identity at batch 1 but not a per-row map. Two random
    samples at once must give the two samples' outputs, and the constant one sample.
    """
    why = None
    if constant.shape[0] != 1:
        why = f"its output has {constant.shape[0]} rows for one sample"
    else:
        generator = torch.Generator().manual_seed(0)
        xs = [torch.randn((2, *s), generator=generator, dtype=torch.float64) for s in input_shapes]
        try:
            with torch.no_grad():
                both = linear(*xs)
                apart = [linear(*(x[i : i + 1] for x in xs)) for i in (0, 1)]
        except RuntimeError:
            both, apart = None, []
        if both is None or tuple(both.shape) != (2, *shape):
            why = "two samples at once do not give two outputs"
        else:
            alone = torch.cat(apart)
            scale = float(alone.abs().max()) + float(both.abs().max())
            if not bool(((both - alone).abs() <= 1e-9 * scale).all()):
                why = "two samples at once do not give each sample's output"
    if why is not None:
        raise LocalUnsupported(f"node {name!r}: it acts on the batch axis ({why})")


def _difference_transpose(rows: Tensor) -> tuple[Tensor, ...]:
    """(a, b) -> a - b, transposed (a and b of the output's shape)."""
    return rows, -rows


def _sum_inputs(shape: tuple[int, ...]) -> Linear:
    """|A| of x -> +-x or (a, b) -> a - b: the sum of the inputs."""

    def total(*xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out.expand(out.shape[0], *shape) if tuple(out.shape[1:]) != shape else out

    return total


__all__ = ["AffineStep", "LocalUnsupported", "Network", "ReluStep", "build_network"]
