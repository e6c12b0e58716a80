"""``python -m esi search``: the ECGs of a collection that best match a text query."""

from __future__ import annotations

import argparse

from esi.cli.common import add_query_text_option, add_store_options, guarded, location, print_json

NAME = "search"
HELP = "find the ECGs of a collection that best match a text query"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True)
    p.add_argument("--collection", required=True)
    add_store_options(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--dataset", dest="where_dataset", help="only ECGs of this dataset")
    p.add_argument("--sex", dest="where_sex", choices=["male", "female"], help="only ECGs of this sex")
    add_query_text_option(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("query", help="free text, e.g. 'atrial fibrillation with rapid ventricular response'")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def run(args: argparse.Namespace) -> int:
    from esi.serve.inference import ESIInference
    from esi.serve.search import ECGIndex, hit_to_dict, open_collection

    inference = ESIInference(args.model)
    collection = open_collection(location(args), args.collection, kind="ecg", inference=inference,
                                 model_dir=args.model, create=False)
    clauses = [{k: v} for k, v in (("dataset", args.where_dataset), ("sex", args.where_sex)) if v]
    where = None if not clauses else clauses[0] if len(clauses) == 1 else {"$and": clauses}
    hits = [hit_to_dict(h) for h in ECGIndex(inference, collection).search(args.query, k=args.k, where=where,
                                                                           query_text=args.query_text)]
    if args.json:
        print_json({"query": args.query, "collection": args.collection, "hits": hits})
        return 0
    if not hits:
        print(f"no ECGs found (collection {args.collection!r} holds {collection.count()})")
    for rank, hit in enumerate(hits, start=1):
        m = hit["metadata"]
        labels = ", ".join(m.get("labels", {}) or {})
        print(f"{rank}. {m.get('dataset')}:{m.get('record_id')}  score {hit['score']:.3f}  age {m.get('age', '-')} "
              f"sex {m.get('sex', '-')}  labels [{labels}]  {m.get('path', '')}")
    return 0
