"""Throughput of certification against plain onnxruntime inference (target ratio >= 0.9).

Both run the same model on the same batches of the same images, with the same session
options, alternately, several times; the ratio of median throughputs is reported. Certify
includes everything it does per batch: pixels / 255 (in float64), inference, norms, the
rounding allowance, radii; the plain run only casts pixels and calls the session.
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
from lipcert.certify.pipeline import certify_dataset
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset, load_dataset
from lipcert.frontends import load_model
from lipcert.runtime import OnnxRuntimeEvaluator


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
        loaded = load_model(model_path)
        analysis = analyse(loaded.graph)
        method = choose_method(analysis.spec, "auto")
        evaluator = OnnxRuntimeEvaluator(loaded, spec=analysis.spec)
        eps = parse_eps_list("36/255,72/255,108/255,1")
        plain_inference(evaluator, dataset, args.batch_size)  # warm-up
        plain_times, certify_times = [], []
        for _ in range(args.runs):
            plain_times.append(plain_inference(evaluator, dataset, args.batch_size))
            started = time.perf_counter()
            certify_dataset(
                evaluator, analysis.spec, method, dataset, eps, batch_size=args.batch_size
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


if __name__ == "__main__":
    main()
