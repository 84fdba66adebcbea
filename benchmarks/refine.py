"""Global vs refined (local) certificates, side by side.

    nice -n 10 python benchmarks/refine.py MODEL.onnx [--dataset fashion-mnist] [--limit 200]
        [--eps 0.1,0.2,0.5] [--upper 1.0] [--budget 600] [--sample-budget 5]

Certifies with lipcert's global bound, then refines the samples whose radius is below each
eps (and, with --upper, bisects their radius up to that limit), and prints certified
accuracy before and after, how many certificates refinement added, and the CPU time per
refined sample. One thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import lipcert
from lipcert.certify.command import parse_eps_list
from lipcert.certify.metrics import certified_accuracy
from lipcert.local.refine import RefineOptions, refine_certificates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--eps", default="0.1,0.2,0.5")
    parser.add_argument("--upper", type=float, default=None)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--sample-budget", type=float, default=None)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--check-pgd", action="store_true", help="PGD (float64) at every refined radius"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    eps_list = parse_eps_list(args.eps)
    dataset = lipcert.load_dataset(args.dataset, limit=args.limit)
    model = lipcert.load(args.model, input_shape=dataset.images.shape[1:])
    result = lipcert.certify_dataset(model, dataset, eps_list, precision="float64").result

    def sample(i: int) -> np.ndarray:
        return dataset.images[i].astype(np.float64) / 255.0

    options = RefineOptions(
        eps=tuple(e.value for e in eps_list),
        upper=args.upper,
        budget=args.budget,
        sample_budget=args.sample_budget,
    )
    started = time.process_time()
    refined = refine_certificates(
        model.analysis, result.certificates, sample, options, max_rows=args.max_rows
    )
    cpu = time.process_time() - started
    correct = result.certificates.prediction == result.labels
    report = {
        "model": str(args.model),
        "samples": len(result.labels),
        "accuracy": float(np.mean(correct)),
        "global": {
            e.label: certified_accuracy(correct, result.certificates.radius, e.value)
            for e in eps_list
        },
        "refined": {
            e.label: certified_accuracy(correct, refined.radius, e.value) for e in eps_list
        },
        "refined_certificates": refined.count,
        "attempted": refined.attempted,
        "skipped_for_time": refined.skipped_for_time,
        "cpu_seconds": round(cpu, 2),
        "cpu_per_attempted_sample": round(cpu / max(refined.attempted, 1), 3),
        "median_radius_global": float(np.median(result.certificates.radius[correct])),
        "median_radius_refined": float(np.median(refined.radius[correct])),
        "unsupported": refined.unsupported,
    }
    if args.check_pgd:
        report["pgd_violations"] = _pgd_violations(
            model.analysis.graph, sample, result.certificates.prediction, refined
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


def _pgd_violations(graph, sample, prediction, refined) -> int:  # type: ignore[no-untyped-def]
    """How many refined radii PGD (float64, 4 restarts of 60 steps) breaks: must be 0."""
    from lipcert.graph.execute import GraphExecutor

    executor = GraphExecutor(graph)
    violations = 0
    for i in np.flatnonzero(refined.refined):
        center = torch.as_tensor(sample(int(i)))[None]
        p, eps = int(prediction[i]), float(refined.radius[i])
        generator = torch.Generator().manual_seed(int(i))
        for restart in range(4):
            noise = torch.randn(center.shape, generator=generator, dtype=torch.float64)
            delta = noise / noise.norm() * eps * 0.5 * restart
            for _ in range(60):
                delta = delta.detach().requires_grad_(True)
                logits = executor(center + delta)[0]
                others = logits.clone()
                others[p] = -torch.inf
                margin = logits[p] - others.max()
                (grad,) = torch.autograd.grad(margin, delta)
                delta = delta - (2.5 * eps / 60) * grad / grad.norm().clamp(min=1e-30)
                delta = delta * min(1.0, eps / float(delta.detach().norm()))
            with torch.no_grad():
                if int(executor(center + delta).argmax()) != p:
                    violations += 1
                    break
    return violations


if __name__ == "__main__":
    main()
