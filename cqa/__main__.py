"""CLI: ``python -m cqa caption|explain`` — enriched ECG captions by RAG over the knowledge corpus.

caption: ``python -m cqa caption --dataset ptbxl --root DIR --store DIR --out OUT [--llm smollm2] [--limit N]``
  writes Parquet parts under OUT/data (resumable after a kill; see cqa.batch).
explain: ``python -m cqa explain --codes "IRBBB,SR" --age 56 --sex male [--store DIR] [--llm none] [--json]``
  prints one caption with the passages that grounded it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

log = logging.getLogger("cqa")
DATASETS = ("ptbxl", "mimic", "cinc", "cpsc2018")
VOCABULARIES = ("plain", "scp", "snomed", "mimic_statement", "cpsc2018")


def cache_dir() -> Path:
    """Where shared state lives by default (the description cache, the default store): $ESI_CACHE_DIR."""
    return Path(os.environ.get("ESI_CACHE_DIR") or Path.home() / ".cache" / "esi")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", default="smollm2",
                        help="smollm2 (default) | none | gguf:PATH | hf:DIR | openai:URL[#model]")
    parser.add_argument("--cache", default=None,
                        help="description cache (SQLite); default $ESI_CACHE_DIR/cqa_descriptions.sqlite")
    parser.add_argument("--k", type=int, default=3, help="passages retrieved per finding")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM call before grounded fallback")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="generation limit per description (cqa.llm.DEFAULT_MAX_NEW_TOKENS)")
    parser.add_argument("--max-bullets", type=int, default=3, help="waveform bullets per grounded description")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every fallback reason")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    caption = sub.add_parser("caption", help="caption every record of a dataset into Parquet parts")
    caption.add_argument("--dataset", required=True, choices=DATASETS)
    caption.add_argument("--root", required=True, help="dataset folder (ptbxl: also a database CSV)")
    caption.add_argument("--store", default=None,
                         help="knowledge store directory, built if missing (opened only when an LLM is used: "
                              "grounded-only captions need no retrieval); default $ESI_CACHE_DIR/knowledge-store")
    caption.add_argument("--out", required=True, help="output folder (re-run to resume)")
    caption.add_argument("--limit", type=int, default=None, help="only the first N records")
    caption.add_argument("--scp-statements", default=None, help="ptbxl: scp_statements.csv if not next to --root")
    caption.add_argument("--chunk-size", type=int, default=500, help="records per Parquet part")
    caption.add_argument("--no-progress", action="store_true")
    _common(caption)
    explain = sub.add_parser("explain", help="one caption with the passages that grounded it")
    explain.add_argument("--codes", default="", help="comma-separated labels: codes, names or abbreviations")
    explain.add_argument("--statement", action="append", default=[],
                         help="a machine-statement / report line (repeatable; read as MIMIC statements)")
    explain.add_argument("--vocabulary", default="plain", choices=VOCABULARIES, help="how to read --codes")
    explain.add_argument("--age", type=float, default=None)
    explain.add_argument("--sex", choices=("male", "female"), default=None)
    explain.add_argument("--store", default=None, help="knowledge store directory (built if missing)")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    _common(explain)
    para = sub.add_parser("paraphrases", help="validated LLM paraphrases of every finding in a caption folder "
                                              "(JSON for ESI's caption views: views.paraphrases)")
    para.add_argument("--captions", required=True, help="a `cqa caption` output folder: its findings are described")
    para.add_argument("--out", required=True, help="JSON file {finding id: [paraphrases]} (written atomically)")
    para.add_argument("--n", type=int, default=3, help="variants tried per finding (rejected ones are left out)")
    para.add_argument("--store", default=None, help="knowledge store directory (built if missing)")
    _common(para)
    return parser


def open_store(path: str | None) -> Any:
    """Open the knowledge store, building (or syncing a stale) one when needed."""
    from retrieval import KnowledgeStore, StoreError

    location = path or str(cache_dir() / "knowledge-store")
    try:
        store = KnowledgeStore.open(location)
    except StoreError as err:
        log.warning("%s; building it now", err)
        return KnowledgeStore.build(location, progress=False)
    if store.is_stale():
        log.warning("knowledge store %s predates the current corpus; updating it", location)
        return KnowledgeStore.build(location, embeddings=store.embeddings, progress=False)
    return store


def build_captioner(args: argparse.Namespace, *, need_store: bool) -> Any:
    from .cache import DescriptionCache
    from .caption import Captioner
    from .llm import Describer, load_llm

    backend = load_llm(args.llm, max_new_tokens=args.max_new_tokens, timeout_s=args.timeout)
    describer = Describer(backend, timeout_s=args.timeout, max_new_tokens=args.max_new_tokens) \
        if backend.enabled else None
    store = open_store(args.store) if (need_store or describer is not None) else None
    cache = None
    if describer is not None:
        cache = DescriptionCache(args.cache or cache_dir() / "cqa_descriptions.sqlite")
    return Captioner(describer=describer, store=store, cache=cache, k=args.k, max_bullets=args.max_bullets)


def cmd_caption(args: argparse.Namespace) -> int:
    from corpora.registry import get_reader

    from .batch import run_batch

    options: dict[str, Any] = {}
    if args.scp_statements:
        if args.dataset != "ptbxl":
            raise ValueError("--scp-statements only applies to --dataset ptbxl")
        options["scp_statements"] = args.scp_statements
    reader = get_reader(args.dataset, args.root, **options)
    captioner = build_captioner(args, need_store=False)
    config = {
        "dataset": args.dataset, "root": str(Path(args.root).resolve()),
        "scp_statements": str(Path(args.scp_statements).resolve()) if args.scp_statements else None,
        "model_id": captioner.model_id,
        "prompt_hash": captioner.describer.prompt_hash if captioner.describer else None,
        "knowledge_version": captioner.knowledge_version, "k": args.k, "max_bullets": args.max_bullets,
    }
    summary = run_batch(reader, captioner, args.out, config=config, limit=args.limit,
                        chunk_size=args.chunk_size, progress=not args.no_progress)
    stats = summary["stats"]
    print(f"{args.out}: {summary['rows']} captions, {len(summary['skipped'])} skipped records, "
          f"finding sources {summary['finding_sources']}; this run: {stats['llm_calls']} LLM calls, "
          f"{stats['cache_hits']} cache hits")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_labels

    codes = [c.strip() for c in args.codes.split(",") if c.strip()]
    if not codes and not args.statement:
        raise ValueError("give --codes and/or --statement")
    captioner = build_captioner(args, need_store=True)
    explanation = explain_labels(captioner, codes, statements=args.statement, vocabulary=args.vocabulary,
                                 age=args.age, sex=args.sex)
    caption, passages = explanation.caption, explanation.passages
    if args.json:
        print(json.dumps({**explanation.to_dict(), "model_id": captioner.model_id, "stats": captioner.stats},
                         ensure_ascii=False, indent=1))
        return 0
    print(caption.caption)
    print("\nFindings:")
    for finding in caption.findings:
        source = caption.sources[finding.id]
        why = f" ({source['reason']})" if source["reason"] else ""
        print(f"  - {finding.name} [{finding.certainty}] from {finding.labels}: {source['source']}{why}")
    for unknown in caption.unknown_labels:
        print(f"  ! unknown label {unknown['label']!r}: {unknown['reason']}")
    print("\nPassages:")
    for passage in passages:
        text = " ".join(str(passage.get("text", "")).split())
        print(f"  [{passage['finding']}] {passage.get('section', '')} (score {passage.get('score', 0):.3f}): "
              f"{text[:240]}")
    return 0


def cmd_paraphrases(args: argparse.Namespace) -> int:
    from corpora.atomic import atomic_write_text

    from .batch import read_output
    from .paraphrase import paraphrase_table

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    rows = read_output(args.captions).column("findings").to_pylist()
    entry_ids = sorted({f["id"] for row in rows for f in json.loads(row or "[]")})
    captioner = build_captioner(args, need_store=True)
    if captioner.describer is None:
        raise ValueError("paraphrases need an LLM (--llm none writes grounded text only, which the caption has)")
    table = {k: v for k, v in paraphrase_table(captioner, entry_ids, args.n).items() if v}
    atomic_write_text(Path(args.out), json.dumps(table, ensure_ascii=False, indent=1, sort_keys=True))
    print(f"{args.out}: {sum(map(len, table.values()))} paraphrases of {len(table)} of {len(entry_ids)} findings "
          f"({captioner.stats.get('llm_calls', 0)} LLM calls, {captioner.stats.get('cache_hits', 0)} cache hits)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from corpora.base import RecordError
    from corpora.knowledge import KnowledgeError

    from .batch import BatchError
    from .llm import LLMError

    try:
        if args.command == "caption":
            return cmd_caption(args)
        if args.command == "paraphrases":
            return cmd_paraphrases(args)
        return cmd_explain(args)
    except (LLMError, BatchError, KnowledgeError, RecordError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
