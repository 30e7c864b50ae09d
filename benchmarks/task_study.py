"""Check the degradations of the newer tasks on the bundled denoisers.

For each source model and each task (``deblur``, ``lowlight``, ``derain``,
``jpeg`` by default), extract its fingerprint with the ``quick`` preset of that
task. Then verify its 5 % and 10 % magnitude-pruned copies and every other
bundled model of the source's task against it. No bundled model is trained
for these tasks, so this checks the degradations, not models made for them.

Usage:
    python benchmarks/task_study.py [--json] [--sources dncnn] [--tasks deblur,jpeg]

Prints d / eta for each pair; below 1 means the pair is judged derived.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from critprint import zoo
from critprint.api import fingerprint_model, verify
from critprint.attacks import prune_magnitude
from critprint.models import load_model, read_state_dict, save_state_dict
from critprint.protocol import get_protocol

PRUNE_FRACTIONS = (0.05, 0.10)


def study(source: str, tasks: list[str], workdir: Path) -> list[dict[str, object]]:
    """Return one row per (task, suspect) for a bundled source model."""
    entry = zoo.get_entry(source)
    suspects: list[tuple[str, str]] = []
    for fraction in PRUNE_FRACTIONS:
        path = workdir / f"{source}-pruned-{round(fraction * 100)}.safetensors"
        save_state_dict(prune_magnitude(read_state_dict(f"zoo:{source}"), fraction), path)
        suspects.append((f"{source} pruned {round(fraction * 100)} %", str(path)))
    suspects += [(other.name, f"zoo:{other.name}") for other in zoo.list_models()
                 if other.task == entry.task and other.name != source]

    handle = load_model(f"zoo:{source}")
    rows = []
    for task in tasks:
        fingerprint = fingerprint_model(handle, get_protocol("quick", task, scale=handle.scale))  # type: ignore[arg-type]
        for label, path in suspects:
            result = verify(path, fingerprint, source)
            rows.append({"source": source, "task": task, "suspect": label,
                         "ratio": result.ratio, "verdict": result.verdict})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="dncnn", help="comma-separated bundled source models")
    parser.add_argument("--tasks", default="deblur,lowlight,derain,jpeg", help="comma-separated tasks")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    arguments = parser.parse_args()

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for source in arguments.sources.split(","):
            rows += study(source, arguments.tasks.split(","), Path(workdir))
    if arguments.json:
        print(json.dumps(rows, indent=2))
        return
    print("| source | task | suspect | d/eta | verdict |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['source']} | {row['task']} | {row['suspect']} | {row['ratio']:.3f} | {row['verdict']} |")


if __name__ == "__main__":
    main()
