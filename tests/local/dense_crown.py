"""An independent reference: textbook CROWN on explicit dense matrices, in numpy.

For a chain z_1 = W_1 x + b_1, h_k = relu(z_k), z_{k+1} = W_{k+1} h_k + b_{k+1}, ..., the
bounds of every pre-activation over the L2 ball come from a backward pass of all its rows
(Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General
Activation Functions"), the upper line the chord, the lower slope 1 when u > -l else 0.
No rounding care, no shortcuts: it is the ground truth that lipcert.local must match (on
ReLU) or beat (it may add sound caps).
"""

from __future__ import annotations

import numpy as np


def dense_crown(
    layers: list[tuple[np.ndarray, np.ndarray]], x0: np.ndarray, eps: float, rows: np.ndarray
) -> np.ndarray:
    """Lower bounds of rows @ logits over ||x - x0|| <= eps; ReLU between the layers."""
    x0 = x0.reshape(-1)
    bounds: list[tuple[np.ndarray, np.ndarray]] = []

    def backward(lam: np.ndarray, depth: int) -> np.ndarray:
        """lam (K, n_depth) at pre-activation z_depth -> lower bounds over the ball."""
        bias = lam @ layers[depth][1]
        lam = lam @ layers[depth][0]
        for k in range(depth - 1, -1, -1):
            lo, hi = bounds[k]
            unstable = (lo < 0) & (hi > 0)
            slope = np.where(unstable, hi / np.where(unstable, hi - lo, 1), (lo >= 0) * 1.0)
            offset = np.where(unstable, -slope * lo, 0.0)
            alpha = np.where(unstable, (hi > -lo) * 1.0, slope)
            positive, negative = np.maximum(lam, 0), np.minimum(lam, 0)
            bias = bias + negative @ offset
            lam = positive * alpha + negative * slope
            bias = bias + lam @ layers[k][1]
            lam = lam @ layers[k][0]
        return lam @ x0 - eps * np.linalg.norm(lam, axis=1) + bias

    for depth in range(len(layers) - 1):
        n = layers[depth][0].shape[0]
        eye = np.eye(n)
        lower = backward(eye, depth)
        upper = -backward(-eye, depth)
        bounds.append((lower, upper))
    return backward(rows, len(layers) - 1)


def margin_rows(prediction: int, classes: int) -> np.ndarray:
    others = [j for j in range(classes) if j != prediction]
    rows = np.zeros((len(others), classes))
    rows[:, prediction] = 1.0
    rows[np.arange(len(others)), others] = -1.0
    return rows
