"""Markdown tables (mean ± sd over seeds) from ``bench/ablate_zeroshot.py`` scores.

    python bench/ablation_table.py bench/zeroshot_ablation.json

Run directories are named ``ARM-sSEED``; arms are grouped by name. Prints the component ablation
(one change at a time) and the class-text x calibration grid of one arm on fold-9 halves A and B.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def by_arm(results: dict) -> dict[str, list[dict]]:
    arms: dict[str, list[dict]] = defaultdict(list)
    for run, scores in sorted(results.items()):
        match = re.match(r"(.+)-s(\d+)$", Path(run).name)
        arms[match.group(1) if match else Path(run).name].append(scores)
    return arms


def metrics(scores: dict, class_text: str, calibration: str, query_text: str, half: str = "all") -> dict[str, float]:
    zs = scores["zeroshot"]
    default = zs[f"superclass|{class_text}|{calibration}|{half}"]
    query = scores["query"][query_text]
    return {
        "zero-shot superclass AUC": default["macro_auc"],
        "lowest superclass AUC": min(default["per_class_auc"].values()),
        "zero-shot subclass AUC": zs[f"subclass|{class_text}|{calibration}|{half}"]["macro_auc"],
        "zero-shot superclass, today's prompts (templates, raw)": zs[f"superclass|templates|raw|{half}"]["macro_auc"],
        "reference: caption centroid (superclass)": scores["references"][f"superclass|caption_centroid|{half}"],
        "reference: ECG prototype (superclass)": scores["references"][f"superclass|ecg_prototype|{half}"],
        "query by text: mean precision@5": query["mean_precision@5"],
        "query \"normal ECG\": precision@5": query["queries"]["normal ECG"]["precision@5"],
        "linear probe superclass AUC (100 %)": scores["probe_superclass"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scores", type=Path)
    parser.add_argument("--class-text", default="views")
    parser.add_argument("--calibration", default="raw")
    parser.add_argument("--query-text", default="views", choices=("views", "raw"))
    parser.add_argument("--grid-arm", default=None, help="arm whose class-text x calibration grid to print")
    args = parser.parse_args(argv)
    arms = by_arm(json.loads(args.scores.read_text(encoding="utf-8")))
    names = list(arms)
    rows = {arm: [metrics(s, args.class_text, args.calibration, args.query_text) for s in runs]
            for arm, runs in arms.items()}
    keys = list(next(iter(rows.values()))[0])
    print("| metric (fold 9) | " + " | ".join(f"{a} (n={len(arms[a])})" for a in names) + " |")
    print("|---|" + "---|" * len(names))
    for key in keys:
        print(f"| {key} | " + " | ".join(_cell([r[key] for r in rows[a]]) for a in names) + " |")
    grid_arm = args.grid_arm or names[-1]
    print(f"\nClass text x calibration, arm `{grid_arm}`, superclass / subclass macro AUC, half A | half B:\n")
    print("| class text | calibration | superclass A | superclass B | subclass A | subclass B |")
    print("|---|---|---|---|---|---|")
    for class_text in ("templates", "knowledge", "views", "mean"):
        for calibration in ("raw", "centre", "zscore"):
            cells = []
            for labelset in ("superclass", "subclass"):
                for half in ("A", "B"):
                    cells.append(_cell([s["zeroshot"][f"{labelset}|{class_text}|{calibration}|{half}"]["macro_auc"]
                                        for s in arms[grid_arm]]))
            print(f"| {class_text} | {calibration} | " + " | ".join(cells) + " |")
    halved = [a for a in names if all("raw|A" in s["query"] for s in arms[a])]
    if halved:
        print("\nQuery text, mean precision@5 over the class queries, half A | half B:\n")
        print("| arm | raw A | raw B | views A | views B |")
        print("|---|---|---|---|---|")
        for arm in halved:
            cells = [_cell([s["query"][f"{q}|{h}"]["mean_precision@5"] for s in arms[arm]])
                     for q in ("raw", "views") for h in ("A", "B")]
            print(f"| {arm} (n={len(arms[arm])}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
