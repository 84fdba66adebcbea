"""Helpers for the local-certificate tests: exact evaluation of a rewritten network, PGD."""

from __future__ import annotations

import numpy as np
import torch

from lipcert.local.network import AffineStep, Network


def run_network(network: Network, x: np.ndarray) -> np.ndarray:
    """The rewritten network's output at a batch of inputs, in float64 (affine steps and
    ReLUs only): it must equal the model."""
    values = {network.input_name: torch.as_tensor(np.asarray(x, dtype=np.float64))}
    with torch.no_grad():
        for step in network.steps:
            if isinstance(step, AffineStep):
                out = step.linear(*(values[n] for n in step.inputs)) + step.constant
            else:
                out = torch.relu(values[step.input])
            values[step.output] = out
    return values[network.output_name].reshape(len(x), -1).numpy()


def pgd_worst_margin(
    function: torch.nn.Module | object,
    x0: np.ndarray,
    prediction: int,
    eps: float,
    *,
    steps: int = 60,
    restarts: int = 4,
    seed: int = 0,
) -> float:
    """The smallest f_p - max_{j != p} f_j found by PGD (float64) in the L2 ball of radius
    eps around x0: negative means a decision change inside the ball."""
    generator = torch.Generator().manual_seed(seed)
    center = torch.as_tensor(np.asarray(x0, dtype=np.float64))[None]
    best = np.inf
    for restart in range(restarts):
        noise = torch.randn(center.shape, generator=generator, dtype=torch.float64)
        delta = noise / noise.norm() * eps * (0.5 if restart else 0.0)
        for step in range(steps):
            delta = delta.detach().requires_grad_(True)
            logits = function(center + delta).reshape(1, -1)  # type: ignore[operator]
            if logits.shape[1] == 1:
                logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
            others = logits.clone()
            others[0, prediction] = -torch.inf
            margin = logits[0, prediction] - others.max()
            best = min(best, float(margin.detach()))
            (grad,) = torch.autograd.grad(margin, delta)
            size = 2.5 * eps / steps * (1.0 if step < steps // 2 else 0.3)
            delta = delta - size * grad / grad.norm().clamp(min=1e-30)
            norm = delta.norm()
            if norm > eps:
                delta = delta * (eps / norm)
        with torch.no_grad():
            logits = function(center + delta).reshape(1, -1)  # type: ignore[operator]
            if logits.shape[1] == 1:
                logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
            others = logits.clone()
            others[0, prediction] = -torch.inf
            best = min(best, float(logits[0, prediction] - others.max()))
    return best
