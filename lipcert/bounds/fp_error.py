"""A-posteriori bounds of the rounding error, from the sizes of the tensors actually computed.

`float_error_bound` (compose.py) bounds the error of the logits for every input of a given
norm, with worst-case sizes of every tensor (||t(0)|| + L_t ||x||). Once a batch has run, the
sizes of the computed tensors are known, and each node's own rounding can be bounded with
them instead. The bound stays a guarantee, for any summation order:

- e_input = 2 u ||x||: the input was rounded once (the division by 255, or the normalisation,
  then the cast).
- for each node, e_out = factor * (sum of the e of its data inputs) + local, where the local
  rounding of a node computing y = op(x) from the COMPUTED x^ is at most
  gamma(terms) * (input_gain ||x^|| + output_gain ||y(x^)|| + offset) (the node's `Rounding`),
  and ||y(x^)|| <= ||y^|| + local, so local <= gamma (input_gain ||x^|| + output_gain ||y^||
  + offset) / (1 - gamma output_gain).
- a size that was not measured falls back to the a-priori ||t(0)|| + L_t ||x|| + e_t.

Nodes may run in different precisions (float32 onnxruntime up to a cut, float64 after it):
each node's `gamma` uses the unit roundoff of the arithmetic that computed it, except for a
node reading a constant the model computes (lipcert.bounds.folded): a float64 run of the
runtime's model (onnxruntime's float64 copy of the tail) reads the runtime's float32 copy
c' = fl32(c64) of it, off the exact constant by u32 |c|, which the float64 unit does not
cover; such a node gets its float32 allowance (gamma(n + 2, u32) + rho >= gamma(n, u64)
(1 + u32) + u32 (1 + rho) + rho, the error of a float64 run with c').
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from lipcert.bounds.compose import FLOAT32_UNIT_ROUNDOFF, Analysis
from lipcert.graph import Node

# Index outputs (TopK, MaxPool) carry no error that propagates.
_INDEX_OUTPUTS = frozenset({"TopK", "MaxPool"})


@dataclass(frozen=True)
class ErrorPlan:
    """What the a-posteriori bound of one graph needs: per node with rounding, the tensors
    whose computed norms enter it (inputs when input_gain > 0, the output when output_gain
    > 0), and every tensor's a-priori size, for the sizes that are not measured."""

    analysis: Analysis
    needed: tuple[str, ...]
    # nodes reading a constant the model computes: never below the float32 unit (above)
    reads_folded: frozenset[str] = frozenset()

    @classmethod
    def of(cls, analysis: Analysis) -> ErrorPlan:
        needed: list[str] = []
        folded = analysis.graph.inexact_constants
        reads_folded = frozenset(
            node.name
            for node, _ in analysis.node_bounds
            if folded and any(name in folded for inner in node.walk() for name in inner.inputs)
        )
        for node, layer in analysis.node_bounds:
            rounding = layer.rounding
            if not rounding.rounds:
                continue
            if rounding.input_gain > 0:
                needed.extend(analysis.graph.data_inputs(node))
            if rounding.output_gain > 0:
                needed.append(node.outputs[0])
        return cls(analysis, tuple(dict.fromkeys(needed)), reads_folded)

    def error(
        self,
        input_norm: np.ndarray,
        norms: Mapping[str, np.ndarray],
        units: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Per sample, a bound of ||logits computed - logits exact||_2.

        `input_norm` (N,) bounds ||x|| of the exact input; `norms[t]` (N,) bounds the norm of
        the computed tensor t (upper bounds, rounding of their computation included);
        `units[node name]` is the unit roundoff the node ran in (default float32).
        """
        return self.error_split(input_norm, norms, units)[0]

    def error_split(
        self,
        input_norm: np.ndarray,
        norms: Mapping[str, np.ndarray],
        units: Mapping[str, float] | None = None,
        split: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(error of the logits, error of the tensor `split`, rounding added after it).

        With g the exact map from `split` to the logits, ||logits^ - logits|| <= ||logits^ -
        g(split^)|| + ||g(split^) - g(split)||: the first term is the third value (the same
        recursion started from zero error at `split`), and the second is g's business (for a
        linear head, ||w_i - w_j|| times the second value for the margin of i over j).
        Without `split` the last two are infinite.
        """
        graph = self.analysis.graph
        units = units or {}
        x_norm = np.asarray(input_norm, dtype=np.float64)
        errors: dict[str, np.ndarray] = {
            graph.input_name: 2 * FLOAT32_UNIT_ROUNDOFF * x_norm * (1 + 1e-12)
        }
        rest: dict[str, np.ndarray] = {}
        if split == graph.input_name:
            rest[split] = np.zeros_like(x_norm)
        for node, layer in self.analysis.node_bounds:
            sources = graph.data_inputs(node)
            incoming = _sum([errors[name] for name in sources], len(x_norm))
            propagated = _up(layer.factor * incoming)
            local = self._local(node, layer, sources, incoming, propagated, x_norm, norms, units)
            total = _up(propagated + local)
            after = None
            if sources and all(name in rest for name in sources):
                after = _up(layer.factor * _sum([rest[name] for name in sources], len(x_norm)))
                after = _up(after + local)
            outputs = node.outputs[:1] if node.op in _INDEX_OUTPUTS else node.outputs
            for name in outputs:
                if name:
                    errors[name] = total
                    if name == split:
                        rest[name] = np.zeros_like(x_norm)
                    elif after is not None:
                        rest[name] = after
        infinite = np.full_like(x_norm, np.inf)
        output = graph.output_name
        return (
            errors[output],
            errors.get(split, infinite) if split is not None else infinite,
            rest.get(output, infinite),
        )

    def _local(
        self,
        node: Node,
        layer: object,
        sources: list[str],
        incoming: np.ndarray,
        propagated: np.ndarray,
        x_norm: np.ndarray,
        norms: Mapping[str, np.ndarray],
        units: Mapping[str, float],
    ) -> np.ndarray:
        rounding = layer.rounding  # type: ignore[attr-defined]
        if not rounding.rounds:
            return np.zeros_like(x_norm)
        unit = units.get(node.name, FLOAT32_UNIT_ROUNDOFF)
        if node.name in self.reads_folded:
            unit = max(unit, FLOAT32_UNIT_ROUNDOFF)  # its float32 copy c' (module docstring)
        g = rounding.gamma(unit)
        size_in = np.zeros_like(x_norm)
        if rounding.input_gain > 0:
            measured = [norms.get(name) for name in sources]
            if all(m is not None for m in measured):
                size_in = _sum([np.asarray(m) for m in measured if m is not None], len(x_norm))
            else:
                size_in = _up(
                    _sum([self._a_priori(name, x_norm) for name in sources], len(x_norm)) + incoming
                )
        out_name = node.outputs[0]
        denominator = 1.0
        size_out = np.zeros_like(x_norm)
        if rounding.output_gain > 0:
            measured_out = norms.get(out_name)
            if measured_out is not None:
                size_out = np.asarray(measured_out)
                denominator = 1.0 - g * rounding.output_gain
                if not denominator > 0:
                    return np.full_like(x_norm, np.inf)
            else:
                size_out = _up(self._a_priori(out_name, x_norm) + propagated)
        terms = _up(
            rounding.input_gain * size_in + rounding.output_gain * size_out + rounding.offset
        )
        return _up(g * terms / denominator)

    def _a_priori(self, name: str, x_norm: np.ndarray) -> np.ndarray:
        """||t(0)|| + L_t ||x||: the size of t for any input of norm ||x|| (||t(0)|| bounded
        with the rounding of its computation, lipcert.bounds.zero_input)."""
        zero = self.analysis.zero_sizes.get(name, np.inf)
        return _up(zero + self.analysis.tensor_bounds[name] * x_norm)


def _sum(parts: list[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n)
    for part in parts:
        total = total + part
    return _up(total)


def _up(values: np.ndarray) -> np.ndarray:
    """A float64 result of a few rounded operations on non-negative numbers, made an upper
    bound (each operation is off by at most one part in 2^53; 1e-12 covers hundreds)."""
    return np.asarray(values, dtype=np.float64) * (1 + 1e-12)
