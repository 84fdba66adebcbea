"""Time of `lipcert verify` on a CIFAR-sized LipNet (target: under 5 s on 2 cores).

Runs the command end to end in a fresh process (Python start-up and imports included),
several times, and reports the median; then the in-process split between loading and
bounding. Usage: python benchmarks/verify_time.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from block_verify import time_verify
from cifar_lipnet import cifar_lipnet, export


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = export(cifar_lipnet(), Path(folder) / "cifar_lipnet.onnx")
        times, loading, bounding, analysis = time_verify(model, args.runs)
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
