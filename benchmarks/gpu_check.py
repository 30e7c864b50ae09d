"""Throughput of critical-image extraction on a GPU, with and without autocast.

Usage:
    python benchmarks/gpu_check.py [--device cuda] [--models NAME ...] [--json]

For each model and for the default and ``paper`` protocols, runs the
extraction in float32, with bfloat16 autocast, and with bfloat16 autocast in
channels-last memory order, and reports iterations per second. For the
default protocol each variant runs in full, and the distance between its
features and the float32 features is reported as d / eta: below 1 means
the variant's fingerprint would be judged the same model. The paper
protocol is timed over ``--paper-iterations`` steps only. ``--compile``
adds a ``torch.compile`` variant for the models it names.

Designed to finish in under 5 minutes on one GPU; ``--device cpu
--iterations 5`` runs the same code on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

from critprint.decision import decide
from critprint.extraction import Runtime, extract_critical_image
from critprint.features import feature_vector
from critprint.models import load_model
from critprint.protocol import DEFAULT_PROTOCOL, Protocol, get_protocol

MODELS = (
    "dncnn", "nafnet", "swinir-dn", "safmn-dn", "plksr-dn", "compact-dn",
    "compact-x4", "span-x4", "esrgan-x4", "swinir-x4", "rcan-x4", "safmn-x4",
)
VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"autocast": "bfloat16"},
    "bfloat16-channels-last": {"autocast": "bfloat16", "channels_last": True},
}


def synchronise(device: str) -> None:
    """Wait for the device's queued work, so that wall time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run(name: str, protocol: Protocol, runtime: Runtime) -> tuple[float, torch.Tensor]:
    """Return the iterations per second of one extraction and its features."""
    handle = load_model(f"zoo:{name}")
    extract_critical_image(handle, protocol.replace(iterations=3), runtime=runtime)  # warm-up, compilation
    synchronise(runtime.device)
    start = time.perf_counter()
    result = extract_critical_image(handle, protocol, runtime=runtime)
    synchronise(runtime.device)
    seconds = time.perf_counter() - start
    return protocol.iterations / seconds, feature_vector(result.critical_image, protocol.features)


def check_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every variant of one model under both protocols."""
    handle = load_model(f"zoo:{name}")
    task = "sr" if handle.scale > 1 else "denoise"
    protocols = {
        DEFAULT_PROTOCOL: get_protocol(DEFAULT_PROTOCOL, task, scale=handle.scale),
        "paper": get_protocol("paper", task, scale=handle.scale).replace(iterations=args.paper_iterations),
    }
    if args.iterations:
        protocols = {key: value.replace(iterations=args.iterations) for key, value in protocols.items()}
    variants = dict(VARIANTS)
    if name in args.compile:
        variants["bfloat16-compiled"] = {"autocast": "bfloat16", "compile": True}
    rows = []
    for preset, protocol in protocols.items():
        reference: torch.Tensor | None = None
        for variant, settings in variants.items():
            rate, features = run(name, protocol, Runtime(device=args.device, **settings))
            if reference is None:
                reference = features
            decision = decide(reference, features, protocol.alpha, protocol.sigma_h)
            rows.append({
                "model": name, "protocol": preset, "size": protocol.size, "iterations": protocol.iterations,
                "variant": variant, "iterations_per_second": rate, "ratio_to_float32": decision.ratio,
            })
            print(f"{name:12s} {preset:7s} {variant:24s} {rate:8.1f} it/s  d/eta vs float32 {decision.ratio:.3f}",
                  file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="bundled model names")
    parser.add_argument("--paper-iterations", type=int, default=300, help="steps timed with the paper protocol")
    parser.add_argument("--iterations", type=int, default=0, help="override every protocol's steps (smoke test)")
    parser.add_argument("--compile", nargs="*", default=[], help="models to also run under torch.compile")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    start = time.perf_counter()
    device_name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else platform.processor()
    rows = [row for name in args.models for row in check_model(name, args)]
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": device_name or platform.machine(), "torch": torch.__version__,
        "seconds": time.perf_counter() - start, "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['date']}, {result['device']}, torch {result['torch']}, {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
