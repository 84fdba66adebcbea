"""What `--mcr-tolerance` buys and costs: the MCR gap to the exact function, the guaranteed
bound, the samples recomputed in float64 and the time, against the default and
`--margins float64` (the exact function within ~1e-11), on the same images.

Each configuration runs `certify_dataset` as the CLI does (one thread by default),
alternately, `--runs` times; the smallest wall time and CPU time (all threads of the
process) are reported: on a shared machine the CPU time says how much more work a
configuration does, which wall time blurs.
Usage: python benchmarks/mcr_tolerance.py --model sample_models/fmnist_ce_tau8.onnx
       [--dataset fashion-mnist] [--data-dir DIR] [--samples 2000] [--tolerances 0.005,0.01]
       [--runs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lipcert.bounds.compose import analyse
from lipcert.certify.command import parse_eps_list
from lipcert.certify.pipeline import Evaluators, certify_dataset, choose_evaluators
from lipcert.certify.radii import choose_method
from lipcert.datasets import load_dataset
from lipcert.frontends import load_model
from lipcert.model import LoadOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--tolerances", default="0.005,0.01")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    dataset = load_dataset(args.dataset, data_dir=args.data_dir, limit=args.samples)
    loaded = load_model(args.model, LoadOptions(input_shape=tuple(dataset.images.shape[1:])))
    analysis = analyse(loaded.graph)
    method = choose_method(analysis.spec, "auto")
    eps = parse_eps_list("36/255,72/255,108/255,1")
    default = choose_evaluators(loaded, analysis, "float32", args.threads)
    exact = choose_evaluators(loaded, analysis, "float64", args.threads)
    configs: list[tuple[str, Evaluators, float | None]] = [("default", default, None)]
    configs += [(f"tolerance {t}", default, float(t)) for t in args.tolerances.split(",") if t]
    configs += [("float64", exact, None)]
    wall: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    results = {}
    for _ in range(args.runs):
        for name, chosen, tolerance in configs:
            started = time.process_time()
            result = certify_dataset(
                chosen.evaluator,
                chosen.spec,
                method,
                dataset,
                eps,
                exact=chosen.exact,
                mcr_tolerance=tolerance,
            )
            cpu[name].append(time.process_time() - started)
            wall[name].append(result.seconds)
            results[name] = result
    reference = results["float64"].summary.mcr
    print(
        f"{args.model.name} on {len(dataset)} samples of {dataset.name}, exact MCR {reference:.6f}"
    )
    print("| configuration | MCR | gap to exact | guaranteed bound | recomputed | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in configs:
        result = results[name]
        mcr = result.summary.mcr
        bound = result.mcr_gap_bound
        bound_text = "n/a" if bound is None else f"{100 * bound / mcr:.3f} %"
        recomputed = (
            "all" if result.exact is None else f"{100 * result.exact_samples / len(dataset):.1f} %"
        )
        print(
            f"| {name} | {mcr:.6f} | {100 * (mcr / reference - 1):+.3f} % | {bound_text} | "
            f"{recomputed} | {min(wall[name]):.2f} | {min(cpu[name]):.2f} |"
        )


if __name__ == "__main__":
    main()
