"""The guaranteed MCR gap bound and the recomputation policy that keeps it within a tolerance.

Ground truth: exact logits f, and computed logits f^ = f + e with ||e|| within the allowance
(random and adversarial e); the exact signed radius is computed here from f directly (the
margins over the Lipschitz bounds), never by the code under test. End to end: the sample
model the allowance hurts most, against `--margins float64`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.mcr_gap import McrTracker, mcr_gap, signed_upper
from lipcert.certify.radii import Method, certify_logits
from lipcert.evaluators.base import HeadError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz"


def _spec(k: int, rng: np.random.Generator) -> CertificateSpec:
    bounds = rng.uniform(0.5, 2.0, size=(k, k))
    bounds = (bounds + bounds.T) / 2
    np.fill_diagonal(bounds, 0.0)
    top = float(max(bounds.max(), rng.uniform(0.5, 2.0)))
    return CertificateSpec(
        lipschitz_bound=top,
        logit_bounds=tuple([top] * k),
        pairwise_bounds=bounds if k > 1 else None,
        num_logits=k,
        input_shape=(5,),
        size_known=True,
    )


def exact_signed(logits: np.ndarray, labels: np.ndarray, spec: CertificateSpec, method: Method):
    """The exact function's signed radius, from its exact logits (no allowance)."""
    out = np.zeros(len(logits))
    for i, (f, y) in enumerate(zip(logits, labels, strict=True)):
        if method is Method.BINARY:
            p = int(f[0] > 0)
            radius = abs(f[0]) / spec.logit_bounds[0]
        else:
            p = int(np.argmax(f))
            others = [j for j in range(len(f)) if j != p]
            k = spec.pairwise_bounds[p] if method is Method.PAIRWISE else None
            radius = min(
                (f[p] - f[j]) / (k[j] if k is not None else spec.global_pair_bound) for j in others
            )
        out[i] = radius if p == y else -radius
    return out


def _perturb(f: np.ndarray, a: np.ndarray, labels: np.ndarray, rng, adversarial: bool):
    """f^ with ||f^ - f|| <= a: random directions, or pushing the label's logit down and
    the others up (the reported radius as small as the allowance lets it be)."""
    if adversarial and f.shape[1] == 1:
        direction = np.where(labels[:, None] == 1, -1.0, 1.0)
    elif adversarial:
        direction = np.ones_like(f)
        direction[np.arange(len(f)), labels] = -1.0
    else:
        direction = rng.normal(size=f.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return f + direction * (a * rng.uniform(0.0, 1.0, size=len(f)))[:, None]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    k=st.integers(1, 6),
    method=st.sampled_from([Method.PAIRWISE, Method.GLOBAL]),
    adversarial=st.booleans(),
    scale=st.sampled_from([1e-3, 0.1, 1.0]),
)
def test_signed_upper_bounds_the_exact_signed_radius(
    seed: int, k: int, method: Method, adversarial: bool, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    spec = _spec(max(k, 2) if k > 1 else 1, rng)
    k = spec.num_logits
    if k == 1:
        method = Method.BINARY
    n = 200
    exact = rng.normal(size=(n, k)) * scale
    labels = rng.integers(0, max(k, 2), size=n)
    allowance = rng.uniform(0.0, 0.5, size=n) * scale
    computed = _perturb(exact, allowance, labels, rng, adversarial)
    certificates = certify_logits(computed, spec, method, allowance)
    upper = signed_upper(computed, spec, method, allowance, labels, certificates)
    truth = exact_signed(exact, labels, spec, method)
    assert np.all(upper >= truth)
    gap = mcr_gap(computed, spec, method, allowance, labels, certificates)
    reported = np.where(
        certificates.prediction == labels, certificates.radius, -certificates.radius
    )
    assert np.all(gap >= 0)
    assert np.mean(truth) - np.mean(reported) <= np.mean(gap)


def test_head_allowance_bound() -> None:
    """With a head's finer margin bound, the upper bound uses it and still holds."""
    rng = np.random.default_rng(1)
    k, n = 4, 300
    spec = _spec(k, rng)
    rows = rng.normal(size=(k, 5))
    differences = np.linalg.norm(rows[:, None] - rows[None], axis=2) * (1 + 1e-10)
    hidden = rng.normal(size=(n, 5))
    body = rng.uniform(0, 0.05, size=n)
    noise = rng.normal(size=(n, 5))
    noise *= (body * rng.uniform(0, 1, size=n) / np.linalg.norm(noise, axis=1))[:, None]
    exact = hidden @ rows.T
    computed = (hidden + noise) @ rows.T  # error of h within `body`, the head exact
    head = HeadError(body, np.zeros(n), differences)
    allowance = body * np.linalg.norm(rows, 2) * 1.01
    labels = rng.integers(0, k, size=n)
    certificates = certify_logits(computed, spec, Method.PAIRWISE, allowance, head)
    upper = signed_upper(computed, spec, Method.PAIRWISE, allowance, labels, certificates, head)
    assert np.all(upper >= exact_signed(exact, labels, spec, Method.PAIRWISE))
    plain = signed_upper(computed, spec, Method.PAIRWISE, allowance, labels, certificates)
    assert np.all(upper <= plain) and np.any(upper < plain)


def test_look_alike_radius_without_allowance_is_not_an_upper_bound() -> None:
    """The radius of the computed logits with no allowance (what the exact radius is in
    practice) is not a guarantee: an error pushing the label's margin down makes the exact
    radius larger. The allowance must be added, as signed_upper does."""
    rng = np.random.default_rng(2)
    spec = _spec(3, rng)
    exact = np.array([[2.0, 0.0, -1.0]])
    labels = np.array([0])
    allowance = np.array([0.3])
    computed = _perturb(exact, allowance * 0.999, labels, rng, adversarial=True)
    middle = certify_logits(computed, spec, Method.PAIRWISE, np.zeros(1)).radius
    truth = exact_signed(exact, labels, spec, Method.PAIRWISE)
    assert middle[0] < truth[0]
    certificates = certify_logits(computed, spec, Method.PAIRWISE, allowance)
    upper = signed_upper(computed, spec, Method.PAIRWISE, allowance, labels, certificates)
    assert upper[0] >= truth[0]


def test_certified_wrong_sample_has_no_gap_and_ties_are_bounded() -> None:
    rng = np.random.default_rng(3)
    spec = _spec(3, rng)
    computed = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [np.nan, 0.0, 0.0]])
    labels = np.array([1, 0, 0])
    allowance = np.array([0.01, 0.01, 0.01])
    certificates = certify_logits(computed, spec, Method.PAIRWISE, allowance)
    gap = mcr_gap(computed, spec, Method.PAIRWISE, allowance, labels, certificates)
    assert gap[0] == 0.0  # certified for class 0, label 1: exact is at least as wrong
    assert 0.0 < gap[1] < 0.1  # a tie: the exact function may favour the label, barely
    assert gap[2] == math.inf  # non-finite logits: no bound


def test_tracker_choose_covers_the_deficit() -> None:
    tracker = McrTracker(0.01)
    gap = np.array([0.5, 0.1, 0.2, 0.0, np.inf])
    signed = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    chosen = tracker.choose(gap, signed, signed, np.ones(5, dtype=bool))
    # the infinite gap always; then 0.8 - 0.01 * 4 = 0.76 to cover: 0.5, 0.2, then 0.1
    assert set(chosen.tolist()) == {4, 0, 2, 1}
    chosen = tracker.choose(gap, signed, signed, np.array([True, True, True, True, False]))
    assert set(chosen.tolist()) == {0, 2, 1}
    loose = McrTracker(1.0)
    assert len(loose.choose(gap[:4], signed[:4], signed[:4], np.ones(4, dtype=bool))) == 0
    assert len(McrTracker(None).choose(gap, signed, signed, np.ones(5, dtype=bool))) == 0
    with pytest.raises(ValueError):
        McrTracker(-0.1)


@pytest.fixture(scope="module")
def tau128():
    from lipcert.bounds.compose import analyse
    from lipcert.certify.radii import choose_method
    from lipcert.datasets import load_dataset
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    dataset = load_dataset(str(DATA), limit=256)
    loaded = load_model(ROOT / "sample_models" / "fmnist_ce_tau128.onnx", LoadOptions((1, 28, 28)))
    analysis = analyse(loaded.graph)
    return dataset, loaded, analysis, choose_method(analysis.spec, "auto")


def test_tolerance_end_to_end_against_float64(tau128) -> None:
    """Default mode with and without a tolerance, against the float64 mode: the reported
    bound holds, and the tolerance brings it (and the MCR) within 0.5 %."""
    from lipcert.certify.command import parse_eps_list
    from lipcert.certify.pipeline import certify_dataset, choose_evaluators

    dataset, loaded, analysis, method = tau128
    eps = parse_eps_list("36/255,72/255")
    chosen = choose_evaluators(loaded, analysis, "float32", 1)
    exact64 = choose_evaluators(loaded, analysis, "float64", 1)
    reference = certify_dataset(exact64.evaluator, exact64.spec, method, dataset, eps)
    plain = certify_dataset(chosen.evaluator, chosen.spec, method, dataset, eps, exact=chosen.exact)
    tight = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        method,
        dataset,
        eps,
        exact=chosen.exact,
        mcr_tolerance=0.005,
        batch_size=64,
    )
    # float64's own radii are within ~1e-9 of the exact function's
    slack = 1e-9
    for result in (plain, tight):
        assert result.mcr_gap_bound is not None
        assert reference.summary.mcr - result.summary.mcr <= result.mcr_gap_bound + slack
        assert np.all(result.certificates.radius <= reference.certificates.radius + slack)
    assert plain.mcr_gap_bound > 0.01 * plain.summary.mcr  # the allowance matters here
    assert tight.mcr_gap_bound <= 0.005 * tight.summary.mcr
    assert tight.summary.mcr >= reference.summary.mcr * (1 - 0.005)
    assert plain.exact_samples < tight.exact_samples < len(dataset)
    # the float64 mode reports its own (tiny) bound
    assert reference.mcr_gap_bound is not None
    assert reference.mcr_gap_bound < 1e-6


def test_cli_option_and_json_key() -> None:
    """--mcr-tolerance reaches the pipeline; the JSON carries the bound it guarantees."""
    import json

    from typer.testing import CliRunner

    from lipcert.cli import app

    model = str(ROOT / "sample_models" / "fmnist_ce_tau128.onnx")
    common = [model, "--dataset", str(DATA), "--limit", "64", "--threads", "1", "--json"]
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, ["certify", *common, "--quiet"]).stdout)
    tight = json.loads(
        runner.invoke(app, ["certify", *common, "--quiet", "--mcr-tolerance", "0.005"]).stdout
    )
    assert plain["fp_allowance"]["mcr_gap_bound"] > 0.005 * plain["mcr"]
    assert tight["fp_allowance"]["mcr_gap_bound"] <= 0.005 * tight["mcr"]
    assert tight["fp_allowance"]["exact_samples"] > plain["fp_allowance"]["exact_samples"]
    refused = runner.invoke(app, ["certify", *common, "--mcr-tolerance", "2"])
    assert refused.exit_code == 2
    assert "--mcr-tolerance" in refused.output


def test_api_arrays_carry_the_bound(tau128) -> None:
    """lipcert.certify_dataset on (x, y) arrays: the same bound and tolerance."""
    import lipcert

    dataset, *_ = tau128
    model = lipcert.load(ROOT / "sample_models" / "fmnist_ce_tau128.onnx")
    x = dataset.images[:64].astype(np.float32) / np.float32(255)
    y = dataset.labels[:64]
    report = lipcert.certify_dataset(model, (x, y), [0.1], threads=1, mcr_tolerance=0.005)
    result = report.result
    assert result.mcr_gap_bound is not None
    assert result.mcr_gap_bound <= 0.005 * result.summary.mcr
