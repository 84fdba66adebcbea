"""Attacking certificates: a certificate that an attack breaks is unsound.

For each certified sample, an L2 projected gradient attack (several restarts) searches the
ball of the certified radius for an input whose decision differs. The ball is not clipped to
the pixel box: a certificate covers the whole ball. A decision change found in float32 is
confirmed in float64: the competing margin must exceed the float64 rounding allowance, so a
reported violation is a real one of the exact function. Any confirmed one is reported loudly.

The attack also searches, for every correctly classified sample, the smallest perturbation
that changes its decision (doubling then bisecting the radius): an upper bound of the true
distance to the boundary. The certified radius over that distance says how much of the true
robustness the certificate captures; it can never exceed 1 when certificates are sound.

Gradients come from the graph executed in torch; its float32 logits are first checked against
onnxruntime's on the attacked samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lipcert.bounds.spec import CertificateSpec
from lipcert.errors import UnsoundCertificateError
from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor


@dataclass(frozen=True)
class AttackSettings:
    """Effort: the attack inside the certified radius is the soundness check and gets the
    most; the distance search only measures the gap and is lighter."""

    steps: int = 40
    restarts: int = 4
    distance_steps: int = 20
    distance_restarts: int = 1
    doublings: int = 8
    bisections: int = 5
    seed: int = 0


@dataclass(frozen=True)
class AttackResult:
    """Per attacked sample (arrays of length N)."""

    prediction: np.ndarray
    radius: np.ndarray  # certified radius
    violation: np.ndarray  # a decision change confirmed inside the certified ball
    violation_distance: np.ndarray  # ||x' - x|| of that change, NaN when none
    adversarial_distance: np.ndarray  # smallest decision-changing perturbation found, inf if none


class Attacker:
    """L2 PGD against the decision of a graph, in float32, confirmed in float64.

    `mean`/`std` (per channel) make the attacked function x -> f((x - mean) / std), so that
    attacks run in the space the certificates are stated in.
    """

    def __init__(
        self,
        graph: Graph,
        spec64: CertificateSpec,
        settings: AttackSettings,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        self.graph_fast = GraphExecutor(graph, torch.float32)
        self.graph_precise = GraphExecutor(graph, torch.float64)
        self.spec64 = spec64
        self.settings = settings
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float64)

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).reshape(shape)) / self.std.to(x.dtype).reshape(shape)

    def fast(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_fast(self._preprocess(x))

    def precise(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_precise(self._preprocess(x))

    def attack(
        self,
        inputs: np.ndarray,
        prediction: np.ndarray,
        radius: np.ndarray,
        search_distance: bool = True,
        on_progress: Callable[[str], None] | None = None,
    ) -> AttackResult:
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        target = torch.as_tensor(prediction, dtype=torch.long)
        radius_t = torch.as_tensor(radius, dtype=torch.float32)
        n = len(x)
        violation = np.zeros(n, dtype=bool)
        violation_distance = np.full(n, np.nan)
        certified = radius > 0
        if on_progress is not None:
            on_progress("attacking inside the certified radii")
        if certified.any():
            index = np.flatnonzero(certified)
            # Shrink the ball by a hair: a perturbation of norm exactly r is not inside it.
            found, points = self._pgd(
                x[index],
                target[index],
                radius_t[index] * (1 - 1e-6),
                self.settings.steps,
                self.settings.restarts,
            )
            for k, i in enumerate(index):
                if not found[k]:
                    continue
                point = self._inside_ball(inputs[i], points[k] - x[i], float(radius[i]))
                if self._confirmed(point, int(prediction[i])):
                    violation[i] = True
                    violation_distance[i] = float(
                        np.linalg.norm(
                            (
                                point - torch.as_tensor(np.asarray(inputs[i], dtype=np.float64))
                            ).numpy()
                        )
                    )
        distance = np.full(n, np.inf)
        if search_distance:
            if on_progress is not None:
                on_progress("searching the smallest adversarial distances")
            distance = self._smallest_distance(x, target, radius)
        return AttackResult(
            np.asarray(prediction), np.asarray(radius), violation, violation_distance, distance
        )

    # --- PGD -----------------------------------------------------------------------------

    def _margin(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Best competitor minus the predicted class (> 0: the decision changed)."""
        if logits.shape[1] == 1:
            score = logits[:, 0]
            return torch.where(target == 1, -score, score)
        chosen = logits.gather(1, target[:, None])[:, 0]
        others = logits.scatter(1, target[:, None], float("-inf"))
        return others.max(dim=1).values - chosen

    def _pgd(
        self, x: torch.Tensor, target: torch.Tensor, eps: torch.Tensor, steps: int, restarts: int
    ) -> tuple[np.ndarray, torch.Tensor]:
        """For each sample, whether a decision change was found within eps, and the point."""
        n = len(x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        best_margin = torch.full((n,), float("-inf"))
        best_point = x.clone()
        step = 2.5 * eps / steps
        for restart in range(restarts):
            if restart == 0:
                delta = torch.zeros_like(x)
            else:
                delta = torch.randn(x.shape, generator=self.generator)
                delta = _project(delta, eps * torch.rand(n, generator=self.generator))
            for _ in range(steps):
                delta.requires_grad_(True)
                margin = self._margin(self.fast(x + delta), target)
                (gradient,) = torch.autograd.grad(margin.sum(), delta)
                with torch.no_grad():
                    better = margin > best_margin
                    best_margin = torch.where(better, margin.detach(), best_margin)
                    best_point[better] = (x + delta)[better].detach()
                    direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(
                        shape
                    )
                    delta = _project(delta.detach() + step.reshape(shape) * direction, eps)
            with torch.no_grad():
                margin = self._margin(self.fast(x + delta), target)
                better = margin > best_margin
                best_margin = torch.where(better, margin, best_margin)
                best_point[better] = (x + delta)[better]
        return (best_margin > 0).numpy(), best_point

    @staticmethod
    def _inside_ball(center: np.ndarray, delta: torch.Tensor, radius: float) -> torch.Tensor:
        """The float32 attack's step from x, applied to x in float64, within the ball.

        The attack ran on x rounded to float32; its step is moved to the exact x and, if the
        rounding pushed it past the radius, scaled back inside.
        """
        step = delta.double()
        norm = float(step.norm())
        if norm >= radius:
            step = step * (radius * (1 - 1e-9) / norm)
        return torch.as_tensor(np.asarray(center, dtype=np.float64)) + step

    def _confirmed(self, point: torch.Tensor, prediction: int) -> bool:
        """The decision change holds for the exact function: checked in float64."""
        with torch.no_grad():
            logits = self.precise(point[None].double())
        margin = float(self._margin(logits, torch.tensor([prediction]))[0])
        norm = float(self._preprocess(point[None].double()).norm())
        allowance = float(self.spec64.fp_allowance(np.array([norm]))[0])
        competitors = 1 if logits.shape[1] == 1 else 2
        return margin > allowance * np.sqrt(competitors)

    def _smallest_distance(
        self, x: torch.Tensor, target: torch.Tensor, radius: np.ndarray
    ) -> np.ndarray:
        """From the certified radius, doubling then bisection of the PGD radius, per sample: an
        upper bound of the distance to the boundary (found in float32, so it may fall a few
        float32 ulps below an exact certificate's radius)."""
        n = len(x)
        settings = self.settings
        scale = float(x.flatten(1).norm(dim=1).mean()) or 1.0
        # The search starts at the certified radius, not above it: a certificate that is too
        # large must show up here as a distance below the radius.
        certified = np.maximum(np.asarray(radius, dtype=np.float64), 0.0)
        low = np.zeros(n)
        high = np.full(n, np.inf)
        eps = np.where(certified > 0, certified, 0.01 * scale)

        def pgd(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
            found, _ = self._pgd(
                x[mask],
                target[mask],
                torch.as_tensor(radii[mask], dtype=torch.float32),
                settings.distance_steps,
                settings.distance_restarts,
            )
            return found

        for _ in range(settings.doublings):
            pending = np.isinf(high)
            if not pending.any():
                break
            found = pgd(pending, eps)
            index = np.flatnonzero(pending)
            high[index[found]] = eps[index[found]]
            low[index[~found]] = eps[index[~found]]
            eps[index[~found]] *= 2
        for _ in range(settings.bisections):
            active = np.isfinite(high)
            if not active.any():
                break
            middle = (low + high) / 2
            found = pgd(active, middle)
            index = np.flatnonzero(active)
            high[index[found]] = middle[index[found]]
            low[index[~found]] = middle[index[~found]]
        return high


def _project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Onto the L2 balls of radius eps (per sample)."""
    norms = delta.flatten(1).norm(dim=1)
    factor = torch.clamp(eps / norms.clamp_min(1e-30), max=1.0)
    return delta * factor.reshape(-1, *([1] * (delta.dim() - 1)))


def check_executor_against_runtime(
    graph: Graph, runtime_logits: np.ndarray, inputs: np.ndarray, spec32: CertificateSpec
) -> None:
    """The torch execution of the graph must give onnxruntime's logits up to rounding."""
    with torch.no_grad():
        ours = GraphExecutor(graph, torch.float32)(
            torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        )
    ours_np = ours.double().numpy().reshape(len(inputs), -1)
    norms = np.linalg.norm(np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1), axis=1)
    limit = 2 * spec32.fp_allowance(norms)
    gap = np.linalg.norm(ours_np - runtime_logits.astype(np.float64), axis=1)
    finite = np.isfinite(gap)
    if np.any(finite & (gap > limit)):
        worst = int(np.argmax(np.where(finite, gap - limit, -np.inf)))
        raise UnsoundCertificateError(
            f"the graph executed in torch and onnxruntime differ by {gap[worst]:.3g} on sample "
            f"{worst} (rounding allows {limit[worst]:.3g}): attacks on it would not attack the "
            "model"
        )
