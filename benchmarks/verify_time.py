"""Time of `lipcert verify` on a CIFAR-sized LipNet (target: under 5 s on 2 cores).

Runs the command end to end in a fresh process (Python start-up and imports included),
several times, and reports the median; then the in-process split between loading and
bounding. Usage: python benchmarks/verify_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_lipnet import cifar_lipnet, export


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = export(cifar_lipnet(), Path(folder) / "cifar_lipnet.onnx")
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "lipcert", "verify", str(model), "--json"],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - started)
            if done.returncode not in (0, 1):
                raise SystemExit(f"lipcert verify failed: {done.stderr}")
        from lipcert.bounds.compose import analyse
        from lipcert.frontends import load_model

        started = time.perf_counter()
        loaded = load_model(model)
        loading = time.perf_counter() - started
        started = time.perf_counter()
        analysis = analyse(loaded.graph)
        bounding = time.perf_counter() - started
    print(
        "lipcert verify on a CIFAR-sized LipNet (8 convs up to 128 channels, 3x32x32), "
        f"{args.runs} runs"
    )
    print(
        f"  end to end, fresh process: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f})"
    )
    print(
        f"  in process: load {loading:.2f} s, bounds {bounding:.2f} s; "
        f"bound {analysis.spec.lipschitz_bound:.4f}"
    )


if __name__ == "__main__":
    main()
