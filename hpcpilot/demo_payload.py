"""The demo's payload: real numpy work over an input file, an output file and a job report.

Run by the pilot as ``python -m hpcpilot.demo_payload --input IN --output OUT``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def analyse(samples: np.ndarray) -> dict[str, float]:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    return {
        "mean": float(samples.mean()), "std": float(samples.std()),
        "peak_frequency_bin": int(spectrum[1:].argmax() + 1), "total_power": float(spectrum.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--fail", action="store_true", help="exit with code 3 after reading the input")
    args = parser.parse_args(argv)
    started = time.time()
    samples = np.frombuffer(open(args.input, "rb").read(), dtype="<f8")
    if args.fail:
        print(f"demo payload: asked to fail after reading {samples.size} samples", file=sys.stderr)
        return 3
    stats = analyse(samples)
    with open(args.output, "wb") as handle:
        np.save(handle, np.array(list(stats.values())), allow_pickle=False)
    report = {"exitCode": 0, "exitMsg": "OK", "cores": os.environ.get("ATHENA_PROC_NUMBER"),
              "executor": [{"name": "demo", "wallTime": time.time() - started, "stats": stats}]}
    with open("jobReport.json", "w") as handle:
        json.dump(report, handle)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
