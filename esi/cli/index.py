"""``python -m esi index-ecgs``: embed a dataset's ECGs into a Chroma collection (resumable)."""

from __future__ import annotations

import argparse

from esi.cli.common import add_store_options, guarded, location, metadata, parse_folds, reader

NAME = "index-ecgs"
HELP = "embed a dataset's ECGs into a Chroma collection (resumable)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True, help="reader name: ptbxl, cinc, cpsc2018, mimic")
    p.add_argument("--root", required=True)
    p.add_argument("--collection", required=True, help="collection name (3-512 chars of [a-zA-Z0-9._-])")
    add_store_options(p)
    p.add_argument("--folds", help="only these folds, e.g. 9 or 1-8")
    p.add_argument("--limit", type=int, help="index at most N records")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def run(args: argparse.Namespace) -> int:
    from esi.serve.inference import ESIInference
    from esi.serve.search import ECGIndex, open_collection

    inference = ESIInference(args.model)
    dataset = reader(args, inference.sampling_rate)
    folds = parse_folds(args.folds)
    ids = [r.record_id for r in metadata(dataset) if folds is None or r.fold in folds] if folds else dataset.record_ids()
    if args.limit is not None:
        ids = ids[: args.limit]
    collection = open_collection(location(args), args.collection, kind="ecg", inference=inference,
                                 model_dir=args.model)
    report = ECGIndex(inference, collection).index_reader(dataset, ids, progress=not args.quiet)
    print(report.summary())
    for skip in report.skipped[:10]:
        print(f"skipped {skip.record}: {skip.reason}")
    if len(report.skipped) > 10:
        print(f"... and {len(report.skipped) - 10} more skipped")
    return 0
