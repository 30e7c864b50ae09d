"""Query-only verification of the four example models against their attacked copies and the other bundled models.

Usage: python benchmarks/query_study.py BENCH_DIR [--json]

BENCH_DIR is a finished ``critprint bench`` folder: its attacked copies
(BENCH_DIR/TASK/models/) are the suspects, and its BENCH_DIR/TASK/calibration.json
is the null sample. Each source is fingerprinted with the ``quick`` protocol,
as ``critprint register`` does, and every suspect is checked with
``critprint verify --query-only``'s code path. The calibration includes
pairs of the source with the other bundled models, so for those rows it is
not held out (the bench's ``query`` rows are).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from critprint import zoo
from critprint.api import fingerprint_model
from critprint.calibration import load_calibration
from critprint.models import load_model
from critprint.query import model_query
from critprint.verdict import verify_query

SOURCES = {"denoise": ("dncnn", "nafnet"), "sr": ("compact-x4", "span-x4")}
ATTACKS = ("prune", "quantize", "finetune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for task, sources in SOURCES.items():
        folder = arguments.bench_dir / task
        calibration = load_calibration(folder / "calibration.json")
        others = [entry["name"] for entry in calibration.references]
        for source in sources:
            record = fingerprint_model(f"zoo:{source}", "quick")
            suspects = {f"{source}+{attack}": folder / "models" / f"{source}+{attack}.safetensors" for attack in ATTACKS}
            suspects |= {name: zoo.model_path(name) for name in others if name != source}
            for label, path in suspects.items():
                handle = load_model(path)
                result = verify_query(model_query(handle, record.protocol), record, calibration, 0.01, source, label)
                rows.append({"task": task, "source": source, "suspect": label,
                             "expected": "derived" if "+" in label else "independent",
                             "q": result.q, "threshold": result.threshold, "verdict": result.verdict,
                             "p_empirical": result.p_empirical})
    if arguments.json:
        print(json.dumps(rows, indent=1))
        return
    print("| task | source | suspect | q | threshold | verdict | expected |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        mark = "" if row["verdict"] == row["expected"] else " **wrong**"
        print(f"| {row['task']} | {row['source']} | {row['suspect']} | {row['q']:.3g} | {row['threshold']:.3g} | "
              f"{row['verdict']}{mark} | {row['expected']} |")


if __name__ == "__main__":
    main()
