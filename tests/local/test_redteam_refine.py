"""Red team: radii the local bounds must not take at face value.

A negative eps made the ball's "minimum" a maximum (the bound grows with |eps|) and ended
in "local bounds are empty: a bound is unsound (lipcert bug)"; NaN proves nothing. Both are
refused in one line; a certificate with a negative or NaN radius (outside the Certificates
contract) is not refined. The look-alike eps = 0 (the center alone) is a proof like any other.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from nets_2d import Recipe, build
from soundness_support import load

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, Analysis, analyse
from lipcert.certify.radii import Certificates, certify_logits, choose_method
from lipcert.graph.execute import GraphExecutor
from lipcert.local.refine import LocalCertifier, RefineOptions, refine_certificates

RECIPE = Recipe(kind="relu", scale=3.0, num_logits=3, seed=11)


def _setup() -> tuple[Analysis, np.ndarray, np.ndarray, Certificates]:
    _, exported = build(RECIPE)
    analysis = analyse(load(exported, (2,)).graph)
    x = np.random.default_rng(3).uniform(-1.2, 1.2, size=(6, 2))
    with torch.no_grad():
        logits = GraphExecutor(analysis.graph)(torch.as_tensor(x)).numpy()
    spec = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    certificates = certify_logits(
        logits, spec, choose_method(spec, "auto"), spec.fp_allowance(np.ones(6))
    )
    return analysis, x, logits, certificates


@pytest.mark.parametrize("eps", [-0.5, -1e-300, float("nan")])
def test_a_negative_or_nan_radius_is_refused(eps: float) -> None:
    analysis, x, logits, _ = _setup()
    certifier = LocalCertifier(analysis)
    with pytest.raises(ValueError, match="eps >= 0"):
        certifier.certify(x[0], int(np.argmax(logits[0])), eps)


def test_radius_zero_is_the_center_alone() -> None:
    analysis, x, logits, _ = _setup()
    certifier = LocalCertifier(analysis)
    p = int(np.argmax(logits[0]))
    assert certifier.certify(x[0], p, 0.0)[0]
    assert not certifier.certify(x[0], int(np.argmin(logits[0])), 0.0)[0]


def test_certificates_with_negative_radii_are_not_refined() -> None:
    analysis, x, _, certificates = _setup()
    broken = dataclasses.replace(certificates, radius=np.full(6, -0.5))
    result = refine_certificates(
        analysis, broken, lambda i: x[i], RefineOptions(eps=(0.05,), upper=1.0)
    )
    assert result.attempted == 0 and result.count == 0
    assert np.array_equal(result.radius, broken.radius)
