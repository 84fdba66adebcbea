"""ImageNet-sized certification: images per second, certify against bare inference.

The model is the ImageNet-sized LipNet of imagenet_lipnet_model.py (3x224x224, nine stride-2
convs up to 512 channels, GroupSort2, 1,000 classes), exported to ONNX. The images are JPEG
files (500x375, smooth random content) written to a temporary image folder and read with
`imagefolder:` (resize 256, centre crop 224, decoded in threads). Reported, each the median
of --runs runs on the same batches:
- decode: read_imagefolder, images per second;
- analyse: loading and bounding the model (once per run of lipcert, not per image);
- cpu: certify as `lipcert certify` does by default (onnxruntime float32, the float64 graph
  for the samples whose certificate the allowance may change) against bare onnxruntime
  inference of the same model on the same batches, same threads;
- with --device D: the float64 graph on D (what `--device cuda` runs) against bare inference
  of the torch module in float32 on D, and the float64 graph on D without certification.
Usage: nice python benchmarks/imagenet_lipnet.py [--images 16] [--batch-size 8]
       [--threads 2] [--device cpu|cuda] [--runs 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagenet_lipnet_model import INPUT_SHAPE, export, imagenet_lipnet

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.certify.metrics import parse_eps_list
from lipcert.certify.pipeline import (
    certify_dataset,
    choose_evaluators,
    device_evaluators,
)
from lipcert.certify.radii import choose_method
from lipcert.datasets.imagefolder import read_imagefolder
from lipcert.evaluators import input_norms
from lipcert.evaluators.onnx_runtime import make_session
from lipcert.evaluators.torch_device import device_spec
from lipcert.frontends import load_model
from lipcert.model import LoadOptions


def write_folder(root: Path, images: int, classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        image.save(folder / f"{index:05d}.jpg", quality=90)


def median_time(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="also run the float64 graph here")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rate = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "val"
        write_folder(root, args.images)
        decode = median_time(lambda: read_imagefolder(root, threads=args.threads), args.runs)
        rate["decode"] = args.images / decode
        dataset = read_imagefolder(root, threads=args.threads)
        module = imagenet_lipnet()
        path = export(module, Path(tmp) / "imagenet_lipnet.onnx")
        started = time.perf_counter()
        loaded = load_model(path, LoadOptions(input_shape=INPUT_SHAPE))
        analysis = analyse(loaded.graph)
        analyse_seconds = time.perf_counter() - started

    method = choose_method(analysis.spec, "auto")
    eps = parse_eps_list("36/255,72/255,108/255")
    batches = [pixels for _, pixels, _ in dataset.batches(args.batch_size, dtype=np.float32)]
    session = make_session(loaded.onnx_bytes, path, args.threads)

    def bare_onnxruntime() -> None:
        for batch in batches:
            session.run([loaded.output_name], {loaded.input_name: batch})

    chosen = choose_evaluators(loaded, analysis, "float32", args.threads)
    results = []

    def certify(evaluators: object) -> Callable[[], None]:
        def run() -> None:
            results.append(
                certify_dataset(
                    evaluators.evaluator,  # type: ignore[attr-defined]
                    evaluators.spec,  # type: ignore[attr-defined]
                    method,
                    dataset,
                    eps,
                    batch_size=args.batch_size,
                    exact=evaluators.exact,  # type: ignore[attr-defined]
                )
            )

        return run

    bare_onnxruntime()  # warm-up (session, thread pool)
    rate["bare onnxruntime"] = args.images / median_time(bare_onnxruntime, args.runs)
    rate["certify cpu"] = args.images / median_time(certify(chosen), args.runs)

    def evaluate_only() -> None:
        for batch in batches:
            chosen.evaluator.evaluate(batch)

    rate["evaluate cpu"] = args.images / median_time(evaluate_only, args.runs)
    cpu_result = results[-1]
    print(f"model: {path.name}, L = {analysis.spec.lipschitz_bound:.4g}, {args.images} images")
    print(f"analyse (load + bounds, once): {analyse_seconds:.1f} s")
    print(f"decode (imagefolder, {args.threads} threads): {rate['decode']:.1f} images/s")
    print(
        f"cpu, {args.threads} threads, batch {args.batch_size}: bare onnxruntime "
        f"{rate['bare onnxruntime']:.2f} images/s, certify {rate['certify cpu']:.2f} images/s "
        f"({rate['certify cpu'] / rate['bare onnxruntime']:.2f}x); "
        f"{cpu_result.exact_samples} sample(s) recomputed in float64; the evaluator alone "
        f"({chosen.evaluator.name}) {rate['evaluate cpu']:.2f} images/s"
    )
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)
    norms = input_norms(np.concatenate(batches))
    median_norm = float(np.median(norms))
    allowance = {
        name: float(np.median(device_spec(spec64, torch.device(name)).fp_allowance(norms)))
        for name in ("cpu", "cuda")
    }
    print(
        f"rounding allowance at the median ||x|| = {median_norm:.1f}: float32 (a priori) "
        f"{float(np.median(analysis.spec.fp_allowance(norms))):.3g}, float64 on the cpu "
        f"{allowance['cpu']:.3g}, on cuda (x2^10) {allowance['cuda']:.3g}; median margin "
        f"{float(np.median(cpu_result.certificates.margin)):.3g}"
    )
    if args.device is None:
        return
    on_device = device_evaluators(analysis, spec64, args.device, None, args.threads)
    device = on_device.evaluator.device  # type: ignore[attr-defined]
    module = module.to(device)
    inputs = [torch.from_numpy(batch).to(device) for batch in batches]

    def bare_torch() -> None:
        with torch.no_grad():
            for batch in inputs:
                module(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def graph64() -> None:
        for batch in batches:
            on_device.evaluator.evaluate(batch.astype(np.float64))

    bare_torch()
    rate["bare torch"] = args.images / median_time(bare_torch, args.runs)
    rate["graph64"] = args.images / median_time(graph64, args.runs)
    rate["certify device"] = args.images / median_time(certify(on_device), args.runs)
    same = np.array_equal(results[-1].certificates.prediction, cpu_result.certificates.prediction)
    print(
        f"{device}: bare torch float32 {rate['bare torch']:.2f} images/s, float64 graph "
        f"{rate['graph64']:.2f} images/s, certify {rate['certify device']:.2f} images/s "
        f"({rate['certify device'] / rate['bare torch']:.2f}x of bare float32); "
        f"predictions as on the cpu path: {same}"
    )


if __name__ == "__main__":
    main()
