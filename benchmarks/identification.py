"""Time identification against a registry of many synthetic fingerprints.

Used by ``benchmarks/extraction.py``; run alone as
``python benchmarks/identification.py --registry-size 100000 [--json]``.

The fingerprints are synthetic: random feature vectors (each histogram
sums to 1, as real ones do) with 8 x 8 critical images, all under one
denoising protocol of one step on a 16 x 16 image, so that the suspect's
own extraction takes milliseconds and the measured time is that of
ranking the registry. The registry is built once in a temporary folder,
in memory (/dev/shm) where the machine has it, because the benchmark
measures identification, not the disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from critprint import api
from critprint.fingerprint import Fingerprint, ModelIdentity, now_utc
from critprint.models import load_model
from critprint.protocol import Protocol
from critprint.registry import Registry

PROTOCOL = Protocol(name="synthetic", task="denoise", size=16, iterations=1)
SUSPECT = "zoo:dncnn"


def synthetic_fingerprint(index: int, generator: torch.Generator) -> Fingerprint:
    """Return a fingerprint with random features shaped like real ones."""
    colour = torch.rand(12, generator=generator, dtype=torch.float64)
    texture = torch.rand(18, generator=generator, dtype=torch.float64)
    features = torch.cat([colour / colour.sum() * 3, texture / texture.sum()])
    return Fingerprint(
        critical_image=torch.rand(3, 8, 8, generator=generator),
        features=features,
        protocol=PROTOCOL,
        model=ModelIdentity(source=f"synthetic-{index}", sha256=f"{index:064x}", format="spandrel",
                            architecture="DnCNN", input_channels=3, output_channels=3, scale=1),
        created_at=now_utc(),
    )


def build_registry(folder: Path, size: int) -> float:
    """Register ``size`` synthetic fingerprints; return the seconds it took."""
    registry = Registry(folder)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for index in range(size):
        registry.add(f"synthetic-{index:06d}", synthetic_fingerprint(index, generator))
        if (index + 1) % 10_000 == 0:
            print(f"registered {index + 1} of {size}", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def measure_identification(size: int, repeat: int = 3) -> dict[str, Any]:
    """Build a registry of ``size`` synthetic fingerprints and time ``identify`` on it."""
    memory = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="critprint-identify-", dir=memory if memory.is_dir() else None) as workdir:
        folder = Path(workdir) / "registry"
        build_seconds = build_registry(folder, size)
        registry = Registry(folder)
        suspect = load_model(SUSPECT)
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            results = api.identify(suspect, registry, top=10)
            seconds.append(time.perf_counter() - start)
        full_start = time.perf_counter()
        everything = api.identify(suspect, registry)
        full_seconds = time.perf_counter() - full_start
    return {
        "fingerprints": size,
        "register_seconds": build_seconds,
        "identify_top10_seconds": sorted(seconds),
        "identify_all_seconds": full_seconds,
        "results_all": len(everything),
        "closest": results[0].source if results else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry-size", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = measure_identification(args.registry_size)
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
