"""What the sharding tests compare: a one-process certify run and the job a shard runs.

tests/certify/test_shard_worker.py (a worker's body without Ray) and tests/test_ray.py (a
local two-worker cluster) certify the same sample model on synthetic images both ways and
require the same results, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.distributed import ShardJob
from lipcert.certify.metrics import Eps
from lipcert.certify.pipeline import (
    CertifyResult,
    Preprocessing,
    certify_dataset,
    choose_evaluators,
)
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
from lipcert.frontends import load_model
from lipcert.model import LoadOptions

MODEL = Path(__file__).resolve().parents[1] / "sample_models" / "fmnist_ce_tau8.onnx"


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """n Fashion-MNIST-shaped uint8 images: noise blended with mid-grey (varied margins)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(n, 1, 28, 28)).astype(np.float64)
    mix = rng.random((n, 1, 1, 1))
    return np.round(mix * noise + (1 - mix) * 128).astype(np.uint8)


def one_process_and_job(
    dataset: Dataset, margins: str, normalised: bool, batch_size: int
) -> tuple[CertifyResult, ShardJob, list[Eps]]:
    """certify_dataset on `dataset` in this process, and the ShardJob of the same run
    (`margins` float32 or float64; `normalised`: --mean 0.3 --std 0.45)."""
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
        batch_size=batch_size,
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
        batch_size=batch_size,
        has_exact=chosen.exact is not None,
    )
    return alone, job, eps
