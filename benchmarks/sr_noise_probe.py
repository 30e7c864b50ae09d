"""Measure x4 SR critprint with noise on the low-resolution input, on a finished benchmark's models.

The noise-free SR degradation lets independently trained SR models look
derived (docs/benchmarks.md). This script fingerprints the `full` plan's SR
models and the attacked copies that `critprint bench` cached in BENCH_DIR with
the quick protocol plus noise of SIGMA on the pooled input, and prints the
attack success counts and false positives as JSON.

    python benchmarks/sr_noise_probe.py BENCH_DIR SIGMA
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from critprint import zoo
from critprint.api import fingerprint_model
from critprint.decision import decide
from critprint.evaluation import get_plan
from critprint.protocol import get_protocol


def main() -> None:
    """Fingerprint every SR model and attacked copy and print the summary."""
    bench_dir, sigma = Path(sys.argv[1]), float(sys.argv[2])
    plan = get_plan("full", ("sr",))
    task = plan.tasks[0]
    protocol = get_protocol("quick", "sr", scale=4).replace(name="custom", noise_sigma=sigma)
    models = {name: zoo.model_path(name) for name in task.references}
    for source in task.sources:
        for attack in plan.attacks:
            models[f"{source}+{attack}"] = bench_dir / "sr" / "models" / f"{source}+{attack}.safetensors"

    start = time.perf_counter()
    features = {name: fingerprint_model(str(path), protocol).features for name, path in models.items()}

    def ratio(source: str, suspect: str) -> float:
        return decide(features[source], features[suspect], protocol.alpha, protocol.sigma_h).ratio

    sources = set(task.sources)
    negatives = [(a, b, ratio(a, b)) for a in task.references for b in task.references if a != b]
    print(json.dumps({
        "sigma": sigma,
        "seconds": round(time.perf_counter() - start, 1),
        "success": {attack: sum(ratio(s, f"{s}+{attack}") < 1 for s in task.sources) for attack in plan.attacks},
        "false_positives": sum(value < 1 for _, _, value in negatives),
        "negatives": len(negatives),
        "min_source_ratio": min(value for a, b, value in negatives if a in sources and b in sources),
        "family_false_positives": sum(value < 1 for a, b, value in negatives if a not in sources and b not in sources),
    }))


if __name__ == "__main__":
    main()
