"""Measure the cost of critical-image extraction against a bare PyTorch loop.

Usage:
    python benchmarks/extraction.py [--models NAME ...] [--threads N] [--json]

Reports, in one run, with one thread count and the same inputs:

* ``overhead``: seconds per iteration of a bare loop written directly in
  PyTorch (forward, backward to the input, Adam step, clamp) and of
  critprint's extraction with the same settings, and ``overhead_ratio`` =
  critprint / bare. The two alternate over several rounds and the medians
  are compared, so load from other processes falls on both alike. Besides
  the bundled models, a paper-size model is measured: a 17-layer 64-channel
  DnCNN at 128 x 128.
* ``fingerprint``: seconds and memory to a fingerprint with the ``paper``
  protocol and with the default protocol, and ``speedup`` = paper seconds /
  default seconds. Each runs in its own process; the memory is the peak
  resident memory sampled during the fingerprint minus the resident memory
  before it. The paper protocol's 5000 iterations are
  extrapolated from ``--paper-sample`` iterations unless the model is named
  in ``--paper-full``.
* ``identify``: seconds to compare a suspect's features with a registry of
  ``--registry-size`` synthetic fingerprints (the suspect's extraction
  excluded, since it does not grow with the registry).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from critprint.api import fingerprint_model
from critprint.extraction import extract_critical_image
from critprint.models import ModelHandle, load_model, save_state_dict
from critprint.protocol import DEFAULT_PROTOCOL, Protocol, get_protocol

DEFAULT_MODELS = (
    "dncnn", "nafnet", "swinir-dn", "safmn-dn", "plksr-dn", "compact-dn",
    "compact-x4", "span-x4", "esrgan-x4", "swinir-x4", "rcan-x4", "safmn-x4",
)
PAPER_SIZE_MODEL = "dncnn17-64"
"""A DnCNN of the size the paper's denoisers have: 17 layers of 64 channels."""


def paper_size_model(folder: Path) -> str:
    """Write a randomly initialised 17-layer 64-channel DnCNN and return its path."""
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(0)
    network = DnCNN(in_nc=3, out_nc=3, nc=64, nb=17, act_mode="BR")
    path = folder / f"{PAPER_SIZE_MODEL}.safetensors"
    save_state_dict(network.state_dict(), path)
    return str(path)


def model_spec(name: str, folder: Path) -> str:
    """Return the load_model spec of a benchmark model name."""
    return paper_size_model(folder) if name == PAPER_SIZE_MODEL else f"zoo:{name}"


def protocol_for(handle: ModelHandle, name: str, preset: str) -> Protocol:
    """Return the preset for a model; the paper-size model always gets 128 x 128."""
    task = "sr" if handle.scale > 1 else "denoise"
    protocol = get_protocol(preset, task, scale=handle.scale)
    return protocol.replace(size=128) if name == PAPER_SIZE_MODEL else protocol


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, written out as a user of PyTorch would."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().sum() + (image[..., :, 1:] - image[..., :, :-1]).abs().sum()


def bare_loop(handle: ModelHandle, protocol: Protocol, iterations: int) -> float:
    """Return the seconds per iteration of a plain PyTorch extraction loop.

    The loop does only what the method needs: the seeded draws, the task's
    degradation (noise, or average pooling for super-resolution), the
    forward pass, the objective, the backward pass to the input, the Adam
    step with the protocol's learning-rate schedule, and the clamp to [0, 1].
    """
    module = handle.module
    generator = torch.Generator().manual_seed(protocol.seed)
    shape = (1, handle.input_channels, protocol.size, protocol.size)
    image = (torch.randn(shape, generator=generator) * protocol.beta).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=protocol.learning_rate)
    timed = protocol.replace(iterations=iterations)  # the schedule spans the timed run, as in an extraction
    start = time.perf_counter()
    for step in range(1, iterations + 1):
        if timed.schedule != "constant":
            optimiser.param_groups[0]["lr"] = timed.learning_rate_at(step)
        degraded = F.avg_pool2d(image, protocol.scale) if protocol.scale > 1 else image
        if protocol.noise_sigma > 0:
            degraded = degraded + torch.randn(degraded.shape, generator=generator) * protocol.noise_sigma
        restored = module(degraded)
        loss = (image - restored).pow(2).sum() - protocol.tv_weight * total_variation(image)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            image.clamp_(0.0, 1.0)
    return (time.perf_counter() - start) / iterations


def critprint_loop(handle: ModelHandle, protocol: Protocol, iterations: int) -> float:
    """Return the seconds per iteration of critprint's extraction, set-up included."""
    start = time.perf_counter()
    extract_critical_image(handle, protocol.replace(iterations=iterations))
    return (time.perf_counter() - start) / iterations


def measure_overhead(name: str, folder: Path, iterations: int, rounds: int) -> dict[str, Any]:
    """Alternate the bare and critprint loops and compare their median times."""
    handle = load_model(model_spec(name, folder))
    protocol = protocol_for(handle, name, DEFAULT_PROTOCOL)
    bare_loop(handle, protocol, 3)  # warm-up: first calls allocate and pick kernels
    critprint_loop(handle, protocol, 3)
    bare: list[float] = []
    ours: list[float] = []
    for _ in range(rounds):
        bare.append(bare_loop(handle, protocol, iterations))
        ours.append(critprint_loop(handle, protocol, iterations))
    bare_median, ours_median = statistics.median(bare), statistics.median(ours)
    return {
        "model": name,
        "size": protocol.size,
        "bare_ms_per_iteration": bare_median * 1000,
        "critprint_ms_per_iteration": ours_median * 1000,
        "overhead_ratio": ours_median / bare_median,
    }


def resident_mb() -> float:
    """Return this process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySampler:
    """Sample the resident memory every few milliseconds in a thread and keep the largest value."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = resident_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, resident_mb())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_mb())


def child_fingerprint(spec: str, name: str, preset: str, iterations: int | None) -> dict[str, Any]:
    """Fingerprint one model in this process and report its time and memory (run in a child).

    The process's high-water mark (``ru_maxrss``) is dominated by importing
    torch and loading the model, so the extraction's own memory is the peak
    resident memory sampled during it minus the resident memory just before.
    """
    handle = load_model(spec)
    protocol = protocol_for(handle, name, preset)
    if iterations is not None:
        protocol = protocol.replace(iterations=iterations)
    before_mb = resident_mb()
    start = time.perf_counter()
    with MemorySampler() as sampler:
        fingerprint_model(handle, protocol)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "iterations": protocol.iterations, "loaded_rss_mb": before_mb,
            "extraction_peak_rss_mb": sampler.peak,
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(spec: str, name: str, preset: str, iterations: int | None, threads: int) -> dict[str, Any]:
    """Run :func:`child_fingerprint` in a fresh interpreter and return its result."""
    command = [sys.executable, __file__, "--child", spec, name, preset, str(iterations or 0), "--threads", str(threads)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_fingerprint(name: str, folder: Path, sample: int, full: bool, threads: int) -> dict[str, Any]:
    """Time a fingerprint with the paper and default protocols, each in its own process."""
    spec = model_spec(name, folder)
    default = run_child(spec, name, DEFAULT_PROTOCOL, None, threads)
    paper = run_child(spec, name, "paper", None if full else sample, threads)
    paper_iterations = get_protocol("paper", "denoise").iterations
    paper_seconds = paper["seconds"] * paper_iterations / paper["iterations"]
    return {
        "model": name,
        "default_protocol": DEFAULT_PROTOCOL,
        "default_seconds": default["seconds"],
        "default_process_peak_rss_mb": default["process_peak_rss_mb"],
        "default_extraction_mb": default["extraction_peak_rss_mb"] - default["loaded_rss_mb"],
        "paper_seconds": paper_seconds,
        "paper_extrapolated_from_iterations": None if full else paper["iterations"],
        "paper_process_peak_rss_mb": paper["process_peak_rss_mb"],
        "paper_extraction_mb": paper["extraction_peak_rss_mb"] - paper["loaded_rss_mb"],
        "speedup": paper_seconds / default["seconds"],
    }


def timed(label: str, function: Callable[[], Any]) -> Any:
    """Run ``function`` and log its duration on standard error."""
    start = time.perf_counter()
    result = function()
    print(f"{label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[*DEFAULT_MODELS, PAPER_SIZE_MODEL],
                        help=f"zoo names, or {PAPER_SIZE_MODEL} for the paper-size DnCNN")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per overhead round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating overhead rounds per model")
    parser.add_argument("--paper-sample", type=int, default=100,
                        help="iterations the paper protocol's time is extrapolated from")
    parser.add_argument("--paper-full", nargs="*", default=[], help="models whose paper fingerprint runs in full")
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "fingerprint", "identify"])
    parser.add_argument("--registry-size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.child:
        spec, name, preset, iterations = args.child
        print(json.dumps(child_fingerprint(spec, name, preset, int(iterations) or None)))
        return

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "default_protocol": DEFAULT_PROTOCOL,
    }
    with tempfile.TemporaryDirectory(prefix="critprint-bench-") as workdir:
        folder = Path(workdir)
        if "overhead" not in args.skip:
            result["overhead"] = [
                timed(f"overhead {name}", lambda name=name: measure_overhead(name, folder, args.iterations, args.rounds))
                for name in args.models
            ]
        if "fingerprint" not in args.skip:
            result["fingerprint"] = [
                timed(f"fingerprint {name}", lambda name=name: measure_fingerprint(
                    name, folder, args.paper_sample, name in args.paper_full, args.threads))
                for name in args.models
            ]
    if "identify" not in args.skip:
        from identification import measure_identification

        result["identify"] = timed("identify", lambda: measure_identification(args.registry_size))

    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_tables(result)


def print_tables(result: dict[str, Any]) -> None:
    """Print the result as plain text tables."""
    print(f"{result['date']}, {result['machine']}, torch {result['torch']}, {result['threads']} threads")
    for row in result.get("overhead", []):
        print(f"overhead {row['model']:12s} {row['size']:4d} px  bare {row['bare_ms_per_iteration']:8.2f} ms  "
              f"critprint {row['critprint_ms_per_iteration']:8.2f} ms  ratio {row['overhead_ratio']:.3f}")
    for row in result.get("fingerprint", []):
        extrapolated = row["paper_extrapolated_from_iterations"]
        note = f" (from {extrapolated} it.)" if extrapolated else ""
        print(f"fingerprint {row['model']:12s} {row['default_protocol']} {row['default_seconds']:7.1f} s "
              f"+{row['default_extraction_mb']:5.1f} MB   paper {row['paper_seconds']:8.1f} s{note} "
              f"+{row['paper_extraction_mb']:5.1f} MB   speedup {row['speedup']:.1f}")
    if "identify" in result:
        print("identify", json.dumps(result["identify"]))


if __name__ == "__main__":
    main()
