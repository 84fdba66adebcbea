"""Throughput of certification against plain onnxruntime inference (target ratio >= 0.9).

Both run the same model on the same batches of the same images, with the same session
options, alternately, several times; the ratio of median throughputs is reported. Certify
includes everything it does by default per batch: pixels / 255, inference up to the float64
tail with the sums of squares the rounding bound needs, the tail in float64, the allowance,
radii, and the float64 recomputation of the samples whose certificate the allowance may
change; the plain run only casts pixels and calls the session of the whole model.
Usage: python benchmarks/certify_throughput.py [--samples 2048] [--batch-size 256] [--runs 5]
       [--model path.onnx --dataset path.npz]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_lipnet import cifar_lipnet, export

from lipcert.bounds.compose import analyse
from lipcert.certify.metrics import parse_eps_list
from lipcert.certify.pipeline import certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset, load_dataset
from lipcert.evaluators.onnx_runtime import OnnxRuntimeEvaluator
from lipcert.frontends import load_model
from lipcert.model import LoadOptions


def plain_inference(evaluator: OnnxRuntimeEvaluator, dataset: Dataset, batch_size: int) -> float:
    """Seconds for onnxruntime alone on every batch."""
    started = time.perf_counter()
    for start in range(0, len(dataset), batch_size):
        pixels = dataset.images[start : start + batch_size].astype(np.float32) / np.float32(255)
        evaluator.session.run([evaluator.output_name], {evaluator.input_name: pixels})
    return time.perf_counter() - started


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
        plain = OnnxRuntimeEvaluator(loaded, threads=args.threads)
        # What `lipcert certify` runs by default: the a-posteriori evaluator, and the float64
        # graph for the samples whose certificate the allowance may change.
        chosen = choose_evaluators(loaded, analysis, "float32", args.threads)
        eps = parse_eps_list("36/255,72/255,108/255,1")
        plain_inference(plain, dataset, args.batch_size)  # warm-up
        plain_times, certify_times = [], []
        for _ in range(args.runs):
            plain_times.append(plain_inference(plain, dataset, args.batch_size))
            started = time.perf_counter()
            result = certify_dataset(
                chosen.evaluator,
                analysis.spec,
                method,
                dataset,
                eps,
                batch_size=args.batch_size,
                exact=chosen.exact,
            )
            certify_times.append(time.perf_counter() - started)
    n = len(dataset)
    plain = n / statistics.median(plain_times)
    certify = n / statistics.median(certify_times)
    print(
        f"model {model_path.name}, {n} samples, batch {args.batch_size}, "
        f"{args.runs} alternating runs"
    )
    print(f"  plain onnxruntime: {plain:8.1f} samples/s")
    print(f"  lipcert certify:   {certify:8.1f} samples/s")
    print(f"  ratio: {certify / plain:.3f} (target >= 0.9)")
    print(f"  samples recomputed in float64: {result.exact_samples} of {n}")


if __name__ == "__main__":
    main()
