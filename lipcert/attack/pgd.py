"""Attacking certificates: a certificate that an attack breaks is unsound.

For each certified sample, an L2 projected gradient attack (several restarts) searches the
ball of the certified radius for an input whose decision differs. The ball is not clipped to
the pixel box: a certificate covers the whole ball. Gradients come from the graph executed in
torch in float32 on the chosen device (the CPU, or a CUDA GPU with TF32 off), batched over
samples and restarts; a sample stops being attacked as soon as one restart changes its
decision. The random starts are drawn on the CPU, so a seed gives the same starts on every
device. A decision change found in float32 is then confirmed by the exact evaluator (the
graph in float64 on the CPU): the competing margin must exceed its rounding allowance, so a
reported violation is a real one of the exact function. Any confirmed one is reported loudly.

The attack also searches, for every sample, the smallest perturbation that changes its
decision (doubling then bisecting the radius, from the certified radius): an upper bound of
the true distance to the boundary. The certified radius over that distance says how much of
the true robustness the certificate captures; it can never exceed 1 when certificates are
sound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lipcert.bounds.spec import CertificateSpec
from lipcert.evaluators.exact import Float64Evaluator
from lipcert.evaluators.torch_device import no_tf32, placed, placed_executor, resolve_device
from lipcert.graph import Graph


@dataclass(frozen=True)
class AttackSettings:
    """Effort: the attack inside the certified radius is the soundness check and gets the
    most; the distance search only measures the gap and is lighter. `chunk` samples are
    attacked together (times the restarts): the progress advances by chunks."""

    steps: int = 20
    restarts: int = 3
    distance_steps: int = 10
    distance_restarts: int = 1
    doublings: int = 8
    bisections: int = 5
    seed: int = 0
    chunk: int = 50
    # torch threads while attacking. One by default: on a machine shared with other work,
    # two threads waiting on each other made the attack 13 times slower than one.
    threads: int = 1


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
    attacks run in the space the certificates are stated in. `device` (cpu, cuda or cuda:N,
    or a torch.device; default cpu) is where the float32 gradients are computed; a usage
    error when CUDA is asked for and missing.
    """

    def __init__(
        self,
        graph: Graph,
        spec64: CertificateSpec,
        settings: AttackSettings,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        device: Any = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.graph_fast = placed_executor(graph, torch.float32, self.device)
        self.exact = Float64Evaluator(graph, spec64)
        self.settings = settings
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return (x - mean) / std

    def fast(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 logits of `x` (on the attack's device), with gradients, one row per
        sample (a head may end in (N, K, 1, 1))."""
        with placed(self.device):
            return self.graph_fast(self._preprocess(x)).reshape(len(x), -1)

    def attack(
        self,
        inputs: np.ndarray,
        prediction: np.ndarray,
        radius: np.ndarray,
        search_distance: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> AttackResult:
        """Attack every sample; `on_progress(n)` is called as each chunk of n samples ends."""
        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, self.settings.threads))
        try:
            with no_tf32(self.device):
                return self._attack(inputs, prediction, radius, search_distance, on_progress)
        finally:
            torch.set_num_threads(previous)

    def _tensor(self, values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """`values` as a tensor on the attack's device."""
        return torch.as_tensor(values, dtype=dtype).to(self.device)

    def _attack(
        self,
        inputs: np.ndarray,
        prediction: np.ndarray,
        radius: np.ndarray,
        search_distance: bool,
        on_progress: Callable[[int], None] | None,
    ) -> AttackResult:
        inputs = np.asarray(inputs, dtype=np.float64)
        prediction = np.asarray(prediction)
        radius = np.asarray(radius, dtype=np.float64)
        n = len(inputs)
        violation = np.zeros(n, dtype=bool)
        violation_distance = np.full(n, np.nan)
        distance = np.full(n, np.inf)
        chunk = max(1, self.settings.chunk)
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            found, at = self._inside(inputs[part], prediction[part], radius[part])
            violation[part] = found
            violation_distance[part] = at
            if search_distance:
                distance[part] = self._smallest_distance(
                    inputs[part], prediction[part], radius[part]
                )
            if on_progress is not None:
                on_progress(part.stop - part.start)
        return AttackResult(prediction, radius, violation, violation_distance, distance)

    # --- inside the certified balls ------------------------------------------------------

    def _inside(
        self, inputs: np.ndarray, prediction: np.ndarray, radius: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Confirmed violations inside the certified balls, and their distances."""
        n = len(inputs)
        violation = np.zeros(n, dtype=bool)
        distance = np.full(n, np.nan)
        index = np.flatnonzero(radius > 0)
        if not len(index):
            return violation, distance
        x = self._tensor(inputs[index], torch.float32)
        target = self._tensor(prediction[index], torch.long)
        # Shrink the ball by a hair: a perturbation of norm exactly r is not inside it.
        eps = self._tensor(radius[index] * (1 - 1e-6), torch.float32)
        found, points = self._pgd(x, target, eps, self.settings.steps, self.settings.restarts)
        candidates = index[found]
        if not len(candidates):
            return violation, distance
        chosen = self._tensor(np.flatnonzero(found), torch.long)
        steps = (points[chosen].double() - x[chosen].double()).cpu().numpy()
        exact_points = np.stack(
            [
                _inside_ball(inputs[i], step, float(radius[i]))
                for i, step in zip(candidates, steps, strict=True)
            ]
        )
        confirmed = self._confirmed(exact_points, prediction[candidates])
        violation[candidates[confirmed]] = True
        flat = (exact_points - inputs[candidates]).reshape(len(candidates), -1)
        distance[candidates[confirmed]] = np.linalg.norm(flat, axis=1)[confirmed]
        return violation, distance

    def _confirmed(self, points: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Whether the decision change holds for the exact function (float64 evaluator)."""
        model_inputs = torch.as_tensor(points, dtype=torch.float64, device="cpu")
        evaluation = self.exact.evaluate(self._preprocess(model_inputs).numpy())
        logits = torch.as_tensor(evaluation.logits)
        margin = _margin(logits, torch.as_tensor(prediction, dtype=torch.long)).numpy()
        competitors = 1 if logits.shape[1] == 1 else 2
        return margin > evaluation.allowance * np.sqrt(competitors) * (1 + 1e-12)

    # --- PGD -----------------------------------------------------------------------------

    def _pgd(
        self, x: torch.Tensor, target: torch.Tensor, eps: torch.Tensor, steps: int, restarts: int
    ) -> tuple[np.ndarray, torch.Tensor]:
        """For each sample, whether a decision change was found within eps, and the point.

        All restarts run as one batch (restart 0 starts at x, the others at random points of
        the ball); a sample leaves the batch once one of its restarts changed the decision.
        """
        n = len(x)
        rows = n * restarts
        shape = (-1,) + (1,) * (x.dim() - 1)
        device = x.device
        sample = torch.arange(n, device=device).repeat(restarts)
        xr, tr, er = x[sample], target[sample], eps[sample]
        # Drawn on the CPU (the generator's device): the same starts on every device.
        noise = torch.randn(xr.shape, generator=self.generator, device="cpu").to(device)
        scale = torch.rand(rows, generator=self.generator, device="cpu").to(device)
        delta = _project(noise, er * scale)
        delta[:n] = 0.0
        step = (2.5 * er / steps).reshape(shape)
        best_margin = torch.full((rows,), float("-inf"), device=device)
        best_point = xr.clone()
        active = torch.ones(rows, dtype=torch.bool, device=device)
        for iteration in range(steps + 1):
            live = torch.nonzero(active).flatten()
            if not len(live):
                break
            d = delta[live].requires_grad_(iteration < steps)
            with torch.set_grad_enabled(iteration < steps):
                margin = _margin(self.fast(xr[live] + d), tr[live])
            with torch.no_grad():
                better = margin.detach() > best_margin[live]
                improved = live[better]
                best_margin[improved] = margin.detach()[better]
                best_point[improved] = (xr[live] + d.detach())[better]
            if iteration == steps:
                break
            (gradient,) = torch.autograd.grad(margin.sum(), d)
            with torch.no_grad():
                norms = gradient.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(shape)
                moved = d.detach() + step[live] * gradient / norms
                delta[live] = _project(moved, er[live])
                done = (best_margin.reshape(restarts, n) > 0).any(dim=0)
                active &= ~done[sample]
        per_restart = best_margin.reshape(restarts, n)
        best = per_restart.argmax(dim=0)
        chosen = best * n + torch.arange(n, device=device)
        return (per_restart.max(dim=0).values > 0).cpu().numpy(), best_point[chosen]

    # --- the smallest adversarial distance -----------------------------------------------

    def _smallest_distance(
        self, inputs: np.ndarray, prediction: np.ndarray, radius: np.ndarray
    ) -> np.ndarray:
        """From the certified radius, doubling then bisection of the PGD radius, per sample: an
        upper bound of the distance to the boundary (found in float32, so it may fall a few
        float32 ulps below an exact certificate's radius)."""
        n = len(inputs)
        settings = self.settings
        x = self._tensor(inputs, torch.float32)
        target = self._tensor(prediction, torch.long)
        scale = float(np.mean(np.linalg.norm(inputs.reshape(n, -1), axis=1))) or 1.0
        # The search starts at the certified radius, not above it: a certificate that is too
        # large must show up here as a distance below the radius.
        certified = np.maximum(radius, 0.0)
        low = np.zeros(n)
        high = np.full(n, np.inf)
        eps = np.where(certified > 0, certified, 0.01 * scale)

        def pgd(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
            rows = self._tensor(np.flatnonzero(mask), torch.long)
            found, _ = self._pgd(
                x[rows],
                target[rows],
                self._tensor(radii[mask], torch.float32),
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


def _margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Best competitor minus the predicted class (> 0: the decision changed)."""
    if logits.shape[1] == 1:
        score = logits[:, 0]
        return torch.where(target == 1, -score, score)
    chosen = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return others.max(dim=1).values - chosen


def _project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Onto the L2 balls of radius eps (per sample)."""
    norms = delta.flatten(1).norm(dim=1)
    factor = torch.clamp(eps / norms.clamp_min(1e-30), max=1.0)
    return delta * factor.reshape(-1, *([1] * (delta.dim() - 1)))


def _inside_ball(center: np.ndarray, step: np.ndarray, radius: float) -> np.ndarray:
    """The float32 attack's step from x, applied to x in float64, within the ball.

    The attack ran on x rounded to float32; its step is moved to the exact x and, if the
    rounding pushed it past the radius, scaled back inside.
    """
    norm = float(np.linalg.norm(step))
    if norm >= radius:
        step = step * (radius * (1 - 1e-9) / norm)
    return center + step
