"""The end-to-end demonstration behind ``critprint demo``.

It registers a bundled denoiser in a scratch registry, makes a copy with 10 %
of its weights pruned, and verifies both that copy and an independently
trained bundled denoiser against the registered fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from critprint.api import Verification, register, verify_registered
from critprint.attacks import prune_magnitude
from critprint.extraction import ProgressCallback
from critprint.models import read_state_dict, save_state_dict
from critprint.registry import Registry, RegistryEntry

__all__ = ["DemoResult", "run_demo", "DEMO_SOURCE", "DEMO_INDEPENDENT", "DEMO_PRUNE_FRACTION"]

DEMO_SOURCE = "zoo:dncnn"
DEMO_INDEPENDENT = "zoo:nafnet"
DEMO_PRUNE_FRACTION = 0.10

ProgressFactory = Callable[[str], ProgressCallback | None]


@dataclass(frozen=True)
class DemoResult:
    """The registered source and the verifications, pruned copy first.

    ``labels`` names each verification's suspect for people.
    """

    source: RegistryEntry
    verifications: list[Verification] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_demo(workdir: str | Path, protocol: str = "quick", progress: ProgressFactory | None = None) -> DemoResult:
    """Run the demonstration in ``workdir`` (registry and pruned model go there).

    Args:
        workdir: A writable scratch folder.
        protocol: The protocol preset to register the source with.
        progress: ``progress(label)`` returns a progress callback for one
            extraction, or None.
    """
    start = time.perf_counter()
    folder = Path(workdir)
    registry = Registry(folder / "registry")

    def callback(label: str) -> ProgressCallback | None:
        return progress(label) if progress is not None else None

    source = register(DEMO_SOURCE, "dncnn", registry, protocol=protocol, progress=callback(f"register {DEMO_SOURCE}"))
    pruned_path = folder / f"dncnn-pruned-{round(DEMO_PRUNE_FRACTION * 100)}.safetensors"
    save_state_dict(prune_magnitude(read_state_dict(DEMO_SOURCE), DEMO_PRUNE_FRACTION), pruned_path)

    verifications = [
        verify_registered(str(pruned_path), source.name, registry, callback("verify pruned copy")),
        verify_registered(DEMO_INDEPENDENT, source.name, registry, callback(f"verify {DEMO_INDEPENDENT}")),
    ]
    labels = [f"{DEMO_SOURCE} pruned {round(DEMO_PRUNE_FRACTION * 100)} %", f"{DEMO_INDEPENDENT} (independent)"]
    return DemoResult(source=source, verifications=verifications, labels=labels, seconds=time.perf_counter() - start)
