"""Histogram features of the model's output and residual instead of the critical image, scored as the study does.

Usage: python benchmarks/residual_features.py STUDY_DIR TASK SETTING [--quick] [--iterations N] [--json]

STUDY_DIR is the folder of a finished ``critprint bench --study protocol``
run and SETTING one of its settings (such as the task's ``tuned`` one). Each
cached fingerprint already contains the model's 8-bit output O on probe 0,
the degraded critical image (see ``critprint.query``). For every model this
script forms the setting's features from several images. They are X, the
critical image (as the study does), O, and the residual O - X shifted to 0.5
and scaled by 1, 4 or 16. Two more variants put X beside O and X beside the
residual scaled by 4. Each
variant is scored on the study's pairs: AUC, TPR at 1 % FPR and the counts
under d < eta, with eta recomputed for its length. No model is run when the
study's cache is complete. ``--quick`` and ``--iterations`` select the plan
as they do for ``critprint bench``; they must match the study's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from critprint.decision import feature_distance, threshold
from critprint.evaluation import protocol_study as study
from critprint.evaluation.plan import get_plan
from critprint.features import feature_vector
from critprint.fingerprint import Fingerprint
from critprint.protocol import FeatureSettings
from critprint.query import quantize_8bit

GAINS = (1, 4, 16)


def variants(record: Fingerprint, settings: FeatureSettings) -> dict[str, torch.Tensor]:
    """Return the feature vector of each image variant of one model's fingerprint."""
    if record.probe_outputs is None:
        raise SystemExit("the study's fingerprints contain no probe outputs; run the study again with this version")
    critical = quantize_8bit(record.critical_image)
    output = record.probe_outputs[0]
    features = {"critical image": feature_vector(critical, settings), "output": feature_vector(output, settings)}
    for gain in GAINS:
        features[f"residual x {gain}"] = feature_vector((0.5 + gain * (output - critical)).clamp(0, 1), settings)
    features["critical image + residual x 4"] = torch.cat([features["critical image"], features["residual x 4"]])
    features["critical image + output"] = torch.cat([features["critical image"], features["output"]])
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("task")
    parser.add_argument("setting")
    parser.add_argument("--quick", action="store_true", help="Use the reduced plan, as bench --quick does.")
    parser.add_argument("--iterations", type=int, help="Override the protocol's number of Adam steps.")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    plan = get_plan("quick" if arguments.quick else "full", (arguments.task,), iterations=arguments.iterations)

    # The study's private helpers give exactly its models, pairs and cached fingerprints.
    models = study._prepare(plan, study._task_plan(plan, arguments.task), arguments.study_dir, None)
    setting = study.parse_setting(arguments.setting)
    records = study._extract_all(models, [setting], lambda label: None)
    key = study.protocol_key(setting.extraction_protocols(models.base)[0][0])
    settings = setting.feature_settings(models.base)
    positives, negatives = models.positives, models.negatives()
    names = {name for pair in (*positives, *negatives) for name in pair}
    features = {name: variants(records[(name, key)], settings) for name in names}

    rows = []
    for variant in features[next(iter(names))]:
        length = int(features[next(iter(names))][variant].numel())
        eta = threshold(length, models.base.alpha, models.base.sigma_h)
        samples = [(pair in positives, feature_distance(features[pair[0]][variant], features[pair[1]][variant]) / eta)
                   for pair in (*positives, *negatives)]
        rows.append({"task": arguments.task, "features": variant, "length": length,
                     **study.pooled_summary(samples, plan.fpr)})

    if arguments.json:
        print(json.dumps(rows, indent=2))
        return
    print("| task | features | AUC | TPR at 1 % FPR | positives derived | negatives derived |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['task']} | {row['features']} | {row['auc']:.3f} | {row['tpr']:.3f} | "
              f"{row['derived_positives']}/{row['positives']} | {row['false_positives']}/{row['negatives']} |")


if __name__ == "__main__":
    main()
