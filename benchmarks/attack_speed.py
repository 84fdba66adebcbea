"""Speed of `lipcert attack` against a plain torch PGD with the same steps and restarts.

On the first N test images of a sample model (default fmnist_ce_tau8, 20 images): lipcert
certifies them, then
- plain PGD: the model as a native torch module (lipcert.zoo + the safetensors weights), L2
  PGD batched over samples and restarts, the same steps, restarts and radii (the certified
  ones), no early exit, no confirmation;
- lipcert's attack inside the certified radii (the graph executed in torch, float32), with
  the float64 confirmation of anything found;
- lipcert's whole attack (inside the radii, then the smallest-distance search);
- optionally (--baseline-tree DIR, a checkout of an older lipcert) that version's whole
  attack command on the same samples, in a subprocess.
All in one process with one torch thread (set --threads to change), alternately run --runs
times; medians are reported.
Usage: python benchmarks/attack_speed.py [--samples 20] [--steps 20] [--restarts 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def plain_pgd(
    module: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    restarts: int,
) -> torch.Tensor:
    """Textbook L2 PGD on the margin, all restarts in one batch; returns found per sample."""
    n = len(x)
    rows = torch.arange(n).repeat(restarts)
    xr, tr, er = x[rows], target[rows], eps[rows]
    shape = (-1, 1, 1, 1)
    delta = torch.randn_like(xr)
    delta = delta * (er * torch.rand(len(xr)) / delta.flatten(1).norm(dim=1)).reshape(shape)
    delta[:n] = 0
    step = (2.5 * er / steps).reshape(shape)
    best = torch.full((len(xr),), -float("inf"))
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = module(xr + delta)
        chosen = logits.gather(1, tr[:, None])[:, 0]
        others = logits.scatter(1, tr[:, None], -float("inf")).max(dim=1).values
        margin = others - chosen
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            best = torch.maximum(best, margin)
            moved = delta + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(
                shape
            )
            norms = moved.flatten(1).norm(dim=1).clamp_min(1e-30)
            delta = moved * torch.clamp(er / norms, max=1.0).reshape(shape)
    return (best.reshape(restarts, n) > 0).any(dim=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="fmnist_ce_tau8")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-tree", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    from lipcert import zoo
    from lipcert.attack import Attacker, AttackSettings
    from lipcert.bounds.compose import FLOAT64_UNIT_ROUNDOFF, analyse
    from lipcert.certify.command import parse_eps_list
    from lipcert.certify.pipeline import certify_dataset, choose_evaluators
    from lipcert.certify.radii import choose_method
    from lipcert.datasets import load_dataset
    from lipcert.frontends import load_model
    from lipcert.model import LoadOptions

    onnx_path = ROOT / "sample_models" / f"{args.model}.onnx"
    data_path = ROOT / "sample_models" / "data" / "fashion_mnist_test_1000.npz"
    dataset = load_dataset(str(data_path), limit=args.samples)
    loaded = load_model(onnx_path, LoadOptions(input_shape=(1, 28, 28)))
    analysis = analyse(loaded.graph)
    chosen = choose_evaluators(loaded, analysis, "float32", args.threads)
    certified = certify_dataset(
        chosen.evaluator,
        analysis.spec,
        choose_method(analysis.spec, "auto"),
        dataset,
        parse_eps_list("1"),
        exact=chosen.exact,
    )
    inputs = dataset.images.astype(np.float64) / 255
    prediction = np.maximum(certified.certificates.prediction, 0)
    radius = certified.certificates.radius
    module = zoo.fashion_mnist_lipnet()
    module.load_state_dict(load_file(str(onnx_path.with_suffix(".safetensors"))))
    module.eval()
    settings = AttackSettings(steps=args.steps, restarts=args.restarts, threads=args.threads)
    attacker = Attacker(
        analysis.graph, analysis.spec_for_precision(FLOAT64_UNIT_ROUNDOFF), settings
    )
    x = torch.as_tensor(inputs, dtype=torch.float32)
    target = torch.as_tensor(prediction, dtype=torch.long)
    eps = torch.as_tensor(np.where(radius > 0, radius, 1e-3), dtype=torch.float32)

    def timed(function) -> float:
        started = time.perf_counter()
        function()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"plain": [], "inside": [], "whole": []}
    for _ in range(args.runs):
        times["plain"].append(
            timed(lambda: plain_pgd(module, x, target, eps, args.steps, args.restarts))
        )
        times["inside"].append(
            timed(lambda: attacker.attack(inputs, prediction, radius, search_distance=False))
        )
        times["whole"].append(timed(lambda: attacker.attack(inputs, prediction, radius)))
    median = {key: statistics.median(values) for key, values in times.items()}
    print(
        f"{args.model}, {args.samples} samples, {args.steps} steps x {args.restarts} restarts, "
        f"{args.threads} thread(s), median of {args.runs}"
    )
    print(f"  plain torch PGD (native module):           {median['plain']:7.2f} s")
    print(
        f"  lipcert attack inside the certified radii: {median['inside']:7.2f} s "
        f"({median['inside'] / median['plain']:.2f}x plain; target <= 2x)"
    )
    print(f"  lipcert whole attack (+ distance search):  {median['whole']:7.2f} s")
    if args.baseline_tree is not None:
        script = (
            "import sys, time; from pathlib import Path; import torch;"
            f"torch.set_num_threads({args.threads});"
            "from lipcert.certify.command import CertifyRequest;"
            "from lipcert.certify.validate import run_attack;"
            "from lipcert.attack import AttackSettings;"
            "t = time.perf_counter();"
            f"run_attack(CertifyRequest(model=Path({str(onnx_path)!r}), "
            f"dataset={str(data_path)!r}, limit={args.samples}), "
            f"AttackSettings(steps={args.steps}, restarts={args.restarts}), True, None);"
            "print(time.perf_counter() - t)"
        )
        output = subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONPATH": str(args.baseline_tree), "PATH": ""},
            cwd=args.baseline_tree,
            capture_output=True,
            text=True,
            check=True,
        )
        baseline = float(output.stdout.strip().splitlines()[-1])
        print(
            f"  baseline {args.baseline_tree} whole attack: {baseline:7.2f} s "
            f"({baseline / median['whole']:.1f}x lipcert's whole attack)"
        )


if __name__ == "__main__":
    main()
