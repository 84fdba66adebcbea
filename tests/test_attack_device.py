"""The attack's device: float32 gradients where the user asked (`attack --device`), checked on
a machine without a GPU: the tensors handed to PGD and the executor's constants live on the
given torch.device (the meta device stands in for a GPU), a CPU run is the default run, and
CUDA asked for without one is one usage error."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "certify"))
from linear_models import linear_onnx

from lipcert.attack.pgd import Attacker, AttackSettings
from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.errors import UsageError
from lipcert.evaluators.torch_device import no_tf32
from lipcert.frontends import load_model

SETTINGS = AttackSettings(steps=6, restarts=2, distance_steps=4, doublings=3, bisections=2)


RNG_SEED = 11


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(3, 8))
    bias = rng.normal(size=3) * 0.2
    return linear_onnx(tmp_path_factory.mktemp("m") / "linear.onnx", weight, bias, (2, 2, 2))


@pytest.fixture(scope="module")
def case(model_path: Path) -> tuple:
    rng = np.random.default_rng(RNG_SEED)
    weight = rng.normal(size=(3, 8))
    bias = rng.normal(size=3) * 0.2
    analysis = analyse(load_model(model_path).graph)
    x = rng.random((10, 2, 2, 2))
    logits = x.reshape(10, -1) @ weight.T + bias
    top = np.sort(logits, axis=1)
    # A radius a little above the true distance for half of the samples: PGD must find them.
    distance = (top[:, -1] - top[:, -2]) / (2 * np.linalg.norm(weight, axis=1).max())
    radius = np.where(np.arange(10) % 2 == 0, 0.5 * distance, 3.0 * distance)
    return analysis, x, np.argmax(logits, axis=1), radius


def _attacker(analysis, device=None) -> Attacker:
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    return Attacker(analysis.graph, spec64, SETTINGS, device=device)


def test_cpu_device_is_the_default_attack(case: tuple) -> None:
    analysis, x, prediction, radius = case
    default = _attacker(analysis).attack(x, prediction, radius)
    on_cpu = _attacker(analysis, "cpu").attack(x, prediction, radius)
    for name in ("violation", "violation_distance", "adversarial_distance"):
        np.testing.assert_array_equal(getattr(on_cpu, name), getattr(default, name))
    # Not vacuous: the inflated radii hide real decision changes, which are confirmed.
    assert on_cpu.violation[1::2].any() and not on_cpu.violation[0::2].any()


def test_pgd_tensors_and_constants_live_on_the_device(case: tuple) -> None:
    analysis, x, prediction, radius = case
    device = torch.device("meta")  # no data: stands in for a GPU on a CPU-only machine
    attacker = _attacker(analysis, device)
    assert attacker.device == device
    constants = attacker.graph_fast.constants
    assert constants and all(value.device == device for value in constants.values())
    seen: list[tuple[torch.device, ...]] = []

    def pgd(xs, target, eps, steps, restarts):
        seen.append((xs.device, target.device, eps.device))
        return np.zeros(len(xs), dtype=bool), xs

    attacker._pgd = pgd  # type: ignore[method-assign]
    result = attacker.attack(x, prediction, radius)
    assert len(seen) > 1  # the attack inside the radii, then the distance search
    assert all(d == device for devices in seen for d in devices)
    assert not result.violation.any()


def test_cuda_without_a_gpu_is_one_usage_error(
    case: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    analysis = case[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match=r"^device cuda needs a CUDA GPU"):
        _attacker(analysis, "cuda")
    with pytest.raises(UsageError, match="expected device cpu, cuda or cuda:N"):
        _attacker(analysis, "gpu")


def test_attack_runs_with_tf32_off_on_its_device(
    case: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipcert.attack.pgd as pgd

    analysis, x, prediction, radius = case
    used: list[torch.device] = []

    @contextmanager
    def spy(device):
        used.append(device)
        yield

    monkeypatch.setattr(pgd, "no_tf32", spy)
    _attacker(analysis, "cpu").attack(x, prediction, radius, search_distance=False)
    assert used == [torch.device("cpu")]


def test_no_tf32_switches_tf32_off_keeps_cudnn_and_restores() -> None:
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark)
    matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = True, True, True
    try:
        with no_tf32(torch.device("cuda")):
            assert not matmul.allow_tf32 and not cudnn.allow_tf32
            assert cudnn.enabled and cudnn.benchmark  # cuDNN itself stays: speed
        assert matmul.allow_tf32 and cudnn.allow_tf32
        with no_tf32(torch.device("cpu")):  # nothing to change on the CPU
            assert matmul.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.enabled, cudnn.benchmark = before


def test_api_hands_its_device_to_the_attack(
    case: tuple, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """attack_certificates(device=...) (what `lipcert attack --device` calls) places the
    attack there, not only the certification."""
    import lipcert
    import lipcert.api.attack as api_attack

    _, x, prediction, _ = case
    given: list[object] = []

    class Spy(Attacker):
        def __init__(self, *args, device=None, **kwargs) -> None:
            given.append(device)
            super().__init__(*args, device=device, **kwargs)

    monkeypatch.setattr(api_attack, "Attacker", Spy)
    model = lipcert.load(model_path)
    report = api_attack.attack_certificates(
        model, (x.astype(np.float32), prediction), steps=2, restarts=1, device="cpu"
    )
    assert given == ["cpu"]
    assert len(report.result.radius) == len(x)
