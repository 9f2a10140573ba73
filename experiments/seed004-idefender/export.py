"""Write the seed 004 matrix results as a small JSON for reports: one entry per cell with the
detection metrics and the stored ROC curve points (false/true positive rates).

    .venv/bin/python experiments/seed004-idefender/export.py DB [DB ...] -o experiments/results/seed004-idefender.json
"""

from __future__ import annotations

import argparse
import json

import advx

KEYS = (
    "dataset", "defense", "threat", "attack", "n", "clean_accuracy", "robust_accuracy", "detection_auc",
    "detection_auc_fooled", "detection_tpr", "detection_fpr", "accuracy_with_rejection", "seconds",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dbs", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    cells = []
    for db in args.dbs:
        for row in advx.ResultStore(db, readonly=True).cells(status="done"):
            entry = {k: row.get(k) for k in KEYS}
            entry["spec"] = row.get("spec_name")
            entry["threat_config"] = row.get("threat_config")
            entry["defense_config"] = row.get("defense_config")
            entry["roc_fpr_tpr"] = row.details.get("roc")
            cells.append(entry)
    with open(args.out, "w") as f:
        json.dump({"machine": "2-core x86-64 CPU, no GPU", "cells": cells}, f, indent=1)
    print(f"{len(cells)} cells -> {args.out}")


if __name__ == "__main__":
    main()
