"""Entry-level retrieval recall on real report text that nobody wrote against the knowledge corpus.

Why: ``bench/retrieval_eval.jsonl`` was written by the people who wrote the corpus, so it rewards wording the
corpus already has. Here the queries are real report text:

- ``ptbxl_en``: sentences of the English free-text PTB-XL reports (``ptbxl-text`` + ``ptbxl-mini``). A sentence
  is a query when the normaliser reads exactly one finding in it (no negation) *and* that finding is one of the
  row's human SCP labels (mapped by the normaliser), so the target is confirmed by the cardiologist's codes.
- ``mimic``: MIMIC-IV-ECG machine statement lines with exactly one finding (normaliser, ``mimic_statement``).
- ``ptbxl_de`` / ``ptbxl_sv``: whole German / Swedish reports of rows whose SCP codes map to exactly one finding,
  reported separately (the English MiniLM and the English TF-IDF vocabulary were not made for them).

Queries are distinct per source after blanking lead names and numbers (:func:`template`: "ST depression in I,
aVL" and "... in V5,6" are one query; ``count`` = how often it occurs), so templated machine lines do not swamp
the score. (Whole English reports of single-label rows were tried and dropped: 7 distinct texts, mostly
"trace only requested." labelled with a finding the text does not name.) The selection (which text, which
target) is frozen in ``bench/data/retrieval_real_targets.jsonl`` as references into ``../shared/data`` (no report
text is copied into the project), made with the corpus as it was *before* the ranking work, so adding aliases
to the corpus cannot move the targets. ``--refreeze`` rebuilds it from the current corpus.

Every source and the paraphrase set are split in two halves by a hash of the query text: ``tune`` (what
:mod:`retrieval.store` weights were chosen on, see ``--tune``) and ``report`` (what the headline numbers use).

Run: ``.venv/bin/python bench/retrieval_real_eval.py [--out bench/results/retrieval_real.json] [--tune]``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
TARGETS = REPO / "bench" / "data" / "retrieval_real_targets.jsonl"
PARAPHRASES = REPO / "bench" / "retrieval_eval.jsonl"
PTBXL_FILES = {"ptbxl-text": "ptbxl-text/ptbxl_database_textonly.csv", "ptbxl-mini": "ptbxl-mini/ptbxl_database.csv"}
MIMIC_FILE = "mimic-statements/statements.txt"
RECALL_TARGETS = {"recall@5": 0.90, "recall@1": 0.70}
GERMAN_NOTE = (
    "Whole reports of single-label rows (PTB-XL labels of such rows are noisy). all-MiniLM-L6-v2 has an English "
    "WordPiece vocabulary: a German finding word falls apart into meaningless pieces ('vorhofflimmern' -> vo ##rh "
    "##off ##lim ##mer ##n, 'st-senkung' -> st - sen ##ku ##ng), so the dense signal follows the few cognates "
    "(sinus-, tachykard-, extrasystol-, 'st', lead names) and the English TF-IDF and alias terms match only those: "
    "German reports land on sinus, tachycardia and premature-complex entries whatever they say (recall@5 ~0.05-0.15, "
    "not a target; translate German text or use a multilingual model for it).")
SOURCE_NOTES = {
    "ptbxl_en": "English PTB-XL report sentences naming one finding confirmed by the row's SCP labels",
    "mimic": "MIMIC-IV-ECG machine statement lines naming one finding",
    "paraphrase": "the project's own eval set (bench/retrieval_eval.jsonl, written with the corpus)",
    "ptbxl_de": "German PTB-XL reports, reported separately: the English MiniLM splits German finding words into "
                "meaningless WordPieces ('vorhofflimmern' -> vo ##rh ##off ##lim ##mer ##n), so only cognates "
                "(sinus-, tachykard-, extrasystol-) are matched (see german_swedish.note)",
    "ptbxl_sv": "Swedish PTB-XL reports, reported separately (English model)",
}
LATENCY_TARGET_MS = 20.0

# Language hints: PTB-XL reports are German, English or Swedish and carry no language column; German and
# Swedish reports use umlauts (often upper-cased: "vÄnster") or these words, English ones are plain ASCII.
_GERMAN = re.compile(
    r"[äöüß]|rhythmus|typ\b|ableitung|\babnorm(es|er|e)?\b|infarkt|\bekg\b|\bund\b|\bmit\b|\bnicht\b|vorhof|"
    r"schenkel|wahrscheinlich|senkung|hebung|veraenderung|niederspannung|extrasystol|arrhythmie|kardie\b|"
    r"hypertrophie|moeglich|\bsonst\b|normales|bericht|\boder\b|\bkein|leitung|stoerung|befund|unbest|\bbei\b|"
    r"verdacht|\bv\.a\.|lagetyp|\bmoegl", re.I)
_SWEDISH = re.compile(r"rytm\b|kammar|v[äÄ]nster|h[öÖ]ger|eljest|\boch\b|avvikande|f[öÖ]rlopp|\bkan ej\b|"
                      r"misstanke|hypertrofi\b|kardi\b|f[öÖ]rmak|ospecifik|sk[äÄ]nkel|\bmed\b", re.I)
_BOILERPLATE = re.compile(r"\s*\d\.\d\d\s+unbest\S*\s+bericht\s*$|\s+edit:.*$", re.I | re.S)
_SENTENCE_END = re.compile(r"\.(?:\s+|$)|;\s*")
_LEAD = re.compile(r"(?i)\b(?:i{1,3}|avr|avl|avf|v[1-6](?:-v?[1-6])?|[1-6])\b")
_LEAD_RUN = re.compile(r"L(?:[\s,]*(?:and\s+)?L)+")


@dataclass
class RealQuery:
    """One distinct query text with its target entries, where it came from and how often it occurs."""

    query: str
    expected: tuple[str, ...]
    source: str
    ref: str
    count: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def half(self) -> str:
        return half_of(self.query)


def half_of(text: str) -> str:
    """'tune' or 'report', by a hash of the normalised text (stable across runs and machines)."""
    digest = hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).digest()
    return "tune" if digest[0] % 2 == 0 else "report"


def template(text: str) -> str:
    """The text with lead names and numbers blanked: "ST depression in I, aVL" == "... in V5,6" (one query)."""
    text = re.sub(r"\d+", "#", _LEAD.sub("L", text.lower()))
    return " ".join(_LEAD_RUN.sub("L", text).split()).strip(" .")


def text_sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def language(report: str) -> str:
    """'sv', 'de' or 'en' for a PTB-XL report (heuristic; see the module doc)."""
    if _SWEDISH.search(report):
        return "sv"
    if _GERMAN.search(report):
        return "de"
    return "en" if report.isascii() else "other"


def clean_report(report: str) -> str:
    """Drop the machine's "4.46 unbestätigter bericht" footer and annotators' "Edit: ..." notes."""
    return " ".join(_BOILERPLATE.sub("", report or "").split())


def sentences(report: str) -> list[str]:
    """A cleaned English report split at full stops / semicolons ("1.5 mm" is not split)."""
    return [s.strip(" ,.") for s in _SENTENCE_END.split(clean_report(report)) if s.strip(" ,.")]


def _findings(normalizer: Any, text: str) -> tuple[list[str], bool]:
    """(finding ids read in one statement-like text, whether anything was negated or ignored)."""
    result = normalizer.normalize({text: 100.0}, "mimic_statement")
    return [f.id for f in result.findings], bool(result.negated or result.ignored)


def _read_ptbxl(data: Path) -> Iterable[tuple[str, dict[str, str]]]:
    for name, relative in PTBXL_FILES.items():
        path = data / relative
        if not path.is_file():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                yield name, row


def _add(found: dict[tuple[str, str], RealQuery], query: RealQuery) -> None:
    key = (query.source, template(query.query))
    if key in found:
        found[key].count += 1
        votes = found[key].extra.setdefault("votes", Counter({found[key].expected: 1}))
        votes[query.expected] += 1
    else:
        found[key] = query


def build_queries(normalizer: Any, data: Path = DATA) -> tuple[list[RealQuery], dict[str, Any]]:
    """Derive the real-text queries from the shared data with the given normaliser (module doc)."""
    found: dict[tuple[str, str], RealQuery] = {}
    stats: Counter[str] = Counter()
    for dataset, row in _read_ptbxl(data):
        report = row.get("report") or ""
        lang = language(report)
        stats[f"ptbxl_rows_{lang}"] += 1
        labels = normalizer.normalize(ast.literal_eval(row["scp_codes"]), "scp").ids
        if lang in ("de", "sv") and len(labels) == 1 and clean_report(report):
            _add(found, RealQuery(clean_report(report), tuple(labels), f"ptbxl_{lang}", f"{dataset}:{row['ecg_id']}:*"))
        if lang != "en":
            continue
        for index, sentence in enumerate(sentences(report)):
            stats["ptbxl_en_sentences"] += 1
            ids, qualified = _findings(normalizer, sentence)
            if len(ids) != 1 or qualified:
                stats[f"ptbxl_en_sentences_with_{min(len(ids), 2)}{'+' if len(ids) > 1 else ''}_findings"
                      + ("_negated_or_ignored" if qualified else "")] += 1
                continue
            if ids[0] not in labels:
                stats["ptbxl_en_sentences_not_confirmed_by_scp_labels"] += 1
                continue
            _add(found, RealQuery(sentence, tuple(ids), "ptbxl_en", f"{dataset}:{row['ecg_id']}:{index}"))
    mimic = data / MIMIC_FILE
    if mimic.is_file():
        for number, line in enumerate(mimic.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            stats["mimic_lines"] += 1
            ids, qualified = _findings(normalizer, line.strip())
            if len(ids) == 1 and not qualified:
                _add(found, RealQuery(line.strip(), tuple(ids), "mimic", f"mimic:{number}"))
    queries = []
    for query in found.values():
        votes = query.extra.pop("votes", None)
        if votes:  # one text, several rows: the target most rows agree on
            query.expected = votes.most_common(1)[0][0]
        queries.append(query)
    stats.update(Counter(f"queries_{q.source}" for q in queries))
    return queries, dict(sorted(stats.items()))


def _ptbxl_rows(data: Path) -> dict[str, dict[str, str]]:
    return {f"{dataset}:{row['ecg_id']}": row for dataset, row in _read_ptbxl(data)}


def resolve_text(ref: str, data: Path = DATA, _cache: dict[str, Any] | None = None) -> str:
    """The query text a frozen reference points at (``dataset:ecg_id:sentence|*`` or ``mimic:line``)."""
    cache = _cache if _cache is not None else {}
    if ref.startswith("mimic:"):
        if "mimic" not in cache:
            cache["mimic"] = (data / MIMIC_FILE).read_text(encoding="utf-8").splitlines()
        return cache["mimic"][int(ref.split(":")[1]) - 1].strip()
    if "ptbxl" not in cache:
        cache["ptbxl"] = _ptbxl_rows(data)
    dataset, ecg_id, index = ref.split(":")
    report = cache["ptbxl"][f"{dataset}:{ecg_id}"]["report"]
    return clean_report(report) if index == "*" else sentences(report)[int(index)]


def freeze(queries: Sequence[RealQuery], path: Path = TARGETS, *, note: str = "") -> None:
    """Write the selection as references (no report text) plus a hash of each text to detect drift."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"_note": note}, ensure_ascii=False)] if note else []
    for q in sorted(queries, key=lambda q: (q.source, q.ref)):
        lines.append(json.dumps({"source": q.source, "ref": q.ref, "expected": list(q.expected), "count": q.count,
                                 "sha": text_sha(q.query)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_frozen(path: Path = TARGETS, data: Path = DATA) -> list[RealQuery]:
    """The frozen queries with their text read back from ``data``; an error names any text that changed."""
    cache: dict[str, Any] = {}
    queries, drifted = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        if "ref" not in raw:
            continue
        text = resolve_text(raw["ref"], data, cache)
        if text_sha(text) != raw["sha"]:
            drifted.append(raw["ref"])
            continue
        queries.append(RealQuery(text, tuple(raw["expected"]), raw["source"], raw["ref"], int(raw["count"])))
    if drifted:
        raise ValueError(f"{path}: {len(drifted)} references no longer give the frozen text (data changed?), "
                         f"e.g. {drifted[:3]}; rerun with --refreeze")
    return queries


# ------------------------------------------------------------------------------------------------ evaluation

SOURCES = ("paraphrase", "ptbxl_en", "mimic", "ptbxl_de", "ptbxl_sv")
TUNED_SOURCES = ("paraphrase", "ptbxl_en", "mimic")  # English: what the weights are tuned and judged on
GRID = {"lexical": (0.5, 1.0, 1.5, 2.0), "terms": (0.5, 1.0, 2.0, 3.0), "rrf_k": (10.0, 30.0, 60.0),
        "link_share": (0.0, 0.5), "mmr_lambda": (1.0, 0.9, 0.8)}


def paraphrase_queries(path: Path = PARAPHRASES) -> list[RealQuery]:
    from retrieval.evaluation import load_eval_set

    return [RealQuery(item.query, item.expected, "paraphrase", f"{path.name}:{number}", extra={"kind": item.kind})
            for number, item in enumerate(load_eval_set(path), start=1)]


def recall_table(queries: Sequence[RealQuery], rankings: Sequence[Sequence[str]], ks: Sequence[int] = (1, 5),
                 ) -> dict[str, dict[str, dict[str, float]]]:
    """source -> half ("tune", "report", "all") -> n, recall@k, and recall@k weighted by how often a text occurs."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for source in dict.fromkeys(q.source for q in queries):
        table[source] = {}
        for half in ("tune", "report", "all"):
            rows = [(q, r) for q, r in zip(queries, rankings) if q.source == source and half in ("all", q.half)]
            if not rows:
                continue
            cell: dict[str, float] = {"n": len(rows), "occurrences": sum(q.count for q, _ in rows)}
            for k in ks:
                hits = [any(e in q.expected for e in r[:k]) for q, r in rows]
                cell[f"recall@{k}"] = round(sum(hits) / len(rows), 4)
                cell[f"recall@{k}_weighted"] = round(sum(h * q.count for h, (q, _) in zip(hits, rows))
                                                     / cell["occurrences"], 4)
            table[source][half] = cell
    return table


def objective(table: dict[str, dict[str, dict[str, float]]], half: str = "tune") -> float:
    """Mean of recall@1 and recall@5 over the English sources (macro: each source counts once)."""
    cells = [table[s][half] for s in TUNED_SOURCES if s in table and half in table[s]]
    return sum((c["recall@1"] + c["recall@5"]) / 2 for c in cells) / max(1, len(cells))


def rank_all(store: Any, candidates: Sequence[Any], k: int = 5) -> list[list[str]]:
    return [[f.entry or f.key for f in store.findings_from(c, k, passages=1)] for c in candidates]


def tune(store: Any, queries: Sequence[RealQuery], candidates: Sequence[Any]) -> list[dict[str, Any]]:
    """Grid search of the fusion knobs on the *tune* half only; returns the grid sorted by the tune objective."""
    import itertools
    from dataclasses import replace

    tune_rows = [(q, c) for q, c in zip(queries, candidates) if q.half == "tune" and q.source in TUNED_SOURCES]
    tune_queries, tune_candidates = [q for q, _ in tune_rows], [c for _, c in tune_rows]
    original = store.ranking
    results = []
    try:
        for lexical, terms, rrf_k, share, lam in itertools.product(*GRID.values()):
            params = replace(original, weights={"dense": 1.0, "lexical": lexical, "terms": terms}, rrf_k=rrf_k,
                             link_share=share, mmr_lambda=lam)
            store.ranking = params
            table = recall_table(tune_queries, rank_all(store, tune_candidates))
            results.append({"objective": round(objective(table), 4), "weights": dict(params.weights),
                            "rrf_k": rrf_k, "link_share": share, "mmr_lambda": lam,
                            "tune": {s: {m: v["tune"][m] for m in ("recall@1", "recall@5")} for s, v in table.items()}})
    finally:
        store.ranking = original
    return sorted(results, key=lambda r: -r["objective"])


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency(store: Any, texts: Sequence[str], n: int) -> dict[str, Any]:
    """p50/p95 of a plain Chroma dense query (embed + nearest 5 chunks), of ``search_findings(k=5)`` and of
    ``search(k=5)``, interleaved query by query so machine load hits all three alike; the ratio is the
    load-independent number. ``cpu_p50_ms`` is the calling thread's CPU time per query (``time.thread_time``):
    what the query costs when it has a core to itself (with one torch thread all the work runs on that thread;
    with more, the other threads' share is missing)."""
    from retrieval.embeddings import torch_threads

    collection = store.vectorstore._collection

    def plain(text: str) -> None:
        with torch_threads(store.query_threads):
            vector = store.embeddings.embed_query(text)
        collection.query(query_embeddings=[vector], n_results=5, include=["distances", "documents", "metadatas"])

    runs = {"plain_chroma_dense": plain, "findings": lambda t: store.search_findings(t, k=5),
            "chunks": lambda t: store.search(t, k=5)}
    for text in texts[:10]:
        for run in runs.values():
            run(text)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(n):
        text = texts[i % len(texts)]
        for name in names[i % 3:] + names[:i % 3]:  # rotate the order
            start, start_cpu = time.perf_counter(), time.thread_time()
            runs[name](text)
            times[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.thread_time() - start_cpu) * 1000)
    result: dict[str, Any] = {name: {"n": n, "p50_ms": round(_percentile(t, 50), 2),
                                     "p95_ms": round(_percentile(t, 95), 2),
                                     "mean_ms": round(statistics.fmean(t), 2),
                                     "cpu_p50_ms": round(_percentile(cpu[name], 50), 2)}
                              for name, t in times.items()}
    base = result["plain_chroma_dense"]["p50_ms"]
    result["ratio_p50_findings_to_plain"] = round(result["findings"]["p50_ms"] / base, 3)
    result["ratio_p50_chunks_to_plain"] = round(result["chunks"]["p50_ms"] / base, 3)
    result["ratio_cpu_p50_findings_to_plain"] = round(result["findings"]["cpu_p50_ms"]
                                                      / result["plain_chroma_dense"]["cpu_p50_ms"], 3)
    return result


def _misses(queries: Sequence[RealQuery], rankings: Sequence[Sequence[str]], source: str, limit: int = 30,
            ) -> list[dict[str, Any]]:
    rows = [{"query": q.query[:200], "expected": list(q.expected), "got": list(r[:5]), "count": q.count}
            for q, r in zip(queries, rankings)
            if q.source == source and q.half == "report" and not any(e in q.expected for e in r[:5])]
    return rows[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "retrieval_real.json"))
    parser.add_argument("--data", default=str(DATA), help="the shared data folder")
    parser.add_argument("--store", default=None, help="build/update the store here (default: a temporary folder)")
    parser.add_argument("--tune", action="store_true", help="also grid-search the fusion knobs on the tune half")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--refreeze", action="store_true",
                        help=f"re-select the queries with the current corpus and rewrite {TARGETS.name}")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / MIMIC_FILE).is_file() or not any((data / f).is_file() for f in PTBXL_FILES.values()):
        print(f"error: the real data is not at {data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2

    import torch

    from corpora.knowledge import knowledge_version
    from cqa.normalize import Normalizer
    from retrieval import KnowledgeStore, load_embeddings
    from retrieval.ranking import RankingParams

    live, selection_stats = build_queries(Normalizer(), data)
    if args.refreeze or not TARGETS.is_file():
        freeze(live, note=f"selected with knowledge_version {knowledge_version()}; refs into ../shared/data")
    real = load_frozen(TARGETS, data)
    frozen_note = json.loads(TARGETS.read_text(encoding="utf-8").splitlines()[0]).get("_note", "")
    queries = paraphrase_queries() + real
    clipped = sum(len(q.query) > 2000 for q in queries)
    for q in queries:
        q.query = q.query[:2000]

    load_before = os.getloadavg()
    embeddings = load_embeddings()
    embeddings.embed_query("warm up")
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-real-") as tmp:
        store = KnowledgeStore.build(Path(args.store or Path(tmp) / "kb"), embeddings=embeddings, progress=False)
        start = time.perf_counter()
        candidates = store.candidates_many([q.query for q in queries], k=5)
        candidates_s = time.perf_counter() - start

        tuned = tune(store, queries, candidates) if args.tune else []
        rankings = rank_all(store, candidates)
        table = recall_table(queries, rankings)
        ablations = {}
        for label, params in (("dense_only", RankingParams(weights={"dense": 1.0}, link_share=0.0, mmr_lambda=1.0)),
                              ("dense_lexical", RankingParams(weights={"dense": 1.0, "lexical": store.ranking.weights
                                                                       .get("lexical", 0.0)})),
                              ("no_links_no_mmr", RankingParams(weights=dict(store.ranking.weights),
                                                                rrf_k=store.ranking.rrf_k, link_share=0.0,
                                                                mmr_lambda=1.0))):
            original, store.ranking = store.ranking, params
            try:
                ablations[label] = {s: v.get("report", v.get("all")) for s, v in
                                    recall_table(queries, rank_all(store, candidates)).items()}
            finally:
                store.ranking = original
        german = [(q, r) for q, r in zip(queries, rankings) if q.source in ("ptbxl_de", "ptbxl_sv")]
        top1 = Counter(r[0] if r else "" for _, r in german).most_common(8)
        english = [q.query for q in queries if q.half == "report" and q.source in TUNED_SOURCES]
        timing = latency(store, english, args.latency_queries)
        chunks = store.count()

    params = store.ranking
    report = {s: table[s]["report"] for s in table if "report" in table[s]}
    real_report = [report[s] for s in ("ptbxl_en", "mimic") if s in report]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "shared 2-core CPU, training runs in parallel: absolute times are noisy, the ratio "
                            "to a plain Chroma query in the same run is the number to compare"},
        "knowledge_version": knowledge_version(), "chunks": chunks, "selection": frozen_note,
        "selection_stats_live_corpus": selection_stats, "queries_clipped_to_2000_chars": clipped,
        "ranking": {"weights": dict(params.weights), "rrf_k": params.rrf_k, "link_share": params.link_share,
                    "mmr_lambda": params.mmr_lambda},
        "recall": table, "ablations_report_half": ablations,
        "german_swedish": {"top1_most_common": top1, "note": GERMAN_NOTE},
        "latency": timing, "candidates_s": round(candidates_s, 2),
        "misses_report_half": {s: _misses(queries, rankings, s) for s in SOURCES},
    }
    if tuned:
        results["tuning"] = {"grid": GRID, "objective": "mean over paraphrase, ptbxl_en, mimic of (r@1 + r@5) / 2,"
                             " tune half only", "top": tuned[:10],
                             "current_rank": next((i + 1 for i, r in enumerate(tuned)
                                                   if r["weights"] == dict(params.weights)
                                                   and r["rrf_k"] == params.rrf_k
                                                   and r["link_share"] == params.link_share
                                                   and r["mmr_lambda"] == params.mmr_lambda), None)}
    results["metrics"] = {
        **{f"{s}_recall@{k}_report_half": {"value": report[s][f"recall@{k}"], "n": report[s]["n"],
                                           "note": f"{SOURCE_NOTES.get(s, s)}; report half, n={report[s]['n']}, "
                                                   "distinct findings",
                                           **({"target": f">= {RECALL_TARGETS[f'recall@{k}']}"}
                                              if s in ("ptbxl_en", "mimic") else {})}
           for s in report for k in (1, 5)},
        "real_recall@5_min_report_half": {"value": min(c["recall@5"] for c in real_report), "target": ">= 0.90"},
        "real_recall@1_min_report_half": {"value": min(c["recall@1"] for c in real_report), "target": ">= 0.70"},
        "findings_p50_ms": {"value": timing["findings"]["p50_ms"], "unit": "ms", "target": "<= 20",
                            "note": f"search_findings k=5 on {timing['findings']['n']} English report-half queries, "
                                    f"1 torch thread; {datetime.now(UTC):%Y-%m-%d}, 1-min load average "
                                    f"{load_before[0]:.1f} before the run on {os.cpu_count()} shared cores"},
        "plain_chroma_p50_ms": {"value": timing["plain_chroma_dense"]["p50_ms"], "unit": "ms",
                                "note": "embed + Chroma nearest 5 chunks, interleaved with the fused query"},
        "findings_to_plain_p50_ratio": {"value": timing["ratio_p50_findings_to_plain"], "unit": "x"},
    }
    args_out = Path(args.out)
    args_out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args_out.with_suffix(args_out.suffix + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_out, args_out)
    print(json.dumps({"ranking": results["ranking"], "recall_report_half": report,
                      "ablations_report_half": ablations, "german_top1": top1,
                      "latency": timing, "metrics": results["metrics"]}, indent=1))
    if tuned:
        for row in tuned[:10]:
            print(json.dumps({k: row[k] for k in ("objective", "weights", "rrf_k", "link_share", "mmr_lambda")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
