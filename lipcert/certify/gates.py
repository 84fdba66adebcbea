"""CI gates: fail when a measured value falls below its threshold."""

from __future__ import annotations

from dataclasses import dataclass

from lipcert.certify.metrics import Eps, Summary


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def message(self) -> str:
        relation = ">=" if self.passed else "<"
        return f"{self.name} is {self.value:.6g} {relation} {self.threshold:.6g} required"


def evaluate_gates(
    summary: Summary,
    *,
    gate_eps: Eps | None,
    min_certified_accuracy: float | None,
    min_accuracy: float | None,
    min_mcr: float | None,
) -> list[Gate]:
    gates = []
    if min_certified_accuracy is not None:
        if gate_eps is None:
            raise ValueError("a certified-accuracy gate needs an eps")
        value = next(v for e, v in summary.certified_accuracy if e.value == gate_eps.value)
        gates.append(
            Gate(f"certified accuracy at eps={gate_eps.label}", value, min_certified_accuracy)
        )
    if min_accuracy is not None:
        gates.append(Gate("clean accuracy", summary.accuracy, min_accuracy))
    if min_mcr is not None:
        gates.append(Gate("mean certifiable robustness (MCR)", summary.mcr, min_mcr))
    return gates
