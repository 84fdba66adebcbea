"""Default certify (float32 with an a-posteriori allowance, float64 where it matters) against
the exact function (`--margins float64`) on the sample models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lipcert
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import rounding_matters
from lipcert.certify.radii import Certificates, Method, Status, certify_logits
from lipcert.evaluators import Evaluation
from lipcert.evaluators.exact import Float64Evaluator

ROOT = Path(__file__).resolve().parents[2]
DATA = str(ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz")


def _certify(model: str, margins: str, limit: int):
    """What `lipcert certify --margins MARGINS --limit LIMIT --threads 1` computes."""
    report = lipcert.certify_dataset(
        lipcert.load(ROOT / "sample_models" / f"{model}.onnx"),
        lipcert.load_dataset(DATA, limit=limit),
        parse_eps_list("36/255,72/255,108/255,1"),
        precision=margins,  # type: ignore[arg-type]
        threads=1,
    )
    return report.result


@pytest.mark.parametrize(
    ("model", "mcr_tolerance"),
    [
        # measured on these 1,000 images: -3.2 %, -0.5 %, -0.6 % (README)
        pytest.param("fmnist_ce_tau128", 0.04, id="tau128"),
        pytest.param("fmnist_ce_tau2", 0.01, id="tau2"),
        pytest.param("fmnist_hkr_alpha0p98_m0p5", 0.01, id="hkr_m0p5"),
    ],
)
def test_default_certificates_match_the_exact_function(model: str, mcr_tolerance: float) -> None:
    default = _certify(model, "float32", 1000)
    exact = _certify(model, "float64", 1000)
    for (eps, value), (_, reference) in zip(
        default.summary.certified_accuracy, exact.summary.certified_accuracy, strict=True
    ):
        assert abs(value - reference) <= 0.002, (eps.label, value, reference)
    assert default.summary.mcr <= exact.summary.mcr + 1e-9
    assert default.summary.mcr >= exact.summary.mcr * (1 - mcr_tolerance)
    assert 0 < default.exact_samples < 100  # the exact path ran, on few samples
    # Sound: no default radius above the exact function's (the float64 radius plus what its
    # own ~1e-11 allowance may hide).
    assert np.all(default.certificates.radius <= exact.certificates.radius + 1e-9)
    # Same decisions wherever the default certifies.
    certified = default.certificates.radius > 0
    assert np.array_equal(
        default.certificates.prediction[certified], exact.certificates.prediction[certified]
    )


def test_default_radius_below_the_float64_executor_radius_plus_its_allowance() -> None:
    """Per sample, against the float64 executor's logits with its allowance ADDED (an upper
    bound of the exact radius), on the model the allowance hurts most."""
    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
    from lipcert.certify.radii import choose_method
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    default = _certify("fmnist_ce_tau128", "float32", 300)
    loaded = load_model(ROOT / "sample_models" / "fmnist_ce_tau128.onnx", LoadOptions((1, 28, 28)))
    analysis = analyse(loaded.graph)
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    images = np.load(DATA)["x"][:300].astype(np.float64).reshape(-1, 1, 28, 28) / 255
    exact = Float64Evaluator(analysis.graph, spec64).evaluate(images)
    method = choose_method(analysis.spec, "auto")
    upper = certify_logits(exact.logits, analysis.spec, method, -exact.allowance).radius
    assert np.all(default.certificates.radius <= upper)
    assert np.mean(default.certificates.radius) > 0.9 * np.mean(upper)


def _certificates(radius: list[float], status: list[int]) -> Certificates:
    n = len(radius)
    return Certificates(
        prediction=np.zeros(n, dtype=np.int64),
        runner_up=np.ones(n, dtype=np.int64),
        margin=np.zeros(n),
        radius=np.array(radius),
        status=np.array(status),
        method=Method.GLOBAL,
    )


def test_selection_of_the_samples_to_recompute() -> None:
    """Recomputed: the radius with no allowance passes an eps the certificate does not reach.
    Not recomputed: both below the eps (the lower bound already says 'not certified'), or
    both above it."""
    from lipcert.bounds.spec import CertificateSpec

    spec = CertificateSpec(
        lipschitz_bound=1.0 / np.sqrt(2),  # global pair bound sqrt(2) L = 1: radius = margin
        logit_bounds=(1.0, 1.0),
        pairwise_bounds=None,
        num_logits=2,
        input_shape=(2,),
        size_known=True,
    )
    eps = np.array([v.value for v in parse_eps_list("0.5")])
    margins = np.array([0.55, 0.45, 0.8, 0.2, 0.0])
    logits = np.stack([margins, np.zeros(5)], axis=1)
    allowance = np.full(5, 0.1 / np.sqrt(2) / 1.0)  # margin allowance 0.1
    evaluation = Evaluation(logits, allowance)
    certificates = certify_logits(logits, spec, Method.GLOBAL, allowance)
    assert certificates.status[4] == Status.TIE
    selected = rounding_matters(evaluation, certificates, spec, eps)
    # 0.55: lower 0.45 < 0.5 < 0.55 -> recompute; 0.45: both below -> no; 0.8, 0.2: no;
    # the tie: yes.
    assert selected.tolist() == [True, False, False, False, True]


def test_recomputation_stays_within_its_budget() -> None:
    """When every radius sits near an eps, at most EXACT_BUDGET of a batch is recomputed, and
    the others keep their (sound, lower) certificates."""
    from lipcert.bounds.spec import CertificateSpec
    from lipcert.certify.pipeline import EXACT_BUDGET, certify_batch

    spec = CertificateSpec(
        lipschitz_bound=1.0 / np.sqrt(2),
        logit_bounds=(1.0, 1.0),
        pairwise_bounds=None,
        num_logits=2,
        input_shape=(2,),
        size_known=True,
    )
    n = 100
    margins = np.linspace(0.51, 0.55, n)  # radius with no allowance just above eps = 0.5

    class Fixed:
        name = "fixed"
        precision = "float32"
        input_dtype = np.float64

        def __init__(self, allowance: float) -> None:
            self.allowance = allowance

        def evaluate(self, batch: np.ndarray) -> Evaluation:
            logits = np.stack([margins[: len(batch)], np.zeros(len(batch))], axis=1)
            return Evaluation(logits, np.full(len(batch), self.allowance))

    inputs = np.zeros((n, 2))
    certificates, allowance, recomputed = certify_batch(
        Fixed(0.1), spec, Method.GLOBAL, inputs, np.array([0.5]), exact=Fixed(0.0)
    )
    assert recomputed.sum() == int(EXACT_BUDGET * n)
    # the samples chosen are those the allowance hid most clearly: the largest margins
    assert recomputed[-int(EXACT_BUDGET * n) :].all()
    assert np.all(certificates.radius[recomputed] > 0.5)
    assert np.all(certificates.radius[~recomputed] < 0.5)
    assert np.all(allowance[recomputed] == 0.0)
