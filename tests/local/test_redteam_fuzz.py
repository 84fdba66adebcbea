"""Red team: random graphs of the ops the local rewrite supports, against independent truth.

A generator draws small graphs of MatMul, Gemm (alpha, beta), ReLU, LeakyReLU (slopes below
0, in (0, 1) and above 1), PRelu, Abs, Max / Min of two data tensors (often in both orders)
or of a data tensor and a constant on either side, GroupSort2 pairs (ReduceMax / ReduceMin
over an axis of size 2), TopK of a pair (k = 1 or 2, largest or not), Concat, Sub, Neg, Div,
BatchNormalization, Sum (residual), Mean and Pad + Slice; every tensor feeds the head.

- The rewrite must compute the graph: lipcert's float64 executor at random points (1e-9);
  every affine step's `magnitude` must bound |A| (the explicit matrix of its linear part).
  Reading Max(b, a) after Max(a, b) with the pair's ReLU the wrong way round (fixed in
  e2e764d) computes 10 of the 60 graphs run here wrongly (12 hold a pair in both orders).
- On 2-D inputs the radius proven locally (bisection) must stay within the true distance to
  the decision boundary (dense grid and bisection along rays, tests/soundness); a ReLU upper
  line without its offset (too low) must make that check fail.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from local_support import run_network
from onnx import TensorProto, helper, numpy_helper
from soundness_support import REL, Decision, grid_truth

from lipcert.bounds.compose import Analysis, analyse
from lipcert.errors import LipcertError
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.graph.execute import GraphExecutor
from lipcert.local import crown
from lipcert.local.network import AffineStep, Network, build_network
from lipcert.local.refine import LocalCertifier
from lipcert.model import LoadOptions

KINDS = (
    "matmul",
    "matmul",
    "gemm",
    "relu",
    "leaky",
    "prelu",
    "abs",
    "max_data",
    "max_data",
    "max_const",
    "pair_reduce",
    "topk",
    "concat",
    "sub",
    "neg",
    "div",
    "batchnorm",
    "sum",
    "mean",
    "pad_slice",
)


class _Graph:
    def __init__(self, seed: int, dim: int) -> None:
        self.choose = random.Random(seed)
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.width = {"x": dim}
        self.count = 0

    def const(self, value: object, dtype: type = np.float32) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(values, np.int64)

    def fresh(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def add(self, op: str, inputs: list[str], width: int | None, **attrs: Any) -> str:
        """A node; its output joins the pool of (n, width) tensors unless width is None."""
        out = self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        if width is not None:
            self.width[out] = width
        return out

    def same_width(self, width: int) -> str:
        return self.choose.choice([n for n, w in self.width.items() if w == width])

    def layer(self, kind: str) -> None:
        choose, rng = self.choose, self.rng
        src = choose.choice(list(self.width))
        w = self.width[src]
        if kind == "matmul":
            h = choose.choice([2, 4, 6])
            self.add("MatMul", [src, self.const(rng.normal(size=(w, h)) / np.sqrt(w))], h)
        elif kind == "gemm":
            h = choose.choice([2, 4])
            weight, bias = self.const(rng.normal(size=(h, w))), self.const(rng.normal(size=h))
            alpha, beta = choose.choice([1.0, -0.5, 2.0]), choose.choice([1.0, 0.3])
            self.add("Gemm", [src, weight, bias], h, transB=1, alpha=alpha, beta=beta)
        elif kind == "relu":
            self.add("Relu", [src], w)
        elif kind == "leaky":
            self.add("LeakyRelu", [src], w, alpha=choose.choice([0.1, -0.3, 1.5]))
        elif kind == "prelu":
            self.add("PRelu", [src, self.const(rng.normal(size=w))], w)
        elif kind == "abs":
            self.add("Abs", [src], w)
        elif kind == "max_data":
            other = self.same_width(w)
            op = choose.choice(["Max", "Min"])
            order = [src, other] if choose.random() < 0.5 else [other, src]
            self.add(op, order, w)
            if choose.random() < 0.6:
                again = order[::-1] if choose.random() < 0.7 else order
                self.add(choose.choice(["Max", "Min"]), again, w)
        elif kind == "max_const":
            value = self.const(rng.normal(size=choose.choice([(w,), (1,), ()])))
            order = [src, value] if choose.random() < 0.5 else [value, src]
            self.add(choose.choice(["Max", "Min"]), order, w)
        elif kind in ("pair_reduce", "topk") and w % 2 == 0:
            pairs = self.add("Reshape", [src, self.ints([0, w // 2, 2])], None)
            if kind == "pair_reduce":
                ops = choose.sample(["ReduceMax", "ReduceMin"], choose.choice([1, 2]))
                parts = [self.add(op, [pairs, self.ints([2])], None, keepdims=1) for op in ops]
                joined = self.add("Concat", parts, None, axis=2)
                self.add("Reshape", [joined, self.ints([0, -1])], (w // 2) * len(ops))
            else:
                k = choose.choice([1, 2])
                values, indices = self.fresh(), self.fresh()
                largest = choose.choice([0, 1])
                self.nodes.append(
                    helper.make_node(
                        "TopK",
                        [pairs, self.ints([k])],
                        [values, indices],
                        axis=2,
                        largest=largest,
                        sorted=1,
                    )
                )
                self.add("Reshape", [values, self.ints([0, -1])], (w // 2) * k)
        elif kind == "concat":
            other = choose.choice(list(self.width))
            self.add("Concat", [src, other], w + self.width[other], axis=1)
        elif kind == "sub":
            order = [src, self.const(rng.normal(size=w))]
            self.add("Sub", order if choose.random() < 0.5 else order[::-1], w)
        elif kind == "neg":
            self.add("Neg", [src], w)
        elif kind == "div":
            sign = choose.choice([1.0, -1.0])
            self.add("Div", [src, self.const(sign * rng.uniform(0.5, 2.0, size=w))], w)
        elif kind == "batchnorm":
            column = self.add("Unsqueeze", [src, self.ints([2])], None)
            stats = [self.const(rng.normal(size=w)) for _ in range(3)]
            var = self.const(rng.uniform(0.5, 2.0, size=w))
            normed = self.add("BatchNormalization", [column, *stats, var], None, epsilon=1e-3)
            self.add("Squeeze", [normed, self.ints([2])], w)
        elif kind == "sum":
            self.add("Sum", [src, self.same_width(w), self.const(rng.normal(size=w))], w)
        elif kind == "mean":
            self.add("Mean", [src, self.same_width(w)], w)
        elif kind == "pad_slice":
            mode = choose.choice(["constant", "edge"])
            pads = [self.ints([0, 1, 0, 2]), self.const(np.float32(0.7))]
            padded = self.add("Pad", [src, *pads], None, mode=mode)
            ends = [self.ints([0]), self.ints([w + 1]), self.ints([1])]
            self.add("Slice", [padded, *ends], w + 1)

    def model(self, logits: int) -> onnx.ModelProto:
        used = [n for n in self.width if n != "x"] or ["x"]
        last = self.add("Concat", used, sum(self.width[n] for n in used), axis=1)
        width = self.width[last]
        head = self.const(self.rng.normal(size=(width, logits)) / np.sqrt(width))
        self.nodes.append(helper.make_node("MatMul", [last, head], ["y"]))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", self.width["x"]])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", logits])
        graph = helper.make_graph(self.nodes, "fuzz", [x], [y], self.constants)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def random_model(seed: int, dim: int) -> onnx.ModelProto:
    graph = _Graph(seed, dim)
    for _ in range(graph.choose.randint(3, 9)):
        graph.layer(graph.choose.choice(KINDS))
    return graph.model(graph.choose.choice([1, 2, 3, 4]))


def _analysis(seed: int, dim: int) -> Analysis | None:
    """The analysis of the random model, None where lipcert's global checks refuse it."""
    try:
        loaded = load_from_proto(
            random_model(seed, dim), LoadOptions(input_shape=(dim,)), source="memory", fmt="onnx"
        )
        return analyse(loaded.graph)
    except LipcertError:
        return None


def _swapped_pairs(model: onnx.ModelProto) -> bool:
    pairs = {tuple(n.input) for n in model.graph.node if n.op_type in ("Max", "Min")}
    return any(a != b and (b, a) in pairs for a, b in pairs)


def test_random_graphs_are_rewritten_exactly() -> None:
    accepted = swapped = 0
    for seed in range(60):
        analysis = _analysis(seed, 4)
        if analysis is None:
            continue
        accepted += 1
        swapped += _swapped_pairs(random_model(seed, 4))
        points = np.random.default_rng(seed).normal(size=(32, 4)) * 2
        _check_against_executor(analysis, points, seed)
    assert accepted >= 50 and swapped >= 8, (accepted, swapped)


def _check_against_executor(analysis: Any, points: np.ndarray, seed: int) -> None:
    """The rewrite's network computes what lipcert's executor computes on `points`, and
    every affine step's magnitude bounds |A| (`_check_magnitude`)."""
    network = build_network(analysis.graph, analysis.tensor_bounds)
    with torch.no_grad():
        executed = GraphExecutor(analysis.graph)(torch.as_tensor(points)).numpy()
    executed = executed.reshape(len(points), -1)
    scale = 1.0 + float(np.abs(executed).max())
    got = run_network(network, points)
    np.testing.assert_allclose(got, executed, rtol=0, atol=1e-9 * scale, err_msg=f"{seed}")
    for step in network.steps:
        if isinstance(step, AffineStep):
            _check_magnitude(network, step, np.random.default_rng(seed))


def _check_magnitude(network: Network, step: AffineStep, rng: np.random.Generator) -> None:
    """|A| v <= magnitude(v) for v >= 0, |A| from the explicit matrix of `linear` (basis
    vectors): interval widths and rounding allowances are |A| times something."""
    shapes = [network.shapes[n] for n in step.inputs]
    values = [torch.as_tensor(rng.uniform(0.0, 1.0, size=(1, *s))) for s in shapes]
    with torch.no_grad():
        claimed = step.magnitude(*values).reshape(-1).numpy()
        wanted = np.zeros_like(claimed)
        for k, shape in enumerate(shapes):
            n = int(np.prod(shape))
            basis = [
                torch.eye(n, dtype=torch.float64).reshape(n, *shape)
                if j == k
                else torch.zeros((n, *other), dtype=torch.float64)
                for j, other in enumerate(shapes)
            ]
            matrix = step.linear(*basis).reshape(n, -1).numpy().T
            wanted += np.abs(matrix) @ values[k].reshape(-1).numpy()
    assert np.all(claimed >= wanted * (1 - 1e-12)), (step.name, float((wanted - claimed).max()))


def _violations(seeds: range, points: int = 4) -> tuple[list[str], int]:
    found, proven = [], 0
    for seed in seeds:
        analysis = _analysis(seed, 2)
        if analysis is None:
            continue
        decision = Decision(GraphExecutor(analysis.graph))
        x = np.random.default_rng(seed + 7).uniform(-1.5, 1.5, size=(points, 2))
        logits = decision.logits(x)
        if logits.shape[1] > 1:
            classes = np.argmax(logits, axis=1)
        else:  # one logit f is read as the pair (0, f)
            classes = (logits[:, 0] > 0).astype(np.int64)
        truth = grid_truth(decision, x, classes, 4.0)
        certifier = LocalCertifier(analysis)
        for i in range(points):
            low, high = 0.0, 4.0
            for _ in range(12):
                middle = 0.5 * (low + high)
                if certifier.certify(x[i], int(classes[i]), middle)[0]:
                    low = middle
                else:
                    high = middle
            proven += low > 0
            if low > truth.distance[i] * (1 + REL):
                found.append(f"seed {seed} point {i}: local {low!r} > true {truth.distance[i]!r}")
    return found, proven


def test_random_graphs_radii_stay_within_the_true_distance() -> None:
    found, proven = _violations(range(8))
    assert not found, found
    assert proven >= 16, proven


def test_a_too_low_relu_upper_line_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    right = crown.relax_relu

    def too_low(lower: torch.Tensor, upper: torch.Tensor) -> crown.Relaxation:
        good = right(lower, upper)
        return crown.Relaxation(good.alpha, good.slope, good.offset * 0.0, good.size)

    monkeypatch.setattr(crown, "relax_relu", too_low)
    found: list[str] = []
    try:
        found, _ = _violations(range(8))
    except RuntimeError as exc:  # the bounds' own emptiness check may see it first
        found = [str(exc)]
    assert found


CONV_KINDS = [
    "conv",
    "conv_t",
    "avg",
    "d2s",
    "s2d",
    "transpose",
    "pad",
    "prelu",
    "bn",
    "gs2",
    "relu",
    "resid",
]


def random_conv_model(seed: int) -> onnx.ModelProto:
    """Input (2, 4, 4): Conv (stride, padding, groups, dilation), ConvTranspose, AveragePool
    (padding counted or not), DepthToSpace (DCR, CRD), SpaceToDepth, Transpose, Pad (every
    mode), PRelu per channel, BatchNormalization, GroupSort2 over channel pairs, residual
    blocks; GlobalAveragePool or ReduceMean, Flatten, Gemm."""
    graph = _Graph(seed, 0)
    choose, rng = graph.choose, graph.rng
    cur, (c, h, w) = "x", (2, 4, 4)
    for _ in range(choose.randint(2, 6)):
        kind = choose.choice(CONV_KINDS)
        if kind == "conv":
            out = choose.choice([2, 4])
            groups = choose.choice([1, 2]) if c % 2 == 0 else 1
            k, stride = choose.choice([1, 2, 3]), choose.choice([1, 2])
            dilation, pad = (choose.choice([1, 2]) if k > 1 else 1), choose.choice([0, 1])
            size_h = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
            size_w = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
            if min(size_h, size_w) < 1:
                continue
            weight = graph.const(rng.normal(size=(out, c // groups, k, k)))
            bias = graph.const(rng.normal(size=out))
            cur = graph.add(
                "Conv",
                [cur, weight, bias],
                None,
                strides=[stride] * 2,
                pads=[pad] * 4,
                dilations=[dilation] * 2,
                group=groups,
            )
            c, h, w = out, size_h, size_w
        elif kind == "conv_t" and h <= 5:
            out, k, stride = choose.choice([2, 4]), choose.choice([1, 2, 3]), choose.choice([1, 2])
            weight = graph.const(rng.normal(size=(c, out, k, k)))
            cur = graph.add("ConvTranspose", [cur, weight], None, strides=[stride] * 2)
            c, h, w = out, (h - 1) * stride + k, (w - 1) * stride + k
        elif kind == "avg" and h >= 2:
            cur = graph.add(
                "AveragePool",
                [cur],
                None,
                kernel_shape=[2, 2],
                pads=[1, 1, 0, 0],
                count_include_pad=choose.choice([0, 1]),
            )
        elif kind == "d2s" and c % 4 == 0:
            mode = choose.choice(["DCR", "CRD"])
            cur = graph.add("DepthToSpace", [cur], None, blocksize=2, mode=mode)
            c, h, w = c // 4, 2 * h, 2 * w
        elif kind == "s2d" and h % 2 == 0 and w % 2 == 0:
            cur = graph.add("SpaceToDepth", [cur], None, blocksize=2)
            c, h, w = 4 * c, h // 2, w // 2
        elif kind == "transpose":
            cur = graph.add("Transpose", [cur], None, perm=[0, 1, 3, 2])
            h, w = w, h
        elif kind == "pad" and min(h, w) >= 2:
            pads = [graph.ints([0, 0, 1, 0, 0, 0, 0, 1]), graph.const(np.float32(0.3))]
            mode = choose.choice(["constant", "reflect", "edge", "wrap"])
            cur = graph.add("Pad", [cur, *pads], None, mode=mode)
            h, w = h + 1, w + 1
        elif kind == "prelu":
            cur = graph.add("PRelu", [cur, graph.const(rng.normal(size=(c, 1, 1)))], None)
        elif kind == "bn":
            stats = [graph.const(rng.normal(size=c)) for _ in range(3)]
            var = graph.const(rng.uniform(0.5, 2.0, size=c))
            cur = graph.add("BatchNormalization", [cur, *stats, var], None)
        elif kind == "gs2" and c % 2 == 0:
            pairs = graph.add("Reshape", [cur, graph.ints([0, c // 2, 2, h, w])], None)
            axis = graph.ints([2])
            high = graph.add("ReduceMax", [pairs, axis], None, keepdims=1)
            low = graph.add("ReduceMin", [pairs, axis], None, keepdims=1)
            joined = graph.add("Concat", [high, low], None, axis=2)
            cur = graph.add("Reshape", [joined, graph.ints([0, c, h, w])], None)
        elif kind == "relu":
            cur = graph.add("Relu", [cur], None)
        elif kind == "resid":
            kernel = graph.const(rng.normal(size=(c, c, 3, 3)) * 0.2)
            inner = graph.add("Conv", [cur, kernel], None, pads=[1, 1, 1, 1])
            cur = graph.add("Add", [cur, graph.add("Relu", [inner], None)], None)
    if choose.random() < 0.5:
        cur, n = graph.add("GlobalAveragePool", [cur], None), c
    else:
        cur, n = graph.add("ReduceMean", [cur, graph.ints([3])], None, keepdims=0), c * h
    cur = graph.add("Flatten", [cur], None)
    k = choose.choice([2, 3])
    head = [graph.const(rng.normal(size=(k, n))), graph.const(rng.normal(size=k))]
    graph.nodes.append(helper.make_node("Gemm", [cur, *head], ["y"], transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", k])
    onnx_graph = helper.make_graph(graph.nodes, "conv_fuzz", [x], [y], graph.constants)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 18)])


def test_random_conv_graphs_are_rewritten_exactly() -> None:
    for seed in range(20):
        loaded = load_from_proto(
            random_conv_model(seed), LoadOptions(input_shape=(2, 4, 4)), source="memory", fmt="onnx"
        )
        analysis = analyse(loaded.graph)
        points = np.random.default_rng(seed).normal(size=(8, 2, 4, 4))
        _check_against_executor(analysis, points, seed)
