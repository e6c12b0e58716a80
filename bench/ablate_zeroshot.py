"""Score pretrained runs for issue 11's ablation: zero-shot class text x calibration, references, queries, probe.

    python bench/ablate_zeroshot.py --runs runs/ablate/*-s? --captions runs/default/captions \
        --root ../shared/data/ptbxl-mini --out bench/zeroshot_ablation.json

Each run directory holds ``final/`` (an ``esi pretrain`` output). Fold 9 is split into two halves
(alternate records in id order): choices between options are made on half ``A`` and reported on
half ``B`` and on the whole fold, so the selection is never scored on the records it was chosen on.
Every number is a macro AUC (zero-shot, references, probe) or a mean precision (queries).
Resumable: a run already in ``--out`` is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from corpora.ptbxl import PTBXLReader
from esi.eval.data import load_eval_data
from esi.eval.probe import probe_evaluation
from esi.eval.query import query_evaluation
from esi.eval.retrieval import caption_texts
from esi.eval.zeroshot import zeroshot_evaluation
from esi.model.io import atomic_write_json, to_json
from esi.serve.inference import ESIInference
from esi.train.data import read_captions
from esi.zeroshot.classifier import CLASS_TEXTS

TRAIN_FOLDS = [1, 2, 3, 4, 5, 6, 7, 8]
TEST_FOLD = 9
HALF_FOLDS = {"A": 91, "B": 92}  # pseudo-folds for the two halves of fold 9


def split_fold(data, fold: int) -> None:
    """Relabel fold ``fold``'s records as two pseudo-folds (alternate records in id order)."""
    members = sorted((rid, i) for i, (rid, f) in enumerate(zip(data.record_ids, data.folds)) if f == fold)
    for position, (_, i) in enumerate(members):
        data.folds[i] = HALF_FOLDS["A"] if position % 2 == 0 else HALF_FOLDS["B"]


def ensure_prior(final: Path, captions: Path) -> None:
    """Runs trained before ``label_prior.json`` existed get it from the same captions and folds."""
    path = final / "label_prior.json"
    if not path.is_file():
        table = read_captions(captions)
        atomic_write_json(path, table.label_prior(TRAIN_FOLDS, exclude=[TEST_FOLD]))


def score_run(run: Path, data, texts) -> dict:
    inference = ESIInference(run / "final")
    key = str(run)
    out: dict = {"zeroshot": {}, "query": {}, "references": {}}
    halves = {"A": [HALF_FOLDS["A"]], "B": [HALF_FOLDS["B"]], "all": list(HALF_FOLDS.values())}
    for labelset in ("superclass", "subclass"):
        for class_text in CLASS_TEXTS:
            for calibration in ("raw", "centre", "zscore"):
                for half, folds in halves.items():
                    refs = texts if (class_text, calibration) == ("templates", "raw") else None
                    r = zeroshot_evaluation(inference, data, labelset, test_folds=folds, threshold_folds=TRAIN_FOLDS,
                                            model_key=key, class_text=class_text, calibration=calibration,
                                            reference_texts=refs)
                    out["zeroshot"][f"{labelset}|{class_text}|{calibration}|{half}"] = {
                        "macro_auc": r["macro_auc"], "per_class_auc": r["per_class_auc"]}
                    for name, ref in r.get("references", {}).items():
                        out["references"][f"{labelset}|{name}|{half}"] = ref["macro_auc"]
    out["query"] = score_queries(inference, data, key)
    probe = probe_evaluation(inference, data, "superclass", train_folds=TRAIN_FOLDS, test_folds=halves["all"],
                             fractions=(1.0,), seeds=(0,), model_key=key)
    out["probe_superclass"] = next(iter(probe["fractions"].values()))["macro_auc"]
    return out


def score_queries(inference: ESIInference, data, key: str) -> dict:
    """Query precision for each query text: ``raw`` / ``views`` on the whole fold, ``raw|A`` ... per half."""
    out: dict = {}
    for query_text in ("raw", "views"):
        out[query_text] = query_evaluation(inference, data, folds=list(HALF_FOLDS.values()), query_text=query_text,
                                           model_key=key, reference_folds=TRAIN_FOLDS)
        for half, fold in HALF_FOLDS.items():
            out[f"{query_text}|{half}"] = query_evaluation(inference, data, folds=[fold], query_text=query_text,
                                                           model_key=key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, type=Path)
    parser.add_argument("--captions", required=True, type=Path, help="the CQA captions the runs trained on")
    parser.add_argument("--root", required=True, type=Path, help="PTB-XL root (ptbxl-mini)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--refresh-queries", action="store_true",
                        help="re-score only the queries (per half too) of runs already in --out")
    args = parser.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.is_file() and not args.force else {}
    runs = [r for r in args.runs if (r / "final" / "config.json").is_file()]
    if not runs:
        parser.error("no finished run (run/final/config.json) among --runs")
    first = ESIInference(runs[0] / "final")
    data = load_eval_data(PTBXLReader(args.root, rate=100), first.input, folds=[*TRAIN_FOLDS, TEST_FOLD])
    split_fold(data, TEST_FOLD)
    texts = caption_texts(data, "cqa", args.captions)
    for run in runs:
        if str(run) in results and args.refresh_queries:
            results[str(run)]["query"] = score_queries(ESIInference(run / "final"), data, str(run))
            args.out.write_text(to_json(results))
            print(f"re-scored the queries of {run}", flush=True)
            continue
        if str(run) in results:
            continue
        ensure_prior(run / "final", args.captions)
        if ESIInference(run / "final").input.key != first.input.key:
            raise SystemExit(f"{run}: a different model input than {runs[0]}; score it in its own call")
        results[str(run)] = score_run(run, data, texts)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(results))
        print(f"scored {run}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
