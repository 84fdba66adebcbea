"""An empirical lower bound of the Lipschitz constant: how tight is the guaranteed bound?

At a point x where the model is differentiable, the largest singular value of its Jacobian
J(x) is a local Lipschitz constant, hence at most the global one. We estimate it by power
iteration on J(x)^T J(x) (forward-mode Jacobian-vector products and backward
vector-Jacobian products) at a batch of points, and move the points by gradient ascent on
||J(x) v||, taken as the secant ||f(x + h v) - f(x - h v)|| / (2h) whose gradient exists
even where a piecewise-linear network's Jacobian is locally constant, plus some noise. The
search runs in float32; the value reported is the Jacobian norm re-measured in float64 at
the best points. It says how tight the guaranteed bound is and never certifies anything.
"""

from __future__ import annotations

import torch

from lipcert.graph import Graph
from lipcert.graph.execute import GraphExecutor


def empirical_lower_bound(
    graph: Graph,
    *,
    restarts: int = 16,
    steps: int = 8,
    power_iterations: int = 8,
    seed: int = 0,
) -> float:
    """The largest Jacobian spectral norm found, a lower bound of the L2 Lipschitz constant."""
    fast = GraphExecutor(graph, torch.float32)
    generator = torch.Generator().manual_seed(seed)
    shape = (restarts, *graph.input_shape)
    x = torch.rand(shape, generator=generator)
    v = torch.randn(shape, generator=generator)
    best_sigma = torch.full((restarts,), -1.0)
    best_x, best_v = x.clone(), v.clone()
    for step in range(steps):
        v = _top_singular_direction(fast, x, v, power_iterations)
        sigma = _jvp(fast, x, v).flatten(1).norm(dim=1)
        improved = sigma > best_sigma
        best_sigma = torch.where(improved, sigma, best_sigma)
        best_x[improved], best_v[improved] = x[improved], v[improved]
        x = _ascent_step(fast, x, v, generator, scale=0.1 * (1.0 - step / steps))
    precise = GraphExecutor(graph, torch.float64)
    x64, v64 = best_x.double(), best_v.double()
    v64 = _top_singular_direction(precise, x64, v64, 3)
    return float(_jvp(precise, x64, v64).flatten(1).norm(dim=1).max())


def _top_singular_direction(
    model: GraphExecutor, x: torch.Tensor, v: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Per sample, power iteration towards the top right singular vector of J(x)."""
    for _ in range(iterations):
        v = _vjp(model, x, _jvp(model, x, _unit(v)))
        dead = v.flatten(1).norm(dim=1) == 0
        if bool(dead.any()):
            v[dead] = torch.randn_like(v[dead])
    return _unit(v)


def _jvp(model: GraphExecutor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """J(x) v per sample (forward mode)."""
    outputs = torch.func.jvp(model, (x,), (v,))
    return outputs[1].detach()


def _vjp(model: GraphExecutor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """J(x)^T u per sample."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x), x, grad_outputs=u)
    return g.detach()


def _ascent_step(
    model: GraphExecutor, x: torch.Tensor, v: torch.Tensor, generator: torch.Generator, scale: float
) -> torch.Tensor:
    h = 1e-2
    x = x.detach().requires_grad_(True)
    secant = (model(x + h * v) - model(x - h * v)).flatten(1).norm(dim=1) / (2 * h)
    (gradient,) = torch.autograd.grad(secant.sum(), x)
    noise = torch.randn(x.shape, generator=generator)
    direction = _unit(_unit(gradient) + 0.5 * _unit(noise))
    return (x + scale * direction * float(x[0].numel()) ** 0.5).detach()


def _unit(t: torch.Tensor) -> torch.Tensor:
    norms = t.flatten(1).norm(dim=1).clamp_min(1e-30)
    return t / norms.reshape(-1, *([1] * (t.dim() - 1)))
