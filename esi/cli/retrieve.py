"""``python -m esi retrieve``: the texts (knowledge passages or captions) closest to one ECG."""

from __future__ import annotations

import argparse
import warnings

from esi.cli.common import (
    RECORD_HELP,
    add_sampling_rate,
    add_store_options,
    guarded,
    location,
    prepare_record,
    print_json,
    print_notes,
)

NAME = "retrieve"
HELP = "the texts (knowledge passages or captions) closest to one ECG"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(NAME, help=HELP)
    p.add_argument("--model", required=True)
    p.add_argument("--record", required=True, help=RECORD_HELP)
    add_sampling_rate(p)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--texts", default="knowledge", help="'knowledge' (the knowledge corpus passages) or a "
                   ".txt (one text per line) / .jsonl (caption or text field) file of captions")
    p.add_argument("--collection", help="persist/reuse the text index in this collection (with --store/--chroma); "
                   "default: an in-memory index built for this call")
    add_store_options(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(_run=guarded(run), _name=NAME)
    return p


def run(args: argparse.Namespace) -> int:
    from esi.serve.inference import ESIInference
    from esi.serve.search import (
        TextIndex,
        ephemeral_client,
        file_texts,
        hit_to_dict,
        knowledge_texts,
        open_collection,
        text_fingerprint,
    )

    inference = ESIInference(args.model)
    with warnings.catch_warnings(record=True):  # the notes below say what fitting the record changed
        warnings.simplefilter("always")
        prepared = prepare_record(inference, args)
    items = knowledge_texts() if args.texts == "knowledge" else file_texts(args.texts)
    if args.collection:
        collection = open_collection(location(args), args.collection, kind="text", inference=inference,
                                     model_dir=args.model)
    else:
        collection = open_collection(ephemeral_client(), f"esi-texts-{text_fingerprint(items)}", kind="text",
                                     inference=inference)
    index = TextIndex(inference, collection)
    index.add_texts(items)
    embedding = inference.embed_signals(prepared.signal[None])[0]
    hits = [hit_to_dict(h) for h in index.retrieve(embedding, k=args.k)]
    result = {"record": prepared.record_id, "notes": prepared.notes, "texts": args.texts, "hits": hits}
    if args.json:
        print_json(result)
        return 0
    print_notes(prepared)
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank}. score {hit['score']:.3f}  {hit['document']}")
    return 0
