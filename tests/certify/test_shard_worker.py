"""A Ray worker's body without Ray: its batches are certify_dataset's, bit for bit.

The worker builds its own evaluators (as on a cluster) and certifies the shards through
pipeline.certify_batches; certify_dataset runs the one-process loop. Shards cut on batch
boundaries, concatenated, must give the one-process certificates, allowances and exact flags.
"""

from __future__ import annotations

import numpy as np
import pytest
from shard_support import one_process_and_job, synthetic_images

from lipcert.certify.distributed import ShardWorker, shard_bounds
from lipcert.datasets import Dataset

BATCH = 7


@pytest.mark.parametrize(
    ("margins", "normalised"),
    [
        pytest.param("float32", False, id="float32_with_exact_pass"),
        pytest.param("float64", True, id="float64_mean_std"),
    ],
)
def test_worker_shards_equal_one_process(margins: str, normalised: bool) -> None:
    images = synthetic_images(30, seed=3)
    labels = np.arange(30, dtype=np.int64) % 10
    dataset = Dataset("synthetic", "test", images, labels, 10, None, "synthetic")
    alone, job, _ = one_process_and_job(dataset, margins, normalised, BATCH)
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
