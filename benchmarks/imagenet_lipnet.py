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
  inference of the same model on the same batches, same threads, and the default evaluator
  alone; the three alternate run after run, and the ratio of the CPU time of the process
  per image says how much more work certify does (a shared machine's load blurs wall time);
- with --device D, side by side on D: bare inference of the torch module in float32 and of
  onnxruntime (its CUDA provider on a GPU, when onnxruntime-gpu is installed), the float64
  graph alone, and certify as `lipcert certify --device D` runs it; images per second, the
  ratios, and the time the 50,000 ImageNet validation images would take at these rates.
`--model tiny` (3x32x32, three convs) runs the whole script in seconds: a check, not a
measurement.
Usage: nice python benchmarks/imagenet_lipnet.py [--images 16] [--batch-size 8]
       [--threads 2] [--device cpu|cuda] [--runs 1] [--model imagenet|tiny]
One short GPU run (16 cores): python benchmarks/imagenet_lipnet.py --device cuda
       --images 512 --batch-size 128 --threads 16 --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagenet_lipnet_model import (
    CLASSES,
    INPUT_SHAPE,
    TINY_CLASSES,
    TINY_INPUT_SHAPE,
    TINY_WIDTHS,
    WIDTHS,
    export,
    imagenet_lipnet,
)

from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import (
    batches_ahead,
    certify_dataset,
    choose_evaluators,
    device_evaluators,
)
from lipcert.certify.radii import choose_method
from lipcert.datasets import Dataset
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


def interleaved(
    functions: dict[str, Callable[[], object]], runs: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds (all threads of the process) of each function, run in
    turn `runs` times."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return (
        {name: statistics.median(t[0] for t in values) for name, values in times.items()},
        {name: statistics.median(t[1] for t in values) for name, values in times.items()},
    )


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
    parser.add_argument("--model", choices=("imagenet", "tiny"), default="imagenet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiny = args.model == "tiny"
    shape = TINY_INPUT_SHAPE if tiny else INPUT_SHAPE
    rate = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "val"
        write_folder(root, args.images)

        def read() -> Dataset:  # resized and cropped to the model's input, as certify does
            return read_imagefolder(root, threads=args.threads, model_shape=shape)

        decode = median_time(read, args.runs)
        rate["decode"] = args.images / decode
        dataset = read_imagefolder(root, threads=args.threads, model_shape=shape)
        module = imagenet_lipnet(
            widths=TINY_WIDTHS if tiny else WIDTHS,
            input_shape=shape,
            classes=TINY_CLASSES if tiny else CLASSES,
        )
        path = export(module, Path(tmp) / f"{args.model}_lipnet.onnx", shape)
        started = time.perf_counter()
        loaded = load_model(path, LoadOptions(input_shape=shape))
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

    def evaluate_only() -> None:  # as certify runs it: onnxruntime one batch ahead
        for _, batch in batches_ahead(chosen.evaluator, dataset, args.batch_size):
            chosen.evaluator.evaluate(batch)

    bare_onnxruntime()  # warm-up (session, thread pool)
    # certify's first run also makes its one-time checks (a batch against single samples, the
    # first sample through lipcert's float64 executor): timed apart, as a 50,000-image run
    # pays them once
    first_run = median_time(certify(chosen), 1)
    evaluate_only()
    # side by side: the three alternate run after run (a shared machine's load hits all three)
    wall, cpu = interleaved(
        {
            "bare onnxruntime": bare_onnxruntime,
            "certify cpu": certify(chosen),
            "evaluate cpu": evaluate_only,
        },
        args.runs,
    )
    rate.update({name: args.images / seconds for name, seconds in wall.items()})
    cpu_result = results[-1]
    print(f"model: {path.name}, L = {analysis.spec.lipschitz_bound:.4g}, {args.images} images")
    print(f"analyse (load + bounds, once): {analyse_seconds:.1f} s")
    print(f"decode (imagefolder, {args.threads} threads): {rate['decode']:.1f} images/s")
    print(
        f"cpu, {args.threads} threads, batch {args.batch_size}: bare onnxruntime "
        f"{rate['bare onnxruntime']:.2f} images/s, certify {rate['certify cpu']:.2f} images/s "
        f"({rate['certify cpu'] / rate['bare onnxruntime']:.2f}x); "
        f"{cpu_result.exact_samples} sample(s) recomputed in float64; the evaluator alone "
        f"({chosen.evaluator.name}) {rate['evaluate cpu']:.2f} images/s; CPU time of the "
        f"process per image, certify / bare: {cpu['certify cpu'] / cpu['bare onnxruntime']:.2f}"
        f"; certify's first run (one-time checks included) {first_run:.2f} s; load average "
        f"{os.getloadavg()[0]:.1f}"
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
    device_part(args, analysis, loaded, module, dataset, batches, certify, results, rate)
    estimate(args, rate, analyse_seconds)


def device_part(
    args: argparse.Namespace,
    analysis: object,
    loaded: object,
    module: torch.nn.Module,
    dataset: object,
    batches: list[np.ndarray],
    certify: Callable[[object], Callable[[], None]],
    results: list,
    rate: dict[str, float],
) -> None:
    """Side by side on --device: bare torch float32 and bare onnxruntime (inputs sent from
    and logits brought back to the host, as certify does), the float64 graph alone, certify."""
    cpu_result = results[-1]
    spec64 = analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF)  # type: ignore[attr-defined]
    on_device = device_evaluators(analysis, spec64, args.device, None, args.threads)  # type: ignore[arg-type]
    device = on_device.evaluator.device  # type: ignore[attr-defined]
    module = module.to(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def bare_torch() -> None:
        with torch.no_grad():
            for batch in batches:
                module(torch.from_numpy(batch).to(device)).cpu()
        synchronize()

    def graph64() -> None:
        for batch in batches:
            on_device.evaluator.evaluate(batch.astype(np.float64))

    bare_torch()  # warm-up (CUDA context, kernels)
    rate["bare torch"] = args.images / median_time(bare_torch, args.runs)
    bare_ort = onnxruntime_on(device, loaded, args.threads)
    if bare_ort is not None:
        session, provider = bare_ort

        def bare_onnxruntime() -> None:
            for batch in batches:
                session.run([loaded.output_name], {loaded.input_name: batch})  # type: ignore[attr-defined]

        bare_onnxruntime()
        rate["bare onnxruntime device"] = args.images / median_time(bare_onnxruntime, args.runs)
    graph64()
    rate["graph64"] = args.images / median_time(graph64, args.runs)
    rate["certify device"] = args.images / median_time(certify(on_device), args.runs)
    same = np.array_equal(results[-1].certificates.prediction, cpu_result.certificates.prediction)
    certify_rate = rate["certify device"]
    print(
        f"{device}, batch {args.batch_size}: bare torch float32 {rate['bare torch']:.2f} "
        f"images/s, certify {certify_rate:.2f} images/s "
        f"({certify_rate / rate['bare torch']:.2f}x of bare torch)"
    )
    if bare_ort is None:
        print(f"{device}: bare onnxruntime not measured (no CUDA provider: onnxruntime-gpu)")
    else:
        ort_rate = rate["bare onnxruntime device"]
        print(
            f"{device}: bare onnxruntime float32 ({provider}) {ort_rate:.2f} images/s, "
            f"certify {certify_rate / ort_rate:.2f}x of it"
        )
    print(
        f"{device}: the float64 graph alone {rate['graph64']:.2f} images/s; certify's "
        f"predictions equal the cpu path's: {same}"
    )


def onnxruntime_on(device: torch.device, loaded: object, threads: int) -> tuple | None:
    """(session, provider) of the model on `device`: the CPU provider on the CPU, the CUDA
    provider on a GPU when onnxruntime has it (else None)."""
    import onnxruntime as ort

    if device.type == "cpu":
        provider: str | tuple[str, dict[str, int]] = "CPUExecutionProvider"
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        provider = ("CUDAExecutionProvider", {"device_id": device.index or 0})
    else:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        loaded.onnx_bytes,  # type: ignore[attr-defined]
        sess_options=options,
        providers=[provider],
    )
    name = provider if isinstance(provider, str) else provider[0]
    return session, name


def estimate(args: argparse.Namespace, rate: dict[str, float], analyse_seconds: float) -> None:
    """The 50,000 ImageNet validation images at the measured rates (extrapolated: the rates
    of --images images, one machine)."""
    images = 50_000
    certify_minutes = images / rate["certify device"] / 60
    decode_minutes = images / rate["decode"] / 60
    load_minutes = analyse_seconds / 60
    serial = certify_minutes + decode_minutes + load_minutes
    overlapped = max(certify_minutes, decode_minutes) + load_minutes
    print(
        f"50,000 images on {args.device} (extrapolated): certify {certify_minutes:.1f} min; "
        f"decoding {decode_minutes:.1f} min with {args.threads} threads; model load and "
        f"bounds {analyse_seconds:.0f} s once; in all {serial:.1f} min one after the other, "
        f"{overlapped:.1f} min if decoding overlapped certification"
    )


if __name__ == "__main__":
    main()
