"""The certification gap before and after refinement: certified radius / adversarial distance.

    nice -n 10 python benchmarks/refine_gap.py MODEL.onnx [--data NPZ] [--limit 100]
        [--sample-budget 3] [--max-rows 32]

For each correctly classified sample: the global radius r_g (lipcert, float64 margins), the
smallest adversarial distance d found by PGD (L2, float32 search, every adversarial point
checked in float64) with a bisection on the radius, and the local radius r_l proven by
bisection between r_g and d (each step within --sample-budget seconds; a step that runs out
of time proves nothing). Prints the median of r_g / d and of r_l / d, and how many samples
refinement improved. One thread.
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
from lipcert.graph.execute import GraphExecutor
from lipcert.local.crown import LocalTimeout
from lipcert.local.refine import LocalCertifier


def _changes(executor: GraphExecutor, x: torch.Tensor, label: int) -> bool:
    with torch.no_grad():
        return int(executor(x.double()).argmax()) != label


def pgd_distance(
    fast: GraphExecutor, exact: GraphExecutor, x0: np.ndarray, label: int, high: float
) -> float:
    """The smallest radius (by bisection) at which PGD finds a checked adversarial point."""
    center = torch.as_tensor(x0, dtype=torch.float32)[None]
    generator = torch.Generator().manual_seed(0)

    def attack(eps: float) -> bool:
        for restart in range(2):
            noise = torch.randn(center.shape, generator=generator)
            delta = noise / noise.norm() * eps * 0.5 * restart
            for step in range(30):
                delta = delta.detach().requires_grad_(True)
                logits = fast(center + delta)[0]
                others = logits.clone()
                others[label] = -torch.inf
                margin = logits[label] - others.max()
                if margin < 0 and _changes(exact, center + delta.detach(), label):
                    return True
                (grad,) = torch.autograd.grad(margin, delta)
                size = 2.5 * eps / 30 * (1.0 if step < 15 else 0.3)
                delta = delta - size * grad / grad.norm().clamp(min=1e-12)
                delta = delta * min(1.0, eps / float(delta.detach().norm()) * (1 - 1e-6))
            if _changes(exact, center + delta.detach(), label):
                return True
        return False

    if not attack(high):
        return float("inf")
    low = 0.0
    for _ in range(10):
        middle = 0.5 * (low + high)
        if attack(middle):
            high = middle
        else:
            low = middle
    return high


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument(
        "--data", type=Path, default=Path("sample_models/data/fashion_mnist_test_1000.npz")
    )
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--sample-budget", type=float, default=3.0)
    parser.add_argument("--max-rows", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = lipcert.load_dataset(str(args.data), limit=args.limit)
    model = lipcert.load(args.model, input_shape=dataset.images.shape[1:])
    result = lipcert.certify_dataset(
        model, dataset, parse_eps_list("0.1"), precision="float64"
    ).result
    graph = model.analysis.graph
    exact = GraphExecutor(graph)
    fast = GraphExecutor(graph, torch.float32)
    certifier = LocalCertifier(model.analysis, max_rows=args.max_rows)
    images = dataset.images
    rows = []
    started = time.process_time()
    for i in range(len(result.labels)):
        label = int(result.labels[i])
        if int(result.certificates.prediction[i]) != label:
            continue
        x0 = images[i].astype(np.float64) / 255.0
        r_global = float(result.certificates.radius[i])
        distance = pgd_distance(fast, exact, x0, label, max(4 * r_global, 0.5))
        low, high = r_global, min(distance, 4 * max(r_global, 0.05))
        for _ in range(args.steps):
            middle = 0.5 * (low + high)
            deadline = time.perf_counter() + args.sample_budget
            try:
                proven = certifier.certify(x0, label, middle, deadline=deadline)[0]
            except LocalTimeout:
                proven = False
            if proven:
                low = middle
            else:
                high = middle
        rows.append((r_global, low, distance))
    cpu = time.process_time() - started
    table = np.array(rows)
    finite = np.isfinite(table[:, 2])
    report = {
        "model": str(args.model),
        "correct_samples": len(rows),
        "with_adversarial": int(finite.sum()),
        "median_global_over_adversarial": float(np.median(table[finite, 0] / table[finite, 2])),
        "median_refined_over_adversarial": float(np.median(table[finite, 1] / table[finite, 2])),
        "median_global_radius": float(np.median(table[:, 0])),
        "median_refined_radius": float(np.median(table[:, 1])),
        "median_adversarial_distance": float(np.median(table[finite, 2])),
        "improved_by_refinement": int(np.sum(table[:, 1] > table[:, 0])),
        # Must be 0: a proven radius beyond a real adversarial point would be unsound.
        "proven_beyond_adversarial": int(np.sum(table[:, 1] > table[:, 2])),
        "cpu_seconds": round(cpu, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
