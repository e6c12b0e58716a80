"""CQA benchmark: cold-cache SmolLM2 descriptions, faithfulness, warm-cache captioning throughput.

Writes ``bench/results/cqa.json`` (``metrics`` + ``machine`` + details). On real data only:

1. cold cache: describe every finding of the 71 PTB-XL SCP statements with SmolLM2 (fresh cache;
   model load and store open counted) - target <= 10 min;
2. faithfulness on 500 random real PTB-XL rows (seed 0) of ptbxl-mini + ptbxl-text, for
   ``--llm smollm2`` (the descriptions cached in step 1) and for grounded-only (``--llm none``):
   ``cqa.validate.check_caption`` with the findings' retrieved passages as context, and strict;
3. warm cache: caption all 9,672 PTB-XL rows (1,025 + 8,647) with ``--llm smollm2`` through the
   batch writer, in a new Captioner (new LLM backend, so nothing in memory) - target <= 60 s.

    python bench/bench_cqa.py [--store DIR] [--data ../shared/data] [--rows 500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import machine_info  # bench/machine.py: the script's own folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent



def ptbxl_readers(data: Path) -> list[Any]:
    from corpora.registry import get_reader

    return [get_reader("ptbxl", data / "ptbxl-mini"),
            get_reader("ptbxl", data / "ptbxl-text" / "ptbxl_database_textonly.csv",
                       scp_statements=data / "ptbxl-mini" / "scp_statements.csv")]


def make_captioner(llm: str, store: Any, cache_path: Path) -> Any:
    from cqa.cache import DescriptionCache
    from cqa.caption import Captioner
    from cqa.llm import Describer, load_llm

    backend = load_llm(llm, timeout_s=120)
    describer = Describer(backend, timeout_s=120) if backend.enabled else None
    return Captioner(describer=describer, store=store if describer else None,
                     cache=DescriptionCache(cache_path) if describer else None)


def cold_cache(data: Path, store: Any, cache_path: Path) -> dict[str, Any]:
    from corpora.knowledge import code_index
    from corpora.ptbxl import load_scp_statements

    statements = load_scp_statements(data / "ptbxl-mini" / "scp_statements.csv")
    index = code_index()
    entry_ids = list(dict.fromkeys(i for code in statements for i in index.get(code, [])))
    unmapped = [code for code in statements if code not in index]
    started = time.perf_counter()
    captioner = make_captioner("smollm2", store, cache_path)
    per_finding = {}
    for entry_id in entry_ids:
        t0 = time.perf_counter()
        description = captioner.describe(entry_id)
        per_finding[entry_id] = {"source": description.source, "reason": description.reason,
                                 "seconds": round(time.perf_counter() - t0, 2), "text": description.text}
    seconds = time.perf_counter() - started
    first = next(iter(per_finding.values()), {"seconds": 0})
    return {"statements": len(statements), "unmapped_statements": unmapped, "findings": len(entry_ids),
            "seconds_total": round(seconds, 1), "seconds_first_incl_model_load": first["seconds"],
            "stats": dict(captioner.stats), "per_finding": per_finding}


def faithfulness(records: list[Any], llm: str, store: Any, cache_path: Path) -> dict[str, Any]:
    from cqa.validate import check_caption

    captioner = make_captioner(llm, store, cache_path)
    started = time.perf_counter()
    captions = [captioner.caption_record(r) for r in records]
    seconds = time.perf_counter() - started
    ok = strict = mentions = findings_total = llm_findings = 0
    failures = []
    for caption in captions:
        context = [p for f in caption.findings for p in captioner.passages_for(f.id)] if store else []
        report = check_caption(caption.caption, caption.findings, context)
        ok += report.ok
        strict += check_caption(caption.caption, caption.findings, implied=False).ok
        mentions += not report.missing
        findings_total += len(caption.findings)
        llm_findings += sum(s["source"] == "llm" for s in caption.sources.values())
        if not report.ok and len(failures) < 5:
            failures.append({"record_id": caption.record_id, "caption": caption.caption,
                             "report": report.to_dict()})
    n = len(captions)
    return {"rows": n, "faithful": ok / n, "faithful_strict": strict / n, "mentions_all_findings": mentions / n,
            "findings": findings_total, "llm_finding_share": llm_findings / max(findings_total, 1),
            "seconds": round(seconds, 2), "stats": dict(captioner.stats), "example_failures": failures}


def warm_cache(data: Path, store: Any, cache_path: Path, out_root: Path) -> dict[str, Any]:
    from cqa.batch import run_batch

    started = time.perf_counter()
    captioner = make_captioner("smollm2", store, cache_path)
    rows = 0
    skipped = 0
    for reader in ptbxl_readers(data):
        out = out_root / Path(str(reader.root)).name
        config = {"dataset": "ptbxl", "root": str(reader.root), "model_id": captioner.model_id,
                  "prompt_hash": captioner.describer.prompt_hash, "knowledge_version": captioner.knowledge_version}
        summary = run_batch(reader, captioner, out, config=config, chunk_size=1000, progress=False)
        rows += summary["rows"]
        skipped += len(summary["skipped"])
    seconds = time.perf_counter() - started
    return {"rows": rows, "skipped": skipped, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1),
            "llm_calls": captioner.stats["llm_calls"], "model_loaded": captioner.describer.backend.loaded,
            "stats": dict(captioner.stats)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--store", default=None, help="knowledge store dir (default: built in a temp dir)")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "cqa.json"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    machine = machine_info()

    from retrieval import KnowledgeStore, StoreError

    with tempfile.TemporaryDirectory(prefix="bench-cqa-") as tmp:
        tmp_path = Path(tmp)
        store_dir = Path(args.store) if args.store else tmp_path / "store"
        t0 = time.perf_counter()
        try:
            store = KnowledgeStore.open(store_dir)
            if store.is_stale():
                store = KnowledgeStore.build(store_dir, embeddings=store.embeddings, progress=False)
        except StoreError:
            store = KnowledgeStore.build(store_dir, progress=False)
        store_seconds = time.perf_counter() - t0
        print(f"store ready in {store_seconds:.1f} s", flush=True)
        cache_path = tmp_path / "descriptions.sqlite"

        cold = cold_cache(data, store, cache_path)
        print(f"cold cache: {cold['findings']} findings in {cold['seconds_total']} s {cold['stats']}", flush=True)

        records = [r for reader in ptbxl_readers(data) for r in reader.iter_records([], metadata_only=True)]
        sample = random.Random(args.seed).sample(records, min(args.rows, len(records)))
        faith_llm = faithfulness(sample, "smollm2", store, cache_path)
        faith_grounded = faithfulness(sample, "none", store, cache_path)
        print(f"faithfulness smollm2 {faith_llm['faithful']:.3f}, grounded {faith_grounded['faithful']:.3f}",
              flush=True)

        warm = warm_cache(data, store, cache_path, tmp_path / "captions")
        print(f"warm cache: {warm['rows']} rows in {warm['seconds']} s, {warm['llm_calls']} LLM calls", flush=True)

    metrics = {
        "cold_cache_71_scp_seconds": {"value": cold["seconds_total"], "unit": "s", "target": "<= 600",
                                      "note": f"{cold['findings']} findings, SmolLM2-135M Q4_1, incl. model load"},
        "cold_cache_llm_calls": {"value": cold["stats"]["llm_calls"], "unit": "calls"},
        "cold_cache_llm_accepted_share": {
            "value": round(cold["stats"]["llm_accepted"] / max(cold["stats"]["llm_calls"], 1), 3), "unit": "fraction",
            "note": "SmolLM2 descriptions that passed validation (rest: grounded fallback)"},
        "faithfulness_smollm2": {"value": round(faith_llm["faithful"], 4), "unit": "fraction",
                                 "note": f"{faith_llm['rows']} random PTB-XL rows, seed {args.seed}"},
        "faithfulness_smollm2_strict": {"value": round(faith_llm["faithful_strict"], 4), "unit": "fraction"},
        "faithfulness_grounded": {"value": round(faith_grounded["faithful"], 4), "unit": "fraction"},
        "faithfulness_grounded_strict": {"value": round(faith_grounded["faithful_strict"], 4), "unit": "fraction"},
        "warm_cache_9672_rows_seconds": {"value": warm["seconds"], "unit": "s", "target": "<= 60",
                                         "note": f"{warm['rows']} rows, {warm['llm_calls']} LLM calls"},
    }
    result = {"metrics": metrics, "machine": machine, "store_seconds": round(store_seconds, 1), "cold_cache": cold,
              "faithfulness": {"smollm2": faith_llm, "grounded": faith_grounded}, "warm_cache": warm,
              "config": {"rows": args.rows, "seed": args.seed}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_suffix(".json.tmp")
    tmp_file.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp_file, out)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
