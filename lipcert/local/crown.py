"""Linear bound propagation (CROWN) over an L2 ball, computed in float64 and rounded outward.

For a network of affine steps and ReLUs (`lipcert.local.network`), an input x0 and a radius
eps, every tensor gets elementwise bounds that hold for every input x with ||x - x0||_2 <= eps,
and any linear function of the logits gets a guaranteed lower bound over that ball.

How the bounds are found, each one sound on its own (the tightest is kept):
- interval arithmetic forward from the box that contains the ball;
- the Lipschitz bound of lipcert's analysis: no element of a tensor t moves by more than
  L_t eps (for a GroupSort pair difference, sqrt(2) L_t eps);
- tensors that are affine in the input (the first layer) have exact ranges, from the row norms
  of their Jacobian, computed once per model;
- for the ReLU inputs still unstable, a backward pass (CROWN): a row vector at the tensor is
  carried back to the input through each affine step's transpose and each ReLU's linear
  relaxation, and the L2 dual norm gives the minimum over the ball:
  min a.x + b over ||x - x0|| <= eps is a.x0 - eps ||a||_2 + b.

Rounding: every backward step that computes a row Lambda_in = Lambda_out A in float64 makes an
error E with |E| <= gamma |Lambda_out| |A| (any summation order). The inequality carried back,
m(x) >= Lambda z + b, stays true for the computed Lambda when b is lowered by
gamma |Lambda_out| |A| max|z|, with max|z| from the bounds already proven; relaxation lines are
checked at both ends of their interval after rounding. Sums and the dual norm round the safe
way. gamma covers a dot product of any length up to twice the largest tensor, far more than
any step computes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lipcert.local.network import AffineStep, Network, ReluStep

Tensor = torch.Tensor
_U = 2.0**-53
# The ball-and-box concretisation (a bisection per row) only for this many rows at once: the
# margins, not the thousands of intermediate rows, where its cost would dominate.
_BALL_AND_BOX_ROWS = 64
_TINY = 1e-300


def gamma_for(network: Network) -> float:
    """gamma_n = n u / (1 - n u) for n generous enough for every dot product computed."""
    n = 2 * network.largest + 256
    return n * _U / (1 - n * _U)


def _widen(x: Tensor, relative: float) -> Tensor:
    """|x| plus a relative rounding margin and the smallest subnormal, >= 0."""
    return x.abs() * relative + _TINY


def _down(x: Tensor) -> Tensor:
    """A value computed by one or two rounded operations, made a lower bound."""
    return x - _widen(x, 4 * _U)


def _up(x: Tensor) -> Tensor:
    return x + _widen(x, 4 * _U)


class LocalTimeout(Exception):
    """A deadline passed before the bounds were done (nothing is proven then)."""


@dataclass
class Relaxation:
    """relu(d) >= alpha d and relu(d) <= slope d + offset, for d in the proven bounds."""

    alpha: Tensor
    slope: Tensor
    offset: Tensor
    size: Tensor  # max(|alpha|, |slope|) * max|d| + |offset|, for the rounding allowance


def relax_relu(lower: Tensor, upper: Tensor) -> Relaxation:
    """CROWN's relaxation of relu on [lower, upper], with a checked upper line.

    Stable neurons are exact (slope 0 or 1). For lower < 0 < upper the upper line is the chord,
    its offset raised to cover the rounding of slope * lower and slope * upper, so that it lies
    above relu at both ends (hence on the whole interval, relu being convex); the lower line's
    slope is 1 when upper > -lower, else 0 (any slope in [0, 1] is a lower bound).
    """
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / width, active.to(upper.dtype))
    at_low = -slope * lower
    at_high = upper - slope * upper
    margin = 3 * _U * ((slope * lower).abs() + (slope * upper).abs() + upper.abs()) + _TINY
    offset = torch.where(unstable, torch.maximum(at_low, at_high) + margin, torch.zeros_like(upper))
    alpha = torch.where(unstable, (upper > -lower).to(upper.dtype), slope)
    largest = torch.maximum(lower.abs(), upper.abs())
    size = torch.maximum(alpha, slope) * largest + offset.abs()
    return Relaxation(alpha, slope, offset, size)


@dataclass
class ModelCache:
    """What depends on the model only: factors, first-layer row norms, step order."""

    network: Network
    gamma: float
    input_scale: Tensor  # (1, *input): d(model input) / d(pixel), elementwise
    scale_max: float
    factors: dict[str, tuple[float, float]]
    exact_rows: dict[str, Tensor]  # tensor -> (1, *shape) bound of ||row of d t / d pixel||
    position: dict[str, int]  # tensor -> index of the step producing it
    # (1, *input): absolute error of a computed center beyond its relative 8 u (see
    # `center_error`): 2 u |offset| s, zero without an offset
    center_slack: Tensor | None = None


def prepare_model(
    network: Network,
    input_scale: np.ndarray | None = None,
    jacobian_limit: int = 1 << 14,
    input_offset: np.ndarray | None = None,
) -> ModelCache:
    """Precompute, once per model, what every sample's bounds use.

    `input_scale` (the model input's shape, > 0): the model reads s * (x - offset) from
    the pixels x, as with --mean/--std (s = 1 / std, `input_offset` the mean, broadcast to
    the input's shape); the ball is taken in pixel space.
    """
    shape = (1, *network.shapes[network.input_name])
    scale = (
        torch.ones(shape, dtype=torch.float64)
        if input_scale is None
        else torch.as_tensor(np.array(np.broadcast_to(input_scale, shape), dtype=np.float64))
    )
    scale_max = float(scale.abs().max()) * (1 + 4 * _U)
    cache = ModelCache(
        network=network,
        gamma=gamma_for(network),
        input_scale=scale.abs(),
        scale_max=scale_max,
        factors={},
        exact_rows={},
        position={},
    )
    for index, step in enumerate(network.steps):
        cache.position[step.output] = index
    cache.factors = _factors(network, scale_max)
    if input_offset is not None:
        offset = torch.as_tensor(np.array(np.broadcast_to(input_offset, shape), dtype=np.float64))
        cache.center_slack = 2 * _U * offset.abs() * cache.input_scale * (1 + 4 * _U) + _TINY
    if network.numel(network.input_name) <= jacobian_limit:
        cache.exact_rows = _first_block_rows(cache)
    return cache


def _factors(network: Network, scale_max: float) -> dict[str, tuple[float, float]]:
    """Per tensor (rho, kappa): ||t(x) - t(x0)|| <= rho eps and |t_i(x) - t_i(x0)| <= kappa eps."""
    factors: dict[str, tuple[float, float]] = {network.input_name: (scale_max, scale_max)}

    def lookup(name: str) -> tuple[float, float]:
        return factors.get(name, (math.inf, math.inf))

    for step in network.steps:
        if isinstance(step, ReluStep):
            value = lookup(step.input)
        elif step.spread is not None:
            value = step.spread([lookup(n) for n in step.inputs], lookup)
        else:
            value = (math.inf, math.inf)
        known = network.lipschitz.get(step.output)
        if known is not None:
            bound = known * scale_max * (1 + 1e-12)
            value = (min(value[0], bound), min(value[1], bound))
        value = (min(value[0], math.inf), min(value[1], value[0]))
        factors[step.output] = value
    return factors


def _first_block_rows(cache: ModelCache) -> dict[str, Tensor]:
    """For ReLU inputs affine in the input: a bound of the L2 norm of each Jacobian row.

    The Jacobian (times the input scale) is computed forward, a chunk of basis vectors at a
    time; its rounding error after k affine steps is at most ((1 + gamma)^k - 1) times the
    same product in absolute values, whose row sums one |A| pass on the scale gives.
    """
    network = cache.network
    affine_in_input = {network.input_name}
    depth = {network.input_name: 0}
    chain: list[AffineStep] = []
    for step in network.steps:
        if isinstance(step, AffineStep) and all(n in affine_in_input for n in step.inputs):
            affine_in_input.add(step.output)
            depth[step.output] = 1 + max(depth[n] for n in step.inputs)
            chain.append(step)
    targets = [n for n in network.relu_inputs() if n in affine_in_input]
    if not targets:
        return {}
    needed = _needed(chain, targets)
    chain = [s for s in chain if s.output in needed]
    n_in = network.numel(network.input_name)
    in_shape = network.shapes[network.input_name]
    flat_scale = cache.input_scale.reshape(-1)
    squares = {t: torch.zeros((1, *network.shapes[t]), dtype=torch.float64) for t in targets}
    chunk = max(1, min(n_in, (1 << 22) // max(network.largest, 1)))
    with torch.no_grad():
        for start in range(0, n_in, chunk):
            stop = min(n_in, start + chunk)
            basis = torch.zeros((stop - start, n_in), dtype=torch.float64)
            index = torch.arange(start, stop)
            basis[index - start, index] = flat_scale[start:stop]
            values = {network.input_name: basis.reshape(stop - start, *in_shape)}
            for step in chain:
                values[step.output] = step.linear(*(values[n] for n in step.inputs))
            for t in targets:
                squares[t] += (values[t] ** 2).sum(dim=0, keepdim=True)
        magnitudes = {network.input_name: cache.input_scale}
        for step in chain:
            magnitudes[step.output] = step.magnitude(*(magnitudes[n] for n in step.inputs))
    rows = {}
    g = cache.gamma
    for t in targets:
        k = depth[t]
        compound = (1 + g) ** (k + 1) - 1
        norm = torch.sqrt(squares[t] * (1 + 2 * g)) * (1 + 4 * _U)
        rows[t] = norm + 1.01 * compound * magnitudes[t] * (1 + g) + _TINY
    return rows


def _needed(chain: list[AffineStep], targets: list[str]) -> set[str]:
    needed = set(targets)
    for step in reversed(chain):
        if step.output in needed:
            needed.update(step.inputs)
    return needed


@dataclass
class SampleBounds:
    """Bounds of every tensor over the ball around one sample."""

    lower: dict[str, Tensor]
    upper: dict[str, Tensor]
    relaxations: dict[str, Relaxation] = field(default_factory=dict)
    allowances: dict[int, Tensor] = field(default_factory=dict)
    crown_rows: int = 0


class LocalBounds:
    """Bounds over the ball around one sample, tightened layer by layer until the margins
    are proven positive (or every layer is done).

    `max_rows`: at most this many unstable neurons per ReLU layer get a CROWN bound (those
    whose relaxation costs the margins most, by the margins' own backward pass); None: all.
    """

    def __init__(
        self,
        cache: ModelCache,
        center: np.ndarray,
        eps: float,
        *,
        crown: bool = True,
        chunk: int = 512,
        max_rows: int | None = None,
        center_bounds: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
        deadline: float | None = None,
        cuts: bool = True,
    ) -> None:
        if not float(eps) >= 0:
            # a negative radius would raise the bound (min over an empty "ball"), NaN says nothing
            raise ValueError(f"expected a radius eps >= 0 but got {eps!r}")
        self.deadline = deadline
        self.cache = cache
        self.network = cache.network
        self.gamma = cache.gamma
        x0 = torch.as_tensor(np.asarray(center, dtype=np.float64)).reshape(
            1, *self.network.shapes[self.network.input_name]
        )
        self.x0 = x0
        # The exact model input may differ from x0 by a few roundings (pixels / 255, the
        # --mean/--std normalisation): see `center_error`.
        self.x0_error = center_error(cache, x0)
        # The ball around the exact pixels: a margin for the rounding of x0 itself.
        self.eps = float(eps) * (1 + 8 * _U) + 8 * _U * float(torch.linalg.norm(x0)) + _TINY
        self.chunk = chunk
        self.crown = crown
        self.max_rows = max_rows
        if center_bounds is None:
            center_bounds = center_pass(cache, x0, self.x0_error)
        self.center_lower, self.center_upper = center_bounds
        self.bounds = SampleBounds({}, {})
        radius = self.eps * self.cache.input_scale * (1 + 4 * _U)
        name = self.network.input_name
        self.bounds.lower[name] = _down(self.x0 - self.x0_error - radius)
        self.bounds.upper[name] = _up(self.x0 + self.x0_error + radius)
        # Cuts: where rows are about to enter a layer with weights (where lipcert's analysis
        # has Lipschitz balls; cheaper than concretising after every step).
        self._cuts = {
            n
            for step in self.network.steps
            if isinstance(step, AffineStep) and step.weighted
            for n in step.inputs
        }
        self._use_cuts = cuts
        self._propagate(0)

    def margins(self, prediction: int, stop_early: bool = True) -> np.ndarray:
        """Lower bounds of f_p - f_j over the ball (j != p), tightening intermediate bounds
        with CROWN one ReLU layer at a time until they are all positive (`stop_early`) or
        every layer is done."""
        lows = self.margin_lower_bounds(prediction)
        if (stop_early and bool(np.all(lows > 0))) or not self.crown:
            return lows
        for name in self.network.relu_inputs():
            if name in self.cache.exact_rows:
                continue
            lo, hi = self.bounds.lower[name], self.bounds.upper[name]
            unstable = ((lo < 0) & (hi > 0)).reshape(-1).nonzero().reshape(-1)
            if unstable.numel() == 0:
                continue
            if self.max_rows is not None and unstable.numel() > self.max_rows:
                unstable = self._most_costly(name, unstable, prediction)
            lo, hi = self._tighten(name, lo, hi, unstable)
            self._store(name, lo, hi)
            self._propagate(self.cache.position[name] + 1)
            lows = self.margin_lower_bounds(prediction)
            if stop_early and bool(np.all(lows > 0)):
                return lows
        return lows

    def _most_costly(self, name: str, unstable: Tensor, prediction: int) -> Tensor:
        """The max_rows unstable neurons whose relaxation gap weighs most on the margins."""
        captured: dict[str, Tensor] = {}
        self.margin_lower_bounds(prediction, capture=captured)
        weight = captured.get(name)
        relax = self.bounds.relaxations[name]
        if weight is None:
            return unstable[: self.max_rows]
        score = (weight.abs().sum(dim=0).reshape(-1) * relax.offset.reshape(-1))[unstable]
        order = torch.argsort(score, descending=True)[: self.max_rows]
        return unstable[order]

    # --- forward: intervals, caps, exact first layer ----------------------------------------

    def _store(self, name: str, lo: Tensor, hi: Tensor) -> None:
        old_lo, old_hi = self.bounds.lower.get(name), self.bounds.upper.get(name)
        if old_lo is not None and old_hi is not None:
            lo, hi = torch.maximum(lo, old_lo), torch.minimum(hi, old_hi)
        if bool((lo > hi).any()):
            raise RuntimeError(
                f"local bounds of {name!r} are empty: a bound is unsound (lipcert bug)"
            )
        self.bounds.lower[name], self.bounds.upper[name] = lo, hi

    def _propagate(self, first: int) -> None:
        """Interval bounds (with caps) of every step from `first` on, kept when tighter."""
        b = self.bounds
        for step in self.network.steps[first:]:
            if isinstance(step, ReluStep):
                lo, hi = b.lower[step.input], b.upper[step.input]
                b.relaxations[step.input] = relax_relu(lo, hi)
                self._store(step.output, lo.clamp(min=0), hi.clamp(min=0))
                continue
            lo, hi = interval_step(step, b.lower, b.upper, self.gamma)
            lo, hi = self._cap(step.output, lo, hi)
            self._store(step.output, lo, hi)

    def _cap(self, name: str, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        kappa = self.cache.factors.get(name, (math.inf, math.inf))[1]
        if math.isfinite(kappa):
            reach = kappa * self.eps * (1 + 4 * _U)
            lo = torch.maximum(lo, _down(self.center_lower[name] - reach))
            hi = torch.minimum(hi, _up(self.center_upper[name] + reach))
        rows = self.cache.exact_rows.get(name)
        if rows is not None:
            reach_t = rows * self.eps * (1 + 4 * _U)
            lo = torch.maximum(lo, _down(self.center_lower[name] - reach_t))
            hi = torch.minimum(hi, _up(self.center_upper[name] + reach_t))
        return lo, hi

    def _tighten(
        self, name: str, lo: Tensor, hi: Tensor, unstable: Tensor
    ) -> tuple[Tensor, Tensor]:
        """CROWN bounds of the neurons `unstable` (flat indices) of the tensor `name`."""
        shape = self.network.shapes[name]
        n = int(np.prod(shape))
        lo_flat, hi_flat = lo.reshape(-1).clone(), hi.reshape(-1).clone()
        half = max(1, self.chunk // 2)
        for start in range(0, unstable.numel(), half):
            if self.deadline is not None and time.perf_counter() > self.deadline:
                raise LocalTimeout("the time for this sample ran out")
            index = unstable[start : start + half]
            k = index.numel()
            rows = torch.zeros((2 * k, n), dtype=torch.float64)
            rows[torch.arange(k), index] = 1.0
            rows[torch.arange(k, 2 * k), index] = -1.0
            bound = self.lower_bounds(name, rows.reshape(2 * k, *shape))
            lo_flat[index] = torch.maximum(lo_flat[index], bound[:k])
            hi_flat[index] = torch.minimum(hi_flat[index], -bound[k:])
            self.bounds.crown_rows += 2 * k
        return lo_flat.reshape(lo.shape), hi_flat.reshape(hi.shape)

    # --- backward ---------------------------------------------------------------------------

    def lower_bounds(
        self, name: str, rows: Tensor, capture: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Guaranteed lower bounds of rows . t(x) over the ball, t the tensor `name`.

        rows: (K, *shape of t). Every step upstream of t must already have its bounds.
        Wherever the rows carried back sit on one tensor u alone (a cut: every path from the
        input to t crosses u), the inequality rows . t(x) >= Lambda_u . u(x) + b is also
        concretised with what is known of u: its Lipschitz ball ||u(x) - u(x0)|| <= rho_u eps
        and its interval bounds. The best of these and of the input's dual norm is kept
        (the ball at the head's input gives back the global certificate).
        """
        net, b, g = self.network, self.bounds, self.gamma
        k = rows.shape[0]
        pending: dict[str, Tensor] = {name: rows}
        bias = torch.zeros(k, dtype=torch.float64)
        bias_size = torch.zeros(k, dtype=torch.float64)
        slack = torch.zeros(k, dtype=torch.float64)
        best = torch.full((k,), -math.inf, dtype=torch.float64)
        steps = 0
        with torch.no_grad():
            for index in range(self.cache.position[name], -1, -1):
                step = net.steps[index]
                at_cut = len(pending) == 1 and (steps == 0 or next(iter(pending)) in self._cuts)
                if self._use_cuts and at_cut:
                    ((cut, lam_cut),) = pending.items()
                    state = (bias, bias_size, slack, steps)
                    best = torch.maximum(best, self._at_cut(cut, lam_cut, state))
                lam = pending.pop(step.output, None)
                if lam is None:
                    continue
                steps += 1
                flat = lam.reshape(k, -1)
                magnitude = flat.abs()
                if isinstance(step, ReluStep):
                    if capture is not None:
                        capture[step.input] = lam
                    relax = b.relaxations[step.input]
                    positive, negative = lam.clamp(min=0), lam.clamp(max=0)
                    passed = positive * relax.alpha + negative * relax.slope
                    term = negative.reshape(k, -1) @ relax.offset.reshape(-1)
                    slack = slack + magnitude @ (g * relax.size.reshape(-1))
                    _accumulate(pending, step.input, passed)
                else:
                    term = flat @ step.constant.reshape(-1)
                    slack = slack + magnitude @ self._allowance(index, step).reshape(-1)
                    for source, grad in zip(step.inputs, step.vjp(lam), strict=True):
                        _accumulate(pending, source, grad)
                bias = bias + term
                bias_size = bias_size + term.abs()
            at_input = pending.pop(net.input_name, None)
            if pending:
                raise RuntimeError(f"backward pass left rows at {sorted(pending)!r}")
            if at_input is None:
                at_input = torch.zeros((k, *self.x0.shape[1:]), dtype=torch.float64)
            state = (bias, bias_size, slack, steps)
            flat = at_input.reshape(k, -1)
            scaled = flat * self.cache.input_scale.reshape(1, -1)
            at_ball = self._concretise(flat, self.x0, self.x0_error, scaled, self.eps, state)
            return torch.maximum(best, at_ball)

    def _at_cut(self, cut: str, lam: Tensor, state: tuple[Tensor, Tensor, Tensor, int]) -> Tensor:
        """Lower bounds from the rows Lambda sitting on the tensor `cut` alone."""
        k = lam.shape[0]
        flat = lam.reshape(k, -1)
        if cut == self.network.input_name:
            return torch.full((k,), -math.inf, dtype=torch.float64)
        results = []
        rho = self.cache.factors.get(cut, (math.inf, math.inf))[0]
        if math.isfinite(rho):
            lo0, hi0 = self.center_lower[cut], self.center_upper[cut]
            mid = (lo0 + hi0) * 0.5
            rad = (hi0 - lo0) * 0.5 * (1 + 4 * _U) + 2 * _U * (lo0.abs() + hi0.abs()) + _TINY
            results.append(self._concretise(flat, mid, rad, flat, rho * self.eps, state))
            if k <= _BALL_AND_BOX_ROWS:
                results.append(self._ball_and_box(cut, flat, mid, rad, rho * self.eps, state))
        bias, bias_size, slack, steps = state
        lo, hi = self.bounds.lower[cut].reshape(-1), self.bounds.upper[cut].reshape(-1)
        value = flat.clamp(min=0) @ lo + flat.clamp(max=0) @ hi
        size = flat.abs() @ (lo.abs() + hi.abs())
        rounding = 2 * self.gamma * size + (steps + 8) * _U * 2 * (bias_size + value.abs())
        lower = value + bias - slack * (1 + 2 * self.gamma) - rounding
        results.append(lower - _widen(lower, 8 * _U) - 8 * _U * (value.abs() + bias.abs()))
        return torch.stack(results).amax(dim=0)

    def _ball_and_box(
        self,
        cut: str,
        flat: Tensor,
        mid: Tensor,
        rad: Tensor,
        radius: float,
        state: tuple[Tensor, Tensor, Tensor, int],
    ) -> Tensor:
        """min of Lambda . t over t in the ball ||t - t(x0)|| <= radius AND in t's bounds.

        Weak duality: for any mu > 0 and any feasible d = t - m (m the computed center),
        Lambda . d >= sum_i min over [a_i, b_i] of (Lambda_i d_i + mu d_i^2 / 2) - mu R^2 / 2,
        R = radius + ||t(x0) - m||, [a, b] = bounds - m. Each one-dimensional minimum has a
        closed form; where rounding leaves in doubt whether it sits at an end of [a_i, b_i],
        the unconstrained minimum -Lambda_i^2 / (2 mu), smaller, is taken. mu is tuned by
        bisection on the dual's slope (any mu gives a valid bound). Post-ReLU tensors gain
        most: the ball alone would let their zeros go negative.
        """
        g = self.gamma
        k = flat.shape[0]
        center = mid.reshape(1, -1)
        lo = self.bounds.lower[cut].reshape(1, -1)
        hi = self.bounds.upper[cut].reshape(1, -1)
        a = _down(lo - center)
        b = _up(hi - center)
        reach = (radius + float(torch.linalg.norm(rad)) * (1 + 4 * _U)) * (1 + 4 * _U)
        norm = flat.norm(dim=1).clamp(min=1e-300)
        log_low = torch.log(norm / reach) - 14.0
        log_high = torch.log(norm / reach) + 14.0
        for _ in range(24):
            log_mu = 0.5 * (log_low + log_high)
            mu = torch.exp(log_mu)[:, None]
            d = torch.clamp(-flat / mu, a, b)
            too_far = (d * d).sum(dim=1) > reach * reach
            log_low = torch.where(too_far, log_mu, log_low)
            log_high = torch.where(too_far, log_high, log_mu)
        mu = torch.exp(log_high)[:, None]
        slope_a = flat + mu * a
        slope_b = flat + mu * b
        tolerance = 4 * _U * (flat.abs() + mu * torch.maximum(a.abs(), b.abs()))
        inside = -(flat * flat) / (2 * mu)
        at_a = flat * a + 0.5 * mu * a * a
        at_b = flat * b + 0.5 * mu * b * b
        pieces = torch.where(
            slope_a > tolerance, at_a, torch.where(slope_b < -tolerance, at_b, inside)
        )
        pieces = torch.where(torch.isfinite(pieces), pieces, inside)
        dual = pieces.sum(dim=1) - 0.5 * mu[:, 0] * reach * reach
        dual_size = pieces.abs().sum(dim=1) + 0.5 * mu[:, 0] * reach * reach
        bias, bias_size, slack, steps = state
        value = flat @ center.reshape(-1)
        value_size = flat.abs() @ center.abs().reshape(-1)
        rounding = (
            2 * g * (value_size + dual_size)
            + (steps + 8) * _U * 2 * (bias_size + value.abs())
            + slack * (2 * g)
        )
        lower = value + dual + bias - slack - rounding
        lower = lower - _widen(lower, 8 * _U) - 8 * _U * (value.abs() + bias.abs() + dual.abs())
        return torch.where(torch.isfinite(lower), lower, torch.full((k,), -math.inf))

    def _concretise(
        self,
        flat: Tensor,
        center: Tensor,
        center_error: Tensor,
        scaled: Tensor,
        reach_factor: float,
        state: tuple[Tensor, Tensor, Tensor, int],
    ) -> Tensor:
        """min of Lambda . z + b over ||z - z0|| <= r (in the scaled norm), z0 known within
        center +- center_error: Lambda . center - |Lambda| . error - r ||scaled|| + b."""
        bias, bias_size, slack, steps = state
        g = self.gamma
        value = flat @ center.reshape(-1)
        value_size = flat.abs() @ center.abs().reshape(-1)
        error = flat.abs() @ center_error.reshape(-1)
        squares = (scaled * scaled).sum(dim=1) * (1 + 2 * g)
        norm = torch.sqrt(squares) * (1 + 4 * _U)
        reach = norm * reach_factor * (1 + 4 * _U)
        rounding = (
            2 * g * value_size
            + error * (1 + 2 * g)
            + (steps + 8) * _U * 2 * (bias_size + value.abs())
            + slack * (2 * g)
        )
        lower = value + bias - reach - slack - rounding
        return lower - _widen(lower, 8 * _U) - 8 * _U * (value.abs() + bias.abs() + reach)

    def _allowance(self, index: int, step: AffineStep) -> Tensor:
        """gamma (|A| max|inputs| + |c|) + |c error|, the rounding of one backward step."""
        cached = self.bounds.allowances.get(index)
        if cached is None:
            largest = [
                torch.maximum(self.bounds.lower[n].abs(), self.bounds.upper[n].abs())
                for n in step.inputs
            ]
            with torch.no_grad():
                size = step.magnitude(*largest) * (1 + self.gamma)
            cached = self.gamma * (size + step.constant.abs()) + step.constant_error
            self.bounds.allowances[index] = cached
        return cached

    def margin_lower_bounds(
        self, prediction: int, capture: dict[str, Tensor] | None = None
    ) -> np.ndarray:
        """Lower bounds of f_p - f_j over the ball, for every j != p (one logit: of +-f)."""
        name = self.network.output_name
        shape = self.network.shapes[name]
        n = int(np.prod(shape))
        if n == 1:
            rows = torch.full((1, 1), 1.0 if prediction == 1 else -1.0, dtype=torch.float64)
        else:
            others = [j for j in range(n) if j != prediction]
            rows = torch.zeros((len(others), n), dtype=torch.float64)
            rows[:, prediction] = 1.0
            rows[torch.arange(len(others)), others] = -1.0
        return self.lower_bounds(name, rows.reshape(-1, *shape), capture).numpy()


def _accumulate(pending: dict[str, Tensor], name: str, value: Tensor) -> None:
    current = pending.get(name)
    pending[name] = value if current is None else current + value


def interval_step(
    step: AffineStep, lower: dict[str, Tensor], upper: dict[str, Tensor], gamma: float
) -> tuple[Tensor, Tensor]:
    """Interval arithmetic through one affine step, rounded outward.

    With m = (lo + hi) / 2 and r >= (hi - lo) / 2 (covering the rounding of m), the output lies
    in A m + c +- (|A| r + gamma (|A| |m| + |c|) + |c error|), A m + c computed.
    """
    mids, radii, sizes = [], [], []
    for name in step.inputs:
        lo, hi = lower[name], upper[name]
        mid = (lo + hi) * 0.5
        radius = (hi - lo) * 0.5 * (1 + 4 * _U) + 2 * _U * (lo.abs() + hi.abs()) + _TINY
        mids.append(mid)
        radii.append(radius)
        sizes.append(mid.abs())
    with torch.no_grad():
        center = step.linear(*mids) + step.constant
        spread = step.magnitude(*radii) * (1 + gamma)
        size = step.magnitude(*sizes) * (1 + gamma)
    total = spread + gamma * (size + step.constant.abs() + spread) + step.constant_error
    total = total * (1 + 4 * _U) + _TINY
    return _down(center - total), _up(center + total)


def center_bounds(
    cache: ModelCache, center: np.ndarray
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """center_pass at a sample given as an array, with the rounding of the input itself."""
    network = cache.network
    x0 = torch.as_tensor(np.asarray(center, dtype=np.float64)).reshape(
        1, *network.shapes[network.input_name]
    )
    return center_pass(cache, x0, center_error(cache, x0))


def center_error(cache: ModelCache, x0: Tensor) -> Tensor:
    """Elementwise bound of |exact model input - x0| for a center x0 computed in float64.

    Without preprocessing x0 = fl(x) (pixels / 255): u |x0| (1 + u). With --mean/--std, x0 =
    fl(fl(x^ - m) / std) with x^ = x (1 + d0) the float64 pixels: x0 = z' (1 + d1)(1 + d2),
    z' = (x^ - m) / std, and z' - z = (x^ - x) / std, so |x0 - z| <= u |x| / std + (2 u + u^2)
    |z|. That first term is absolute: where the pixel equals the mean, x0 and z are about 0
    and no bound relative to |x0| covers it. With |x| <= (1 + u)(|m| + std |x0| (1 + 3 u)) and
    |z| <= |x0| (1 + 3 u) + that term, |x0 - z| <= 3.001 u |x0| + 1.001 u |m| / std, below
    8 u |x0| + 2 u |m| s (s = fl(1 / std), the cache's `center_slack`).
    """
    error = _widen(x0, 8 * _U)
    if cache.center_slack is not None:
        error = error + cache.center_slack
    return error


def center_pass(
    cache: ModelCache, x0: Tensor, x0_error: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Guaranteed bounds of every tensor at the exact center (a zero-radius interval pass)."""
    net = cache.network
    lower = {net.input_name: _down(x0 - x0_error)}
    upper = {net.input_name: _up(x0 + x0_error)}
    for step in net.steps:
        if isinstance(step, ReluStep):
            lower[step.output] = lower[step.input].clamp(min=0)
            upper[step.output] = upper[step.input].clamp(min=0)
        else:
            lower[step.output], upper[step.output] = interval_step(step, lower, upper, cache.gamma)
    return lower, upper


__all__ = [
    "LocalBounds",
    "LocalTimeout",
    "ModelCache",
    "center_bounds",
    "center_error",
    "center_pass",
    "prepare_model",
    "relax_relu",
]
