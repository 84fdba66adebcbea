"""--ray: a run sharded over a local Ray cluster of two workers equals the one-process run.

Bit for bit in the radii and allowances, equal in the metrics, the CSV and the JSON (less
the timing). One cluster for the module, a small real model and 64 samples.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from shard_support import MODEL, one_process_and_job, synthetic_images
from typer.testing import CliRunner

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.distributed import ShardJob, certify_on_ray, shard_bounds
from lipcert.certify.radii import choose_method
from lipcert.cli import app
from lipcert.datasets import Dataset
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lipcert[ray]')")

SAMPLES = 64
BATCH = 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _images(n: int) -> np.ndarray:
    return synthetic_images(n, seed=7)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    labels = np.arange(SAMPLES, dtype=np.int64) % 10
    return Dataset("synthetic", "test", _images(SAMPLES), labels, 10, None, "synthetic")


def test_shards_start_on_batch_boundaries() -> None:
    assert shard_bounds(64, 8, 3) == [(0, 24), (24, 48), (48, 64)]
    assert shard_bounds(10, 4, 8) == [(0, 4), (4, 8), (8, 10)]
    for samples, batch, shards in [(1, 5, 2), (100, 7, 6), (64, 8, 8)]:
        bounds = shard_bounds(samples, batch, shards)
        assert bounds[0][0] == 0 and bounds[-1][1] == samples
        assert all(start % batch == 0 for start, _ in bounds)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize(
    ("margins", "normalised"),
    [
        pytest.param("float32", False, id="float32_pixels"),
        pytest.param("float64", True, id="float64_mean_std"),
    ],
)
def test_sharded_equals_one_process(
    cluster: None, dataset: Dataset, margins: str, normalised: bool
) -> None:
    alone, job, eps = one_process_and_job(dataset, margins, normalised, BATCH)
    sharded = certify_on_ray(job, dataset, eps, workers=2)
    for name in ("radius", "margin", "prediction", "runner_up", "status"):
        np.testing.assert_array_equal(
            getattr(sharded.certificates, name), getattr(alone.certificates, name)
        )
    np.testing.assert_array_equal(sharded.allowance, alone.allowance)
    np.testing.assert_array_equal(sharded.labels, alone.labels)
    if alone.exact is None:
        assert sharded.exact is None
    else:
        np.testing.assert_array_equal(sharded.exact, alone.exact)
    assert sharded.summary == alone.summary
    assert sharded.spec.lipschitz_bound == alone.spec.lipschitz_bound
    assert sharded.spec.logit_bounds == alone.spec.logit_bounds
    np.testing.assert_array_equal(sharded.spec.pairwise_bounds, alone.spec.pairwise_bounds)
    assert np.any(alone.certificates.radius > 0)


def test_cli_csv_json_and_gates_match(cluster: None, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, x=_images(SAMPLES), y=np.arange(SAMPLES) % 10)
    outputs = {}
    for mode, extra in (("alone", []), ("ray", ["--ray", "local"])):
        csv = tmp_path / f"{mode}.csv"
        result = CliRunner().invoke(
            app,
            [
                "certify",
                str(MODEL),
                "--dataset",
                str(data),
                "--batch-size",
                str(BATCH),
                "--csv",
                str(csv),
                "--json",
                "--quiet",
                "--no-config",
                "--min-certified-accuracy",
                "0.99",
                *extra,
            ],
        )
        assert result.exit_code == 1, result.output  # the gate fails in both runs
        document = json.loads(result.stdout)
        outputs[mode] = (csv.read_text(), _without_timing(document))
    assert outputs["alone"][0] == outputs["ray"][0]
    assert outputs["alone"][1] == outputs["ray"][1]


def _without_timing(document: object) -> object:
    if isinstance(document, dict):
        return {
            key: _without_timing(value)
            for key, value in document.items()
            if "second" not in key and "per_s" not in key and "throughput" not in key
        }
    if isinstance(document, list):
        return [_without_timing(value) for value in document]
    return document


def test_worker_errors_come_back_as_themselves(cluster: None) -> None:
    """A lipcert error raised on a worker is raised by the driver with its one-line message."""
    from dataclasses import replace

    from lipcert.errors import UsageError

    loaded = load_model(MODEL, LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    # A spec of 3 logits for a model of 10: certify_batch refuses on the worker.
    spec = replace(analysis.spec, num_logits=3, pairwise_bounds=None)
    labels = np.arange(16, dtype=np.int64) % 3
    small = Dataset("synthetic", "test", _images(16), labels, 3, None, "synthetic")
    job = ShardJob(
        loaded=loaded,
        analysis=analysis,
        margins="float64",
        threads=None,
        device=None,
        spec=spec,
        method=choose_method(spec, "auto"),
        preprocessing=None,
        eps_values=np.array([0.1]),
        batch_size=BATCH,
        has_exact=False,
    )
    with pytest.raises(UsageError, match="the model gave 10 logits, its graph 3") as info:
        certify_on_ray(job, small, parse_eps_list("0.1"), workers=2)
    assert "\n" not in str(info.value)


def test_gpu_workers_need_a_gpu(cluster: None, dataset: Dataset) -> None:
    """--device cuda on a cluster without GPUs is refused at once (it would wait forever)."""
    from lipcert.errors import UsageError

    loaded = load_model(MODEL, LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    job = ShardJob(
        loaded=loaded,
        analysis=analysis,
        margins="float64",
        threads=None,
        device="cuda",
        spec=analysis.spec,
        method=choose_method(analysis.spec, "auto"),
        preprocessing=None,
        eps_values=np.array([0.1]),
        batch_size=BATCH,
        has_exact=False,
    )
    with pytest.raises(UsageError, match="the Ray cluster has no GPU"):
        certify_on_ray(job, dataset, parse_eps_list("0.1"), workers=2)
