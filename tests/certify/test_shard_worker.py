"""A Ray worker's body without Ray: its batches are certify_dataset's, bit for bit.

The worker builds its own evaluators (as on a cluster) and certifies the shards through
pipeline.certify_batches; certify_dataset runs the one-process loop. Shards cut on batch
boundaries, concatenated, must give the one-process certificates, allowances and exact flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.distributed import ShardJob, ShardWorker, shard_bounds
from lipcert.certify.pipeline import Preprocessing, certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

MODEL = Path(__file__).resolve().parents[2] / "sample_models" / "fmnist_ce_tau8.onnx"
BATCH = 7


@pytest.mark.parametrize(
    ("margins", "normalised"),
    [
        pytest.param("float32", False, id="float32_with_exact_pass"),
        pytest.param("float64", True, id="float64_mean_std"),
    ],
)
def test_worker_shards_equal_one_process(margins: str, normalised: bool) -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(30, 1, 28, 28)).astype(np.float64)
    mix = rng.random((30, 1, 1, 1))
    images = np.round(mix * noise + (1 - mix) * 128).astype(np.uint8)
    labels = np.arange(30, dtype=np.int64) % 10
    dataset = Dataset("synthetic", "test", images, labels, 10, None, "synthetic")
    loaded = load_model(MODEL, LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    chosen = choose_evaluators(loaded, analysis, margins, None)
    method = choose_method(analysis.spec, "auto")
    eps = parse_eps_list("36/255,72/255,1")
    preprocessing = Preprocessing(np.array([0.3]), np.array([0.45])) if normalised else None
    alone = certify_dataset(
        chosen.evaluator,
        chosen.spec,
        method,
        dataset,
        eps,
        batch_size=BATCH,
        preprocessing=preprocessing,
        exact=chosen.exact,
    )
    job = ShardJob(
        loaded=loaded,
        analysis=analysis,
        margins=margins,
        threads=None,
        device=None,
        spec=chosen.spec,
        method=method,
        preprocessing=preprocessing,
        eps_values=np.array([e.value for e in eps]),
        batch_size=BATCH,
        has_exact=chosen.exact is not None,
    )
    worker = ShardWorker(job)
    batches = []
    for start, stop in shard_bounds(len(dataset), BATCH, 3):
        shard = Dataset(
            "shard", "test", images[start:stop], labels[start:stop], 10, None, "synthetic"
        )
        batches.extend(worker.certify(shard))
    for name in ("radius", "margin", "prediction", "runner_up", "status"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(b[0], name) for b in batches]),
            getattr(alone.certificates, name),
        )
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), alone.allowance)
    if alone.exact is not None:
        np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), alone.exact)
    assert alone.mcr_gap is not None
    np.testing.assert_array_equal(np.concatenate([b[3] for b in batches]), alone.mcr_gap)
    assert np.any(alone.certificates.radius > 0)
