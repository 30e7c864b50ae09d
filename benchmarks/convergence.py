"""How verdicts change with the number of iterations and the learning-rate schedule.

Usage:
    python benchmarks/convergence.py --task denoise [--schedule constant|cosine]
        [--iterations N] [--checkpoints 100 200 ...] [--noise SIGMA] [--json]

Extracts every model of a task's model set with the ``quick`` protocol
(64 x 64) and reads the features at several checkpoints of one run. For a
constant learning rate, the image at step n of a long run is the image a
run of n iterations ends with, so one run of N iterations measures every
checkpoint. A cosine schedule depends on its length, so each of its
checkpoints is a run of its own. At each checkpoint it reports the smallest
d / eta between two different models (hard negatives included) and d / eta
between each source and its attacked copies (pruned, fine-tuned,
quantized): a protocol is good when the first is large and the second
small. Attacked copies are made once and kept in ``--cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from critprint.attacks import RestorationTask, run_attack
from critprint.decision import feature_distance, threshold
from critprint.extraction import extract_critical_image
from critprint.features import feature_vector
from critprint.models import load_model, read_state_dict, save_state_dict
from critprint.protocol import Protocol, get_protocol

MODELS = {
    "denoise": ("dncnn", "compact-dn", "nafnet", "plksr-dn", "safmn-dn", "dncnn-h", "dncnn-h-seed2", "dncnn-h-photos2"),
    "sr": ("compact-x4", "rcan-x4", "swinir-x4", "span-x4", "compact-x4-h", "compact-x4-h-seed2", "compact-x4-h-photos2"),
}
ATTACKED = {
    "denoise": (("dncnn", "prune"), ("dncnn", "finetune"), ("compact-dn", "prune"), ("plksr-dn", "quantize"),
                ("nafnet", "finetune")),
    "sr": (("compact-x4", "prune"), ("compact-x4", "finetune"), ("rcan-x4", "prune"), ("span-x4", "quantize")),
}


def attacked_copy(task: str, source: str, attack: str, cache: Path) -> str:
    """Return the path of a source's attacked copy, making it on first use."""
    path = cache / f"{source}+{attack}.safetensors"
    if not path.exists():
        restoration = RestorationTask(task=task, scale=4 if task == "sr" else 1)
        attacked, outcome = run_attack(attack, read_state_dict(f"zoo:{source}"), restoration)
        print(f"{source}+{attack}: PSNR change {outcome.psnr_change_db:+.2f} dB", file=sys.stderr, flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        save_state_dict(attacked, path)
    return str(path)


def features_at(spec: str, protocol: Protocol, checkpoints: list[int]) -> dict[int, torch.Tensor]:
    """Return the features of the image at each checkpoint."""
    handle = load_model(spec)
    pending = set(checkpoints)
    found: dict[int, torch.Tensor] = {}

    def observe(step: int, image: torch.Tensor) -> None:
        if step in pending:
            found[step] = feature_vector(image[0].clamp(0.0, 1.0).cpu(), protocol.features)

    if protocol.schedule == "constant":
        extract_critical_image(handle, protocol.replace(iterations=max(checkpoints)), observer=observe)
        return found
    for steps in checkpoints:
        pending = {steps}
        extract_critical_image(handle, protocol.replace(iterations=steps), observer=observe)
    return found


def summarise(features: dict[str, dict[int, torch.Tensor]], task: str, step: int) -> dict[str, Any]:
    """Return the smallest negative ratio and every positive ratio at one checkpoint."""
    eta = threshold(next(iter(features.values()))[step].numel())
    negatives = sorted(
        (feature_distance(features[a][step], features[b][step]) / eta, a, b)
        for a, b in combinations(MODELS[task], 2)
    )
    positives = {
        f"{source}+{attack}": feature_distance(features[source][step], features[f"{source}+{attack}"][step]) / eta
        for source, attack in ATTACKED[task]
    }
    return {
        "step": step,
        "min_negative_ratio": negatives[0][0],
        "closest_pair": list(negatives[0][1:]),
        "false_positives": sum(ratio < 1 for ratio, _, _ in negatives),
        "negative_pairs": len(negatives),
        "positive_ratios": positives,
        "max_positive_ratio": max(positives.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(MODELS), default="denoise")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[100, 200, 300, 500, 1000, 2000, 3000])
    parser.add_argument("--noise", type=float, default=None, help="override the degradation's noise_sigma")
    parser.add_argument("--cache", type=Path, default=Path("convergence-models"), help="folder of attacked copies")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    checkpoints = sorted(args.checkpoints)
    start = time.perf_counter()
    specs = {name: f"zoo:{name}" for name in MODELS[args.task]}
    specs |= {f"{source}+{attack}": attacked_copy(args.task, source, attack, args.cache)
              for source, attack in ATTACKED[args.task]}
    features = {}
    for label, spec in specs.items():
        handle = load_model(spec)
        protocol = get_protocol("quick", args.task, scale=handle.scale).replace(schedule=args.schedule)
        if args.noise is not None:
            protocol = protocol.replace(noise_sigma=args.noise)
        features[label] = features_at(spec, protocol, checkpoints)
        print(f"{label}: done", file=sys.stderr, flush=True)

    rows = [summarise(features, args.task, step) for step in checkpoints]
    result = {"task": args.task, "schedule": args.schedule, "noise_sigma": args.noise,
              "seconds": time.perf_counter() - start, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for row in rows:
        positives = " ".join(f"{name} {ratio:.2f}" for name, ratio in row["positive_ratios"].items())
        print(f"{args.schedule} {row['step']:5d}: smallest negative {row['min_negative_ratio']:6.2f} "
              f"({' vs '.join(row['closest_pair'])}), false positives {row['false_positives']}/"
              f"{row['negative_pairs']}; positives {positives}")


if __name__ == "__main__":
    main()
