"""Measure ``critprint scan`` throughput: models per minute with 1 and 2 local workers and with Ray.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/scan.py [--models N] [--protocol quick|paper] [--json]

Registers the bundled denoisers ``dncnn`` and ``nafnet`` in a scratch
registry. Then identifies N bundled DnCNN-family denoisers against them, one
extraction each and all of the same cost, with each executor in turn: a local
pool of 1 worker, one of 2 workers, and a local Ray instance with 2 CPUs. Each worker
runs torch with one thread. The rate counts the whole scan, worker or Ray
start-up included, as a user sees it; ``model_seconds`` is the mean time of
one model inside its worker, from which the rate of more workers is
predicted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from critprint.api import register
from critprint.registry import Registry
from critprint.scan import ScanItem, ScanJob, make_executor, run_scan

SUSPECTS = (
    "dncnn-h", "dncnn-h-photos2", "dncnn-h-photos3", "dncnn-h-photos4",
    "dncnn-h-seed2", "dncnn-h-seed3", "dncnn-h-seed4", "dncnn",
)


def time_scan(executor: str, workers: int, items: list[ScanItem], registry: Path, out: Path) -> dict[str, Any]:
    """Return the throughput of one identify scan of ``items``."""
    job = ScanJob("identify", registry=str(registry), threads=1)
    start = time.perf_counter()
    summary = run_scan(items, job, make_executor(executor, workers), out)
    seconds = time.perf_counter() - start
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "executor": executor,
        "workers": workers,
        "models": summary.ran,
        "failed": summary.failed,
        "seconds": seconds,
        "models_per_minute": 60.0 * summary.ran / seconds,
        "model_seconds": statistics.mean(line["seconds"] for line in lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=len(SUSPECTS), help=f"suspects to scan, at most {len(SUSPECTS)}")
    parser.add_argument("--protocol", default="quick", choices=["quick", "paper"], help="protocol of the sources")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    arguments = parser.parse_args()

    items = [ScanItem(name, f"zoo:{name}", "denoise") for name in SUSPECTS[: arguments.models]]
    runs = []
    with tempfile.TemporaryDirectory(prefix="critprint-scan-bench-") as folder:
        registry = Path(folder) / "registry"
        for source in ("dncnn", "nafnet"):
            register(f"zoo:{source}", f"{source}-src", Registry(registry), protocol=arguments.protocol)
        for index, (executor, workers) in enumerate((("local", 1), ("local", 2), ("ray", 2))):
            runs.append(time_scan(executor, workers, items, registry, Path(folder) / f"run{index}.jsonl"))
    result = {
        "protocol": arguments.protocol,
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.platform(),
        "runs": runs,
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
        return
    for run in runs:
        print(f"{run['executor']:5} x{run['workers']}: {run['models']} models in {run['seconds']:.1f} s, "
              f"{run['models_per_minute']:.2f} models/min, {run['model_seconds']:.1f} s per model in a worker")


if __name__ == "__main__":
    main()
