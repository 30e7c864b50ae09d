"""Time ``critprint demo`` and each bundled model's extraction.

Usage:
    python benchmarks/demo.py [--repeat N] [--protocol quick|paper] [--json]

Prints the wall-clock time of the whole demonstration (registration, pruning
and two verifications) and of one extraction per bundled model, with the
machine's CPU count and torch thread count, so the numbers can be recorded in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from critprint import zoo
from critprint.api import fingerprint_model
from critprint.demo import run_demo


def time_demo(repeat: int, protocol: str) -> list[float]:
    """Return the wall-clock seconds of ``repeat`` demonstrations."""
    seconds = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            run_demo(workdir, protocol)
            seconds.append(time.perf_counter() - start)
    return seconds


def time_extractions(protocol: str) -> dict[str, float]:
    """Return the extraction seconds of each bundled model."""
    return {
        entry.name: fingerprint_model(f"zoo:{entry.name}", protocol).seconds
        for entry in zoo.list_models()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="number of demonstrations to time")
    parser.add_argument("--protocol", default="quick", choices=["quick", "paper"], help="protocol preset")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    arguments = parser.parse_args()

    demo_seconds = time_demo(arguments.repeat, arguments.protocol)
    result = {
        "protocol": arguments.protocol,
        "demo_seconds": demo_seconds,
        "demo_median_seconds": statistics.median(demo_seconds),
        "extraction_seconds": time_extractions(arguments.protocol),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    print(f"demo ({arguments.protocol}): median {result['demo_median_seconds']:.1f} s over {arguments.repeat} runs")
    for name, seconds in result["extraction_seconds"].items():
        print(f"  extraction {name}: {seconds:.1f} s")
    print(f"{result['cpu_count']} CPUs, {result['torch_threads']} torch threads, torch {result['torch']}")


if __name__ == "__main__":
    main()
