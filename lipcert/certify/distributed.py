"""Certifying a dataset on a Ray cluster: the same batches, spread over workers.

The dataset is cut into shards of whole batches (a shard starts at a multiple of the batch
size), so every batch a worker evaluates is the batch a one-process run evaluates, through the
same code (`pipeline.certify_batches`: `Dataset.batches`, the preprocessing, `certify_batch`).
Each worker is a Ray actor that builds its evaluators once, from the model and the analysis
the driver made (the graph is bounded once, not once per worker). The driver puts the shards'
certificates back in dataset order and computes the metrics as `certify_dataset` does: the
radii, the CSV, the JSON and the gates are those of a one-process run, bit for bit, as long
as the evaluators give the same logits for the same batch on every worker (onnxruntime and
torch CPU kernels do at a fixed thread count; tests/test_ray.py checks it).

Ray is an optional dependency: `pip install lipcert[ray]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lipcert.bounds.compose import Analysis
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.metrics import Eps, summarise
from lipcert.certify.pipeline import (
    CertifyResult,
    Evaluators,
    Preprocessing,
    _concatenate,
    certified_spec,
    certify_batches,
    choose_evaluators,
    model_labels,
)
from lipcert.certify.radii import Certificates, Method
from lipcert.datasets import Dataset
from lipcert.errors import LipcertError, UsageError
from lipcert.model import LoadedModel

LOCAL = "local"
# Shards per worker: enough to even out slow and fast workers, few enough to keep the
# per-task overhead (milliseconds) far below a batch's inference.
_SHARDS_PER_WORKER = 4


@dataclass(frozen=True)
class ShardJob:
    """What every worker needs, sent to the cluster once."""

    loaded: LoadedModel
    analysis: Analysis
    margins: str
    threads: int | None
    device: str | None
    spec: CertificateSpec  # of the model, without preprocessing (as certify_dataset takes it)
    method: Method
    preprocessing: Preprocessing | None
    eps_values: np.ndarray
    batch_size: int
    has_exact: bool  # whether the evaluators include an exact one (reported per sample)
    # torch's thread count in the workers; None: the driver's (certify_on_ray fills it in).
    # float64 sums in torch may round differently with another count.
    torch_threads: int | None = None


# certificates, allowances, recomputed by the exact evaluator, MCR gap bounds
BatchResult = tuple[Certificates, np.ndarray, np.ndarray, np.ndarray]


class ShardWorker:
    """Evaluators built once; certifies shards of whole batches (a Ray actor's body)."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.chosen: Evaluators | None = None  # built by the first task: its errors are
        # task errors, which carry their cause back to the driver

    def certify(self, shard: Dataset) -> list[BatchResult]:
        """certify_batch on each batch of `shard`, exactly as certify_dataset runs them
        (through pipeline.certify_batches)."""
        job = self.job
        if self.chosen is None:
            if job.torch_threads is not None:
                import torch

                torch.set_num_threads(job.torch_threads)
            self.chosen = choose_evaluators(
                job.loaded, job.analysis, job.margins, job.threads, job.device
            )
        return list(
            certify_batches(
                self.chosen.evaluator,
                job.spec,
                job.method,
                shard,
                job.eps_values,
                batch_size=job.batch_size,
                preprocessing=job.preprocessing,
                exact=self.chosen.exact,
            )
        )


def import_ray() -> Any:
    """The ray module, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "ray= (--ray) needs Ray, which is not installed: pip install 'lipcert[ray]'"
        ) from None
    return ray


def thread_environment() -> dict[str, str]:
    """The driver's BLAS and OpenMP thread counts, as the variables that set them at start-up.

    Ray starts workers with OMP_NUM_THREADS=1; numpy's OpenBLAS then sums in another order than
    in the driver (an ulp off in some radii). Workers started with the driver's counts compute
    what the driver would.
    """
    from threadpoolctl import threadpool_info

    counts: dict[str, int] = {}
    for pool in threadpool_info():
        api = str(pool.get("user_api"))
        counts[api] = max(counts.get(api, 1), int(pool.get("num_threads", 1)))
    blas = str(counts.get("blas", 1))
    return {
        "OMP_NUM_THREADS": str(counts.get("openmp", counts.get("blas", 1))),
        "OPENBLAS_NUM_THREADS": blas,
        "MKL_NUM_THREADS": blas,
    }


def shard_bounds(samples: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """[start, stop) of up to `shards` contiguous shards, each starting on a batch boundary."""
    batches = math.ceil(samples / batch_size)
    per_shard = max(1, math.ceil(batches / max(1, shards)))
    step = per_shard * batch_size
    return [(start, min(start + step, samples)) for start in range(0, samples, step)]


def certify_on_ray(
    job: ShardJob,
    dataset: Dataset,
    eps_list: list[Eps],
    *,
    address: str = LOCAL,
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CertifyResult:
    """certify_dataset's result, computed by `workers` Ray actors (default: one per CPU of
    the cluster, or one per GPU with a CUDA device). `address` "local" starts (or joins, when
    this process already did) a local Ray; anything else is handed to ray.init."""
    ray = import_ray()
    if job.torch_threads is None:
        import torch

        job = replace(job, torch_threads=torch.get_num_threads())
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(
                address=None if address == LOCAL else address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
        started_here = True
    try:
        return _certify(ray, job, dataset, eps_list, workers, on_batch)
    finally:
        if started_here:
            ray.shutdown()


def _certify(
    ray: Any,
    job: ShardJob,
    dataset: Dataset,
    eps_list: list[Eps],
    workers: int | None,
    on_batch: Callable[[int], None] | None,
) -> CertifyResult:
    labels = model_labels(dataset, job.spec)
    gpu = job.device is not None and job.device != "cpu"
    resources = ray.cluster_resources()
    if gpu and resources.get("GPU", 0) < 1:
        raise UsageError(
            f"device {job.device} on Ray: the Ray cluster has no GPU (its resources: "
            f"{', '.join(f'{k} {v:g}' for k, v in sorted(resources.items()) if '_' not in k)})"
        )
    if workers is None:
        workers = int(resources.get("GPU" if gpu else "CPU", 1))
    workers = max(1, workers)
    bounds = shard_bounds(len(dataset), job.batch_size, workers * _SHARDS_PER_WORKER)
    workers = min(workers, len(bounds))
    actor_class = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)(ShardWorker)
    actor_class = actor_class.options(runtime_env={"env_vars": thread_environment()})
    started = time.perf_counter()
    job_ref = ray.put(job)
    actors = [actor_class.remote(job_ref) for _ in range(workers)]
    results: dict[int, list[BatchResult]] = {}
    pending: dict[Any, tuple[int, Any]] = {}
    queue = list(range(len(bounds)))
    free = list(actors)
    try:
        while queue or pending:
            while queue and free:
                index, actor = queue.pop(0), free.pop()
                start, stop = bounds[index]
                shard = replace(
                    dataset, images=dataset.images[start:stop], labels=dataset.labels[start:stop]
                )
                pending[actor.certify.remote(shard)] = (index, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            try:
                results[index] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                # lipcert's own errors (a refused batch, evaluators that disagree) keep
                # their one-line message and exit code, as in one process
                if isinstance(exc.cause, LipcertError):
                    raise exc.cause from None
                raise
            free.append(actor)
            if on_batch is not None:
                on_batch(bounds[index][1] - bounds[index][0])
    finally:
        for actor in actors:
            ray.kill(actor)
    seconds = time.perf_counter() - started
    batches = [batch for index in range(len(bounds)) for batch in results[index]]
    certificates = _concatenate([b[0] for b in batches], job.method)
    spec = certified_spec(job.spec, job.preprocessing)
    return CertifyResult(
        certificates,
        labels,
        summarise(certificates, labels, eps_list, dataset.class_names),
        spec,
        np.concatenate([b[1] for b in batches]) if batches else np.zeros(0),
        seconds,
        np.concatenate([b[2] for b in batches]) if job.has_exact and batches else None,
        np.concatenate([b[3] for b in batches]) if batches else None,
    )
