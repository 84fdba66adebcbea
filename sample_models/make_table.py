"""Measure every sample model with lipcert itself and write the table of sample_models/README.md.

For each model: `lipcert verify` (the guaranteed Lipschitz bounds) and `lipcert certify` on
the full 10,000-image Fashion-MNIST test set (Debian's dataset-fashion-mnist, or --data-dir),
once with float32 margins (the default) and once with --margins float64. The binary model is
certified on the 2,000 test images of its two classes, the CIFAR-10-shaped model on the test
set drawn as 3x32x32 (zero-padded, channels replicated), as it was trained.

Usage: python sample_models/make_table.py [--data-dir DIR] [--write]
(--write replaces the table between the markers in sample_models/README.md.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lipcert.datasets import load_dataset

HERE = Path(__file__).resolve().parent
EPS = "36/255,72/255,108/255,1"
START, END = "<!-- lipcert-table:start -->", "<!-- lipcert-table:end -->"
MULTICLASS = [
    ("fmnist_ce_tau128", "tau-CE, tau = 128"),
    ("fmnist_ce_tau32", "tau-CE, tau = 32"),
    ("fmnist_ce_tau8", "tau-CE, tau = 8"),
    ("fmnist_ce_tau2", "tau-CE, tau = 2"),
    ("fmnist_hkr_alpha0p98_m0p5", "HKR, alpha = 0.98, margin 0.5"),
    ("fmnist_hkr_alpha0p98_m2", "HKR, alpha = 0.98, margin 2"),
]


def lipcert(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "lipcert", *args, "--json"], capture_output=True, text=True
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"lipcert {' '.join(args)} failed: {done.stderr}")
    return json.loads(done.stdout)


def datasets(folder: Path, data_dir: str | None) -> tuple[Path, Path]:
    """.npz files of the full test set for the binary and the CIFAR-shaped models."""
    test = load_dataset("fashion-mnist", split="test", data_dir=data_dir)
    binary = np.isin(test.labels, (7, 9))
    np.savez(
        folder / "fmnist_binary_test.npz",
        x=test.images[binary],
        y=(test.labels[binary] == 9).astype(np.int64),
    )
    padded = np.pad(test.images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    np.savez(folder / "fmnist_test_3x32x32.npz", x=np.repeat(padded, 3, axis=1), y=test.labels)
    return folder / "fmnist_binary_test.npz", folder / "fmnist_test_3x32x32.npz"


def row(name: str, loss: str, dataset: list[str]) -> str:
    model = str(HERE / f"{name}.onnx")
    bounds = lipcert("verify", model, "--expect", "1000")
    fast = lipcert("certify", model, *dataset, "--eps", EPS, "--quiet")
    tight = lipcert("certify", model, *dataset, "--eps", EPS, "--quiet", "--margins", "float64")
    pairwise = bounds["pairwise_bounds"]
    largest_pair = max(max(r) for r in pairwise) if pairwise else None
    certified = " | ".join(f"{c['value']:.3f}" for c in tight["certified_accuracy"])
    return (
        f"| `{name}` | {loss} | {tight['n']} | {tight['accuracy']:.4f} | {certified} | "
        f"{tight['mcr']:.4f} | "
        f"{fast['mcr']:.4f} | {bounds['lipschitz_bound']:.4f} | "
        f"{'-' if largest_pair is None else f'{largest_pair:.4f}'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        binary, cifar_shaped = datasets(Path(folder), args.data_dir)
        multiclass_args = ["--dataset", "fashion-mnist"] + (
            ["--data-dir", args.data_dir] if args.data_dir else []
        )
        lines = [
            "| model | loss | n | clean accuracy | cert. acc. 36/255 | 72/255 | 108/255 | 1 "
            "| MCR | MCR (float32 margins) | L (logit vector) | max K_ij |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, loss in MULTICLASS:
            lines.append(row(name, loss, multiclass_args))
        lines.append(
            row(
                "fmnist_binary_hkr_alpha0p98_m1",
                "HKR (binary), margin 1",
                ["--dataset", str(binary)],
            )
        )
        lines.append(
            row("cifar10_shaped_ce_tau16", "tau-CE, tau = 16", ["--dataset", str(cifar_shaped)])
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        readme = HERE / "README.md"
        text = readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"markers {START} / {END} not found in {readme}")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main()
