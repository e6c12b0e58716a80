"""Entry-level retrieval quality on bench/retrieval_eval.jsonl (paraphrases, report phrases, abbreviations)."""

from __future__ import annotations

from pathlib import Path

from corpora.knowledge import load_entries
from retrieval.evaluation import evaluate, load_eval_set

EVAL_SET = Path(__file__).resolve().parents[2] / "bench" / "retrieval_eval.jsonl"


def test_eval_set_is_large_and_names_existing_entries(knowledge_snapshot):
    items = load_eval_set(EVAL_SET)
    ids = {e.id for e in load_entries(str(knowledge_snapshot))}
    assert len(items) >= 60
    unknown = sorted({e for item in items for e in item.expected} - ids)
    assert not unknown, f"eval set expects entries that the corpus lacks: {unknown}"
    assert len({e for item in items for e in item.expected}) >= 60  # covers much of the corpus


def test_recall_at_5_of_distinct_findings_meets_target(built_store):
    result = evaluate(built_store, load_eval_set(EVAL_SET), ks=(1, 5), max_per_entry=1)
    assert result["recall@5"] >= 0.90, result["misses"]
    assert result["recall@1"] >= 0.50, result
    assert result["by_kind"]["abbreviation"]["recall@5"] >= 0.90


def test_diverse_results_are_distinct_entries(built_store):
    passages = built_store.search("ST elevation in the inferior leads", k=5, max_per_entry=1)
    assert len({p.entry for p in passages}) == 5
    capped = built_store.search("ST elevation in the inferior leads", k=10, max_per_entry=2)
    counts = [sum(p.entry == e for p in capped) for e in {p.entry for p in capped}]
    assert max(counts) <= 2
