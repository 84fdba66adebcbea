"""Ground truth for the soundness tests: exported models, exact decisions, true distances.

Every model is a torch module exported to ONNX and loaded by lipcert like a user's file. The
reference function is the same module in float64: the ONNX file stores float32 weights,
which float64 represents exactly, so the float64 module computes the exported function up to
rounding of order 1e-15, far below the margins the tests rely on (TAU).

A decision change is counted only where the competing margin exceeds TAU in float64, so
every point called "other class" really is one: the distance to it bounds the true distance
to the decision boundary from above, and a certified radius must never exceed it.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.radii import Certificates, certify_logits, choose_method
from lipcert.frontends.onnx_file import load_from_proto
from lipcert.model import LoadedModel, LoadOptions
from lipcert.runtime import Float64Evaluator, OnnxRuntimeEvaluator

# A competing margin above this (float64) is a decision change beyond any rounding doubt.
TAU = 1e-10
# Relative slack on comparisons of two float64 distances computed differently.
REL = 1e-9


# --- models -----------------------------------------------------------------------------------


def export(module: nn.Module, input_shape: tuple[int, ...], opset: int = 18) -> onnx.ModelProto:
    """The module as a user would export it: TorchScript exporter, dynamic batch."""
    module.eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.zeros(1, *input_shape),),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def load(module: nn.Module, input_shape: tuple[int, ...], opset: int = 18) -> LoadedModel:
    proto = export(module, input_shape, opset)
    return load_from_proto(proto, LoadOptions(input_shape=input_shape), source="memory", fmt="onnx")


def freeze(module: nn.Module) -> nn.Module:
    """The module with every parametrization (spectral, Frobenius, Björck normalisation)
    replaced by the weight it computes now, in eval mode: the exported function, whose
    float64 copy then computes the same thing."""
    from torch.nn.utils import parametrize

    module.eval()
    for child in list(module.modules()):
        if parametrize.is_parametrized(child):
            for name in list(child.parametrizations.keys()):
                parametrize.remove_parametrizations(child, name, leave_parametrized=True)
    return module


def reference(module: nn.Module) -> nn.Module:
    """A float64 copy of a frozen module."""
    return copy.deepcopy(module).double().eval()


@dataclass
class Certified:
    """Radii of a batch by one lipcert path (float32 onnxruntime or float64 graph)."""

    name: str
    certificates: Certificates
    spec: CertificateSpec


def certify_both(
    loaded: LoadedModel, analysis: Analysis, points: np.ndarray, method: str = "auto"
) -> list[Certified]:
    """The float32 path (onnxruntime + allowance) and the float64 path (--margins float64)."""
    runtime = OnnxRuntimeEvaluator(loaded, threads=1)
    spec32 = analysis.spec
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    float64 = Float64Evaluator(
        loaded.graph, spec64, reference=OnnxRuntimeEvaluator(loaded, spec=spec32)
    )
    norms = np.linalg.norm(points.reshape(len(points), -1), axis=1)
    results = []
    for name, evaluator, spec in (("float32", runtime, spec32), ("float64", float64, spec64)):
        logits = evaluator.logits(points)
        chosen = choose_method(spec, method)
        certificates = certify_logits(logits, spec, chosen, spec.fp_allowance(norms))
        results.append(Certified(name, certificates, spec))
    return results


# --- the exact decision ------------------------------------------------------------------------


class Decision:
    """The decision of a float64 reference; one logit f is read as the pair (0, f)."""

    def __init__(
        self, logits: Callable[[torch.Tensor], torch.Tensor], chunk: int = 1 << 18
    ) -> None:
        self.function = logits
        self.chunk = chunk

    def logits(self, x: np.ndarray) -> np.ndarray:
        parts = []
        with torch.no_grad():
            for start in range(0, len(x), self.chunk):
                batch = torch.as_tensor(np.asarray(x[start : start + self.chunk], dtype=np.float64))
                out = self.function(batch).reshape(len(batch), -1)
                if out.shape[1] == 1:
                    out = torch.cat([torch.zeros_like(out), out], dim=1)
                parts.append(out.numpy())
        return np.concatenate(parts)

    def competing(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """max over j != c of f_j - f_c: > 0 where the decision is no longer c."""
        return competing_margin(self.logits(x), classes)


def competing_margin(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    rows = np.arange(len(logits))
    chosen = logits[rows, classes]
    others = logits.copy()
    others[rows, classes] = -np.inf
    return others.max(axis=1) - chosen


def bisect(
    decision: Decision, start: np.ndarray, end: np.ndarray, classes: np.ndarray, steps: int = 44
) -> tuple[np.ndarray, np.ndarray]:
    """Along each segment start -> end (class c at start, another class beyond TAU at end),
    the last point still c and the first point beyond TAU, `steps` halvings apart."""
    low, high = start.copy(), end.copy()
    for _ in range(steps):
        middle = (low + high) / 2
        other = decision.competing(middle, classes) > TAU
        high = np.where(other[:, None], middle, high)
        low = np.where(other[:, None], low, middle)
    return low, high


@dataclass
class Truth:
    """For each point: an upper bound of its distance to another class, and where."""

    distance: np.ndarray  # inf when no other class was found in the box
    crossing: np.ndarray  # the other-class point at that distance (NaN when none)
    before: np.ndarray  # the point on the same segment still of the point's class


def grid_truth(
    decision: Decision,
    points: np.ndarray,
    classes: np.ndarray,
    half_width: float,
    size: int = 400,
    nearest: int = 8,
    rounds: int = 8,
) -> Truth:
    """True distances to the decision boundary, from above, for 2-D inputs.

    A size x size grid over [-half_width, half_width]^2 gives, for each point, the grid
    points of another class nearest to it (among those next to a grid point of its class);
    bisecting the segments to the `nearest` of them gives crossings of the boundary. A fan
    of rays around the best direction, narrowed `rounds` times, then refines the distance
    far below the grid step. Every distance returned is that of a point whose class
    differs beyond TAU, so it is never below the true distance.
    """
    axis = np.linspace(-half_width, half_width, size)
    gx, gy = np.meshgrid(axis, axis, indexing="ij")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    logits = decision.logits(grid)
    owners, ends = [], []
    for c in np.unique(classes):
        other = competing_margin(logits, np.full(len(grid), c)).reshape(size, size) > TAU
        same = ~other
        frontier = np.zeros_like(other)
        frontier[1:, :] |= same[:-1, :]
        frontier[:-1, :] |= same[1:, :]
        frontier[:, 1:] |= same[:, :-1]
        frontier[:, :-1] |= same[:, 1:]
        targets = grid[(other & frontier).ravel()]
        if len(targets) == 0:
            continue
        k = min(nearest, len(targets))
        for i in np.flatnonzero(classes == c):
            d2 = np.sum((targets - points[i]) ** 2, axis=1)
            owners.append(np.full(k, i))
            ends.append(targets[np.argpartition(d2, k - 1)[:k]])
    truth = Truth(
        np.full(len(points), np.inf), np.full(points.shape, np.nan), np.full(points.shape, np.nan)
    )
    if not owners:
        return truth
    owner = np.concatenate(owners)
    _keep_best(truth, decision, points, classes, owner, np.concatenate(ends))
    width = 4.0 * (axis[1] - axis[0])
    for _ in range(rounds):
        found = np.flatnonzero(np.isfinite(truth.distance))
        direction = truth.crossing[found] - points[found]
        angle = np.arctan2(direction[:, 1], direction[:, 0])
        spread = np.minimum(width / np.maximum(truth.distance[found], 1e-12), np.pi / 2)
        fan = np.linspace(-1.0, 1.0, 9)
        angles = (angle[:, None] + spread[:, None] * fan[None, :]).ravel()
        owner = np.repeat(found, len(fan))
        reach = 1.5 * np.repeat(truth.distance[found], len(fan))
        end = points[owner] + reach[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        crossing = decision.competing(end, classes[owner]) > TAU
        _keep_best(truth, decision, points, classes, owner[crossing], end[crossing])
        width /= 4.0
    return truth


def _keep_best(
    truth: Truth,
    decision: Decision,
    points: np.ndarray,
    classes: np.ndarray,
    owner: np.ndarray,
    end: np.ndarray,
) -> None:
    """Bisect every segment points[owner] -> end; keep each point's shortest crossing."""
    if len(owner) == 0:
        return
    start = points[owner]
    low, high = bisect(decision, start, end, classes[owner])
    lengths = np.linalg.norm(high - start, axis=1)
    order = np.lexsort((lengths, owner))
    first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
    for j in first:
        i = owner[j]
        if lengths[j] < truth.distance[i]:
            truth.distance[i] = lengths[j]
            truth.crossing[i] = high[j]
            truth.before[i] = low[j]


def near_boundary_points(
    truth: Truth, points: np.ndarray, offsets: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Points at the given distances before a boundary crossing, on the segment towards it,
    and for each the other-class point that bounds its true distance."""
    found = np.flatnonzero(np.isfinite(truth.distance))
    new_points, witnesses = [], []
    for i in found:
        direction = truth.crossing[i] - points[i]
        length = np.linalg.norm(direction)
        if length == 0:
            continue
        unit = direction / length
        for offset in offsets:
            new_points.append(truth.before[i] - offset * unit)
            witnesses.append(truth.crossing[i])
    return np.array(new_points).reshape(-1, 2), np.array(witnesses).reshape(-1, 2)


# --- Lipschitz lower bounds ---------------------------------------------------------------------


def jacobians(function: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> np.ndarray:
    """Jacobians (N, K, d) of the logits at each point, by autograd in float64."""
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float64)).requires_grad_(True)
    out = function(inputs).reshape(len(x), -1)
    rows = []
    for k in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, k].sum(), inputs, retain_graph=True)
        rows.append(grad.reshape(len(x), -1).numpy())
    return np.stack(rows, axis=1)


def local_lipschitz(
    function: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    iterations: int = 30,
    seed: int = 0,
) -> np.ndarray:
    """||J(x)||_2 per sample by power iteration with autograd (a lower bound of L)."""
    inputs = torch.as_tensor(np.asarray(x, dtype=np.float64))
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(inputs.shape, generator=generator, dtype=torch.float64)
    v = v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    sigma = torch.zeros(len(inputs), dtype=torch.float64)
    for _ in range(iterations):
        _, jv = torch.func.jvp(function, (inputs,), (v,))
        _, pullback = torch.func.vjp(function, inputs)
        (jtjv,) = pullback(jv)
        sigma = jv.flatten(1).norm(dim=1)
        norms = jtjv.flatten(1).norm(dim=1).clamp_min(1e-300)
        v = jtjv / norms.reshape(-1, *([1] * (v.dim() - 1)))
    return sigma.detach().numpy()
