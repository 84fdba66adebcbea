"""A per-frequency LipSDP certificate for two Fourier blocks around a ReLU (LBDN's conv Sandwich).

LBDN's convolutional Sandwich layer (Wang & Manchester 2023, acfr/LBDN `SandwichConv`) is
y = W2 relu(W1 x + b) with W1 = irfft2 o sqrt2 Psi^-1 B(f) o rfft2 and
W2 = irfft2 o sqrt2 A(f)^H Psi o rfft2, [A(f) B(f)] with orthonormal rows from a Cayley
transform at every frequency and Psi = diag(exp(psi)) per channel. With T = Psi^2 the
one-layer LipSDP matrix 2T - W2^T W2 - T W1 W1^T T vanishes at every frequency: the layer is
1-Lipschitz, while the product of the two blocks' norms is up to 2. See `sandwich_bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipcert.bounds import numeric
from lipcert.bounds.fourier_operator import FourierAnalysis, keeps_elements, outer_factor
from lipcert.bounds.numeric import FLOAT64_EPS, add_up, mul_up, sqrt_up, up
from lipcert.bounds.registry import LayerBound
from lipcert.graph import Graph, Node
from lipcert.graph.fourier_sandwich import ACTIVATIONS

_SEARCH_STEPS = 48
# Steps of the search every candidate T gets before the best one is refined.
_COARSE_STEPS = 16
# The search for T's scale and gamma looks at this many pieces per stack (the largest).
_SEARCH_PIECES = 24


@dataclass(frozen=True)
class _Pieces:
    """W1's and W2's pieces in the common orthonormal coordinates of the hidden layer."""

    first: list[np.ndarray]  # (pieces, 2H, 2C_in) twice, then (pieces, H, C_in)
    second: list[np.ndarray]  # (pieces, 2C_out, 2H) twice, then (pieces, C_out, H)
    hidden: int


def sandwich_bound(
    node: Node,
    graph: Graph,
    one: FourierAnalysis | None,
    two: FourierAnalysis | None,
    bounds: list[tuple[Node, LayerBound]],
) -> tuple[float, str] | None:
    """Upper bound of the Lipschitz constant of a FourierSandwich, or None when its two
    blocks are not Fourier blocks on one grid joined element by element.

    Write the sandwich as S2 o W2 o s o (W1 + b) o S1: S1 the first block's prefix, S2 the
    second's suffix (bounded by their own rules), W1 and W2 the cores (DFT, M, inverse
    DFT; lipcert.bounds.fourier_operator), s the activation (slopes in [0, 1]) on the
    hidden elements, which the checks below make the elements of W1's output and of W2's
    input, in order. Then y(x) - y(x') = W2 L W1 (x - x') with L diagonal in [0, 1].

    The LipSDP argument (as lipcert.bounds.rules.blocks.lipsdp_bound): for a diagonal
    T >= 0 on the hidden elements, gamma is a Lipschitz constant when
    N = 2T - W2^T W2 - T W1 W1^T T / gamma^2 >= 0. Take T = c D^2 with D per channel,
    the same at every position. The hidden space has the orthonormal coordinates of
    fourier_bound's pieces (off-slab bins, self-conjugate pairs, self-paired bins), in which
    W1 and W2 are block-diagonal with the pieces W1_p, W2_p, and T (per channel, so it
    commutes with the DFTs and with the projection onto real spectra) is diag(t, t) on a
    complex piece and diag(t) on a real one. So N is block-diagonal with blocks
    N_p = 2 T_p - W2_p^T W2_p - T_p W1_p W1_p^T T_p / gamma^2, and N >= 0 iff every N_p >= 0.
    As in lipsdp_bound, N_p + 2 delta_p T_p >= 0 with delta_p = mu_p / 2c for mu_p at least
    minus the smallest eigenvalue of N'_p = 2c I - Q_p^T Q_p / gamma^2 - c^2 P_p P_p^T
    (P_p = D W1_p, Q_p = W2_p D^-1), bounded soundly (float64 eigenvalue, LAPACK's backward
    error, the rounding of forming N'_p); with delta = max_p delta_p the sandwich is
    gamma (1 + delta)-Lipschitz for the computed pieces. The pieces carry errors e1, e2 in
    the spectral norm (fourier_analysis), plus u ||W_p||_F for the check's scaled pieces
    (it certifies D^-1 fl(D W1_p) and fl(W2_p D^-1) D); sup_L ||W2 L W1|| moves by at most
    e2 ||W1|| + (||W2|| + e2) e1, which is added.

    T is searched for (the layer's Psi^2 estimated from the pieces' diagonals, balanced
    norms, or the identity; its scale c and gamma by golden-section search); nothing the
    search finds is trusted, only the final check. `one` and `two` are the two blocks'
    fourier_analysis (None: not a Fourier block); `bounds` the rules' bounds of both
    blocks' bodies (lipcert.bounds.affine_operator.body_bounds).
    """
    first, activation, _ = node.body
    if activation.op not in ACTIVATIONS or first.op != "AffineBlock":
        return None
    if one is None or two is None or not _joined(graph, one, two):
        return None
    pieces = _Pieces(one.pieces, two.pieces, one.c_out)
    found = _certificate(pieces)
    if found is None:
        return None
    certified, label = found
    norm1 = add_up(_largest(one.pieces, one.c_in, one.c_out), one.piece_error)
    norm2 = add_up(_largest(two.pieces, two.c_in, two.c_out), two.piece_error)
    # The check certifies D^-1 fl(D W1_p) and fl(W2_p D^-1) D: each entry within u of the
    # piece's, so within u ||W_p||_F in the spectral norm, added to the pieces' errors.
    e1 = add_up(one.piece_error, _scaling_error(one.pieces))
    e2 = add_up(two.piece_error, _scaling_error(two.pieces))
    allowance = add_up(mul_up(e2, norm1), mul_up(add_up(norm2, e2), e1))
    value = add_up(certified, allowance)
    steps = [*one.block.prefix, *two.block.suffix]
    outer, _ = outer_factor(graph, steps, bounds)
    if outer != 1.0:
        value = mul_up(outer, value)
    frequencies = int(np.prod(one.grid))
    return value, (
        f"per-frequency LipSDP certificate ({label}, {frequencies} frequencies), "
        "verified in float64"
    )


def _largest(pieces: list[np.ndarray], c_in: int, c_out: int) -> float:
    sigma = max(
        float(np.linalg.svd(stack, compute_uv=False).max()) if stack.size else 0.0
        for stack in pieces
    )
    return numeric.singular_value_up(sigma, 2 * max(c_in, c_out))


def _scaling_error(pieces: list[np.ndarray]) -> float:
    """u max_p ||W_p||_F: a bound of || D^-1 fl(D W_p) - W_p || and || fl(W_p D^-1) D - W_p ||."""
    squares = [float(np.sum(stack * stack, axis=(1, 2)).max()) for stack in pieces if stack.size]
    frobenius = math.sqrt(max(squares, default=0.0))
    return mul_up(FLOAT64_EPS, up(frobenius * (1 + 1e-12)))


def _joined(graph: Graph, one: FourierAnalysis, two: FourierAnalysis) -> bool:
    """The two blocks share their grid and transformed axes, and the first block's real
    output reaches the activation, and the activation the second block's real input,
    through ops whose linear part keeps every element in place."""
    a, b = one.block, two.block
    if (a.axes, a.onesided_axis, a.lengths, one.grid) != (
        b.axes,
        b.onesided_axis,
        b.lengths,
        two.grid,
    ):
        return False
    if one.c_out != two.c_in:
        return False
    if graph.shape(a.core_out) != graph.shape(b.core_in):
        return False
    return all(keeps_elements(graph, step) for step in [*a.suffix, *b.prefix])


# --- the certificate -----------------------------------------------------------------------


def _scaled(pieces: _Pieces, d: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """P_p = D W1_p and Q_p = W2_p D^-1 in each piece's coordinates."""
    ps, qs = [], []
    for index, (w1, w2) in enumerate(zip(pieces.first, pieces.second, strict=True)):
        scale = d if index == 2 else np.concatenate([d, d])
        ps.append(scale[None, :, None] * w1)
        qs.append(w2 / scale[None, None, :])
    return ps, qs


def _candidates(pieces: _Pieces) -> list[tuple[str, np.ndarray]]:
    hidden = pieces.hidden
    found: list[tuple[str, np.ndarray]] = []
    rows = np.zeros(hidden)
    cols = np.zeros(hidden)
    for index, (w1, w2) in enumerate(zip(pieces.first, pieces.second, strict=True)):
        r = np.sum(w1 * w1, axis=2)  # (pieces, rows)
        c = np.sum(w2 * w2, axis=1)
        if index < 2:
            r, c = r[:, :hidden] + r[:, hidden:], c[:, :hidden] + c[:, hidden:]
        rows += r.sum(axis=0)
        cols += c.sum(axis=0)
    # LBDN: per frequency a / t + b t = 2 with a = (W2^T W2)_cc, b = (W1 W1^T)_cc, t = psi^2
    # (the rows of [A B] are unit vectors): per channel, linear least squares in (1 / t, t)
    # over the complex pieces, then t = sqrt(t / (1 / t)).
    complex_rows = [np.sum(w1 * w1, axis=2)[:, :hidden] for w1 in pieces.first[:2]]
    complex_cols = [np.sum(w2 * w2, axis=1)[:, :hidden] for w2 in pieces.second[:2]]
    b = np.concatenate(complex_rows)
    a = np.concatenate(complex_cols)
    if len(a) >= 2:
        estimate = np.zeros(hidden)
        for channel in range(hidden):
            system = np.stack([a[:, channel], b[:, channel]], axis=1)
            (u, v), *_ = np.linalg.lstsq(system, np.full(len(a), 2.0), rcond=None)
            estimate[channel] = math.sqrt(v / u) if u > 0 and v > 0 else math.nan
        if np.all(np.isfinite(estimate)) and np.all(estimate > 0):
            found.append(("T from the layer's Psi^2, estimated per channel", np.sqrt(estimate)))
    with np.errstate(all="ignore"):
        balanced = np.sqrt(np.sqrt(cols) / np.sqrt(rows))
    if np.all(np.isfinite(balanced)) and np.all(balanced > 0):
        found.append(("balanced T", balanced))
    found.append(("T = c I", np.ones(hidden)))
    return found


def _certificate(pieces: _Pieces) -> tuple[float, str] | None:
    """Every candidate T gets a coarse search; the best one is refined and checked."""
    searches = []
    for label, d in _candidates(pieces):
        search = _Search.start(pieces, d)
        if search is not None:
            search.run(_COARSE_STEPS)
            searches.append((search.value(), label, search))
    finite = [entry for entry in searches if math.isfinite(entry[0])]
    if not finite:
        return None
    _, label, best = min(finite, key=lambda entry: entry[0])
    best.run(_SEARCH_STEPS - _COARSE_STEPS)
    result = best.checked()
    return None if result is None else (result, label)


def _spectra(
    ps: list[np.ndarray], qs: list[np.ndarray]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Per piece, the eigenvalues of P P^T and Q^T Q in their eigenvectors' basis."""
    spectra = []
    top = 0.0
    for p, q in zip(ps, qs, strict=True):
        if not p.size:
            continue
        values, vectors = np.linalg.eigh(p @ np.swapaxes(p, 1, 2))
        values = np.maximum(values, 0.0)
        rotated = np.swapaxes(vectors, 1, 2) @ (np.swapaxes(q, 1, 2) @ q) @ vectors
        spectra.append((values, rotated))
        top = max(top, float(values.max()))
    return spectra, top


def _gamma_squared(spectra: list[tuple[np.ndarray, np.ndarray]], c: float) -> float:
    """The smallest gamma^2 with N'_p >= 0 at scale c, over the given pieces."""
    worst = 0.0
    for values, rotated in spectra:
        denominator = 2 * c - c * c * values
        if np.any(denominator <= 0):
            return math.inf
        f = 1.0 / np.sqrt(denominator)
        scaled = f[:, :, None] * rotated * f[:, None, :]
        worst = max(worst, float(np.linalg.eigvalsh(scaled)[:, -1].max()))
    return worst


def _searched(ps: list[np.ndarray], qs: list[np.ndarray]) -> tuple[list, list]:
    """The pieces the search looks at: per stack, those of largest ||P_p||_F ||Q_p||_F (the
    search only proposes c and gamma; every piece is checked afterwards)."""
    chosen_p, chosen_q = [], []
    for p, q in zip(ps, qs, strict=True):
        if len(p) > _SEARCH_PIECES:
            score = np.sum(p * p, axis=(1, 2)) * np.sum(q * q, axis=(1, 2))
            keep = np.argsort(score)[-_SEARCH_PIECES:]
            p, q = p[keep], q[keep]
        chosen_p.append(p)
        chosen_q.append(q)
    return chosen_p, chosen_q


class _Search:
    """Golden-section search of T's scale c (log scale) for the smallest gamma^2, on the
    pieces _searched picks; `checked` verifies the result on every piece."""

    def __init__(self, ps: list[np.ndarray], qs: list[np.ndarray], spectra: list, top: float):
        self.ps, self.qs, self.spectra = ps, qs, spectra
        self.low, self.high = math.log(1e-6 / top), math.log(2.0 / top)
        self.ratio = (math.sqrt(5) - 1) / 2
        self.a = self.high - self.ratio * (self.high - self.low)
        self.b = self.low + self.ratio * (self.high - self.low)
        self.fa, self.fb = self._at(self.a), self._at(self.b)

    @classmethod
    def start(cls, pieces: _Pieces, d: np.ndarray) -> _Search | None:
        ps, qs = _scaled(pieces, d)
        spectra, top = _spectra(*_searched(ps, qs))
        if top <= 0 or not spectra:
            return None
        return cls(ps, qs, spectra, top)

    def _at(self, log_c: float) -> float:
        return _gamma_squared(self.spectra, math.exp(log_c))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.fa < self.fb:
                self.high, self.b, self.fb = self.b, self.a, self.fa
                self.a = self.high - self.ratio * (self.high - self.low)
                self.fa = self._at(self.a)
            else:
                self.low, self.a, self.fa = self.a, self.b, self.fb
                self.b = self.low + self.ratio * (self.high - self.low)
                self.fb = self._at(self.b)

    def value(self) -> float:
        return min(self.fa, self.fb)

    def checked(self) -> float | None:
        c = math.exp(self.a if self.fa < self.fb else self.b)
        found = self.value()
        if not math.isfinite(found) or found <= 0:
            return None
        # gamma^2 at that c over every piece, so that the check pays only for rounding.
        everything, _ = _spectra(self.ps, self.qs)
        found = max(found, _gamma_squared(everything, c))
        if not math.isfinite(found):
            return None
        return _verify(self.ps, self.qs, c, found * (1 + 1e-12))


def _verify(ps: list[np.ndarray], qs: list[np.ndarray], c: float, gamma2: float) -> float:
    """gamma (1 + max_p mu_p / 2c), mu_p >= -lambda_min(N'_p) with the allowances of
    lipcert.bounds.rules.blocks (formed: the float64 products, Higham 3.5; backward:
    LAPACK's eigenvalue error), per piece."""
    delta = 0.0
    for p, q in zip(ps, qs, strict=True):
        if not p.size:
            continue
        hidden = p.shape[1]
        length = max(p.shape[2], q.shape[1])
        eye = np.eye(hidden)
        gram_q = np.swapaxes(q, 1, 2) @ q
        gram_p = p @ np.swapaxes(p, 1, 2)
        matrix = 2 * c * eye[None] - gram_q / gamma2 - (c * c) * gram_p
        smallest = np.linalg.eigvalsh(matrix)[:, 0]
        frob_q = np.sum(q * q, axis=(1, 2)) * (1 + (q[0].size + 2) * FLOAT64_EPS)
        frob_p = np.sum(p * p, axis=(1, 2)) * (1 + (p[0].size + 2) * FLOAT64_EPS)
        formed = (length + 16) * FLOAT64_EPS * (frob_q / gamma2 + c * c * frob_p + 2 * c * hidden)
        backward = 64 * hidden * FLOAT64_EPS * np.linalg.norm(matrix, axis=(1, 2)) * (1 + 1e-6)
        mu = np.maximum(0.0, -smallest) + 2 * (formed + backward)
        delta = max(delta, float(np.max(mu)) / (2 * c))
    gamma = sqrt_up(gamma2)
    return mul_up(gamma, up(1.0 + up(delta) * (1 + 1e-12)))


__all__ = ["sandwich_bound"]
