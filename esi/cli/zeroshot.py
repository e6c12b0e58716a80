"""``python -m esi zeroshot``: zero-shot (or few-shot prototype) classification of a dataset; AUC and F1."""

from __future__ import annotations

import argparse

from esi.cli.common import add_class_text_options, guarded, metadata, parse_folds, print_json, reader

NAME = "zeroshot"
HELP = "zero-shot classification of a dataset with a label set; AUC and F1"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        NAME, help=HELP,
        description="Score every record against the label set's class prompts. AUC on --folds; F1 with "
                    "per-class thresholds chosen on --threshold-folds (default: the other folds present).")
    p.add_argument("--model", required=True, help="ESI model directory (save_pretrained output)")
    p.add_argument("--dataset", required=True, help="reader name: ptbxl, cinc, cpsc2018, mimic")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--labels", required=True, help="label set: superclass, subclass, all, form, rhythm, cinc, "
                   "cpsc2018 (or a label set JSON path)")
    p.add_argument("--classes", help="comma-separated subset of the label set's classes")
    p.add_argument("--folds", help="test folds, e.g. 9 or 1-8 (default: all records)")
    p.add_argument("--threshold-folds", help="folds whose scores choose the F1 thresholds "
                   "(default: every other fold present; none for datasets without folds)")
    p.add_argument("--templates", default="ecg", help="prompt template set (ecg, plain) or JSON path")
    p.add_argument("--knowledge", action="store_true", help="add the knowledge-corpus waveform description "
                   "of each class to its prompts (same as --class-text knowledge)")
    add_class_text_options(p)
    p.add_argument("--prototypes", action="store_true",
                   help="few-shot instead of zero-shot: each class is the mean embedding of its example ECGs "
                   "in --threshold-folds (nearest class-mean prototype)")
    p.add_argument("--limit", type=int, help="read at most N records per fold set (quick checks)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def run(args: argparse.Namespace) -> int:
    from esi.eval.data import load_eval_data, merge_eval_data
    from esi.eval.zeroshot import zeroshot_evaluation
    from esi.model.io import format_number
    from esi.serve.inference import ESIInference
    from esi.zeroshot.classifier import DEFAULT_CLASS_TEXT
    from esi.zeroshot.labelsets import load_labelset

    labelset = load_labelset(args.labels)
    if args.classes:
        labelset = labelset.select(c for c in args.classes.split(",") if c.strip())
    inference = ESIInference(args.model)
    dataset = reader(args, inference.sampling_rate)
    test_folds = parse_folds(args.folds)
    threshold_folds = parse_folds(args.threshold_folds)
    progress = not args.quiet and not args.json
    parts = [load_eval_data(dataset, inference.input, folds=test_folds, limit_per_fold_set=args.limit,
                            progress=progress)]
    if test_folds is not None:
        if threshold_folds is None:
            present = {r.fold for r in metadata(dataset)} - {None} - set(test_folds)
            threshold_folds = sorted(present) or None
        if threshold_folds:
            parts.append(load_eval_data(dataset, inference.input,
                                        folds=[f for f in threshold_folds if f not in test_folds],
                                        limit_per_fold_set=args.limit, progress=progress))
    data = merge_eval_data(parts)
    if args.prototypes and not threshold_folds:
        raise ValueError("--prototypes needs example ECGs: pass --folds and --threshold-folds (labelled folds)")
    result = zeroshot_evaluation(inference, data, labelset, test_folds=test_folds, threshold_folds=threshold_folds,
                                 templates=args.templates, use_knowledge=args.knowledge,
                                 class_text=args.class_text or ("knowledge" if args.knowledge else None) or
                                 DEFAULT_CLASS_TEXT, calibration=args.calibration, prototypes=args.prototypes)
    result.update({"model": str(args.model), "dataset_root": str(args.root),
                   "skipped_records": [f"{s.record}: {s.reason}" for s in data.skipped],
                   "input_notes": data.notes})
    if args.json:
        print_json(result)
        return 0
    auc, f1 = format_number(result["macro_auc"], "-"), format_number(result["macro_f1"], "-")
    print(f"{result['labelset']} on {args.dataset} ({result['n_records']} test records): macro AUC {auc}, macro F1 {f1}")
    print(f"{'class':<12} {'n_pos':>6} {'AUC':>6} {'F1':>6}  display")
    for class_id, row in result["per_class"].items():
        auc, f1 = format_number(row["auc"], "-"), format_number(row["f1"], "-")
        print(f"{class_id:<12} {row['n_positive']:>6} {auc:>6} {f1:>6}  {row['display']}")
    if result.get("n_unlabelled_excluded"):
        print(f"{result['n_unlabelled_excluded']} record(s) without any label left out (unannotated, not negative)")
    if result.get("f1_note"):
        print(f"F1: {result['f1_note']}")
    for skipped in result["skipped_classes"]:
        print(f"skipped class {skipped['class']}: {skipped['reason']}")
    if data.skipped:
        print(f"{len(data.skipped)} record(s) skipped, e.g. {data.skipped[0].record}: {data.skipped[0].reason}")
    for note, count in data.notes.items():
        print(f"note: {count} record(s) {note}")
    return 0
