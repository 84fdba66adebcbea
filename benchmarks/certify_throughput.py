"""Throughput of certification against plain onnxruntime inference (target ratio >= 0.9).

All run the same model on the same batches of the same images, plain onnxruntime with its
default session options (the thread count aside), alternately, several times; the ratios of
median throughputs are reported. Certify includes everything it does by default per batch:
pixels / 255, inference up to the float64 tail with the sums of squares the rounding bound
needs (one batch ahead, in a background thread), the tail in float64, the allowance, radii,
and the float64 recomputation of the samples whose certificate the allowance may change;
the plain run only casts pixels and calls the session of the whole model. Also reported:
the default evaluator alone (its `evaluate` on each batch, onnxruntime one batch ahead as
certify runs it), and the CPU time (all threads of the process) per run: on a machine shared
with other work, the ratio of CPU times says how much more work certify does, which wall
time blurs. With --threads 1, also the per-batch minima of the CPU time (each batch through
plain onnxruntime and certify's per-batch work alternately, the smallest of the runs),
steadier still on a loaded machine.
Usage: python benchmarks/certify_throughput.py [--samples 2048] [--batch-size 256] [--runs 5]
       [--model path.onnx --dataset path.npz] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_lipnet import cifar_lipnet, export

from lipcert.bounds.compose import analyse
from lipcert.bounds.spec import CertificateSpec
from lipcert.certify.command import parse_eps_list
from lipcert.certify.mcr_gap import McrTracker
from lipcert.certify.metrics import Eps
from lipcert.certify.pipeline import (
    Evaluators,
    batches_ahead,
    certify_batch,
    certify_dataset,
    choose_evaluators,
    model_labels,
)
from lipcert.certify.radii import Method, choose_method
from lipcert.datasets import Dataset, load_dataset
from lipcert.frontends import load_model
from lipcert.model import LoadOptions


def plain_inference(session: object, names: tuple[str, str], dataset: Dataset, batch: int) -> None:
    """onnxruntime alone on every batch."""
    output_name, input_name = names
    for start in range(0, len(dataset), batch):
        pixels = dataset.images[start : start + batch].astype(np.float32) / np.float32(255)
        session.run([output_name], {input_name: pixels})  # type: ignore[attr-defined]


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--dataset")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model_path = export(cifar_lipnet(), Path(folder) / "cifar_lipnet.onnx")
            rng = np.random.default_rng(0)
            dataset = Dataset(
                "random",
                "test",
                rng.integers(0, 256, (args.samples, 3, 32, 32), dtype=np.uint8),
                rng.integers(0, 10, args.samples),
                10,
                None,
                "random CIFAR-shaped images",
            )
        else:
            model_path = args.model
            dataset = load_dataset(args.dataset, limit=args.samples)
        loaded = load_model(
            model_path, LoadOptions(input_shape=tuple(int(d) for d in dataset.images.shape[1:]))
        )
        analysis = analyse(loaded.graph)
        method = choose_method(analysis.spec, "auto")
        options = ort.SessionOptions()
        if args.threads is not None:
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            loaded.onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        names = (loaded.output_name, loaded.input_name)
        # What `lipcert certify` runs by default: the a-posteriori evaluator, and the float64
        # graph for the samples whose certificate the allowance may change.
        chosen = choose_evaluators(loaded, analysis, "float32", args.threads)
        eps = parse_eps_list("36/255,72/255,108/255,1")
        results = []

        def plain() -> None:
            plain_inference(session, names, dataset, args.batch_size)

        def certify() -> None:
            results.append(
                certify_dataset(
                    chosen.evaluator,
                    analysis.spec,
                    method,
                    dataset,
                    eps,
                    batch_size=args.batch_size,
                    exact=chosen.exact,
                )
            )

        def evaluator_alone() -> None:  # as certify runs it: onnxruntime one batch ahead
            for _, inputs in batches_ahead(chosen.evaluator, dataset, args.batch_size):
                chosen.evaluator.evaluate(inputs)

        runs: dict[str, Callable[[], None]] = {
            "plain onnxruntime": plain,
            "lipcert certify": certify,
            "evaluator alone": evaluator_alone,
        }
        for run in runs.values():  # warm-up
            run()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, run in runs.items():
                times[name].append(timed(run))
        minima = batch_minima(session, names, chosen, analysis.spec, method, dataset, eps, args)
    n = len(dataset)
    wall = {name: statistics.median(t[0] for t in values) for name, values in times.items()}
    cpu = {name: statistics.median(t[1] for t in values) for name, values in times.items()}
    threads = "default" if args.threads is None else str(args.threads)
    print(
        f"model {model_path.name}, {n} samples, batch {args.batch_size}, {threads} threads, "
        f"{args.runs} alternating runs, evaluator: {chosen.evaluator.name}"
    )
    base = "plain onnxruntime"
    for name in runs:
        print(
            f"  {name:18s} {n / wall[name]:8.1f} samples/s (ratio {wall[base] / wall[name]:.3f}),"
            f" CPU {1e6 * cpu[name] / n:7.1f} us/sample (ratio {cpu[base] / cpu[name]:.3f})"
        )
    print(f"  target: certify >= 0.9x plain onnxruntime; load average {os.getloadavg()[0]:.1f}")
    print(f"  samples recomputed in float64: {results[-1].exact_samples} of {n}")
    if minima is not None:
        plain_cpu, certify_cpu = minima
        print(
            f"  per-batch minima of the CPU time over the runs (one thread; robust to other "
            f"load): plain {1e6 * plain_cpu / n:.1f}, certify {1e6 * certify_cpu / n:.1f} "
            f"us/sample (ratio {plain_cpu / certify_cpu:.3f})"
        )


def batch_minima(
    session: object,
    names: tuple[str, str],
    chosen: Evaluators,
    spec: CertificateSpec,
    method: Method,
    dataset: Dataset,
    eps: list[Eps],
    args: argparse.Namespace,
) -> tuple[float, float] | None:
    """With one thread: each batch through plain onnxruntime and through `certify_batch`
    (what certify does per batch, recomputations included), alternately, `args.runs` times;
    the sums over the batches of each one's smallest CPU time. Work that another process
    delays on a shared machine shows in some runs and not in the minimum. None with more
    threads (certify then overlaps batches)."""
    if args.threads != 1:
        return None
    output_name, input_name = names
    labels = model_labels(dataset, spec)
    values = np.array([e.value for e in eps], dtype=np.float64)
    best: dict[str, list[float]] = {"plain": [], "certify": []}
    starts = range(0, len(dataset), args.batch_size)
    for run in range(args.runs):
        for i, start in enumerate(starts):
            pixels = dataset.images[start : start + args.batch_size]
            for name in best:
                cpu = time.process_time()
                inputs = pixels.astype(np.float32) / np.float32(255)
                if name == "plain":
                    session.run([output_name], {input_name: inputs})  # type: ignore[attr-defined]
                else:
                    certify_batch(
                        chosen.evaluator,
                        spec,
                        method,
                        inputs,
                        values,
                        exact=chosen.exact,
                        labels=labels[start : start + len(inputs)],
                        mcr=McrTracker(None),
                    )
                cpu = time.process_time() - cpu
                if run == 0:
                    best[name].append(cpu)
                else:
                    best[name][i] = min(best[name][i], cpu)
    return sum(best["plain"]), sum(best["certify"])


if __name__ == "__main__":
    main()
