"""Per-finding results on the full corpus: distinct entries with their best passages, linked entries, the
chunk view kept for callers that want chunks (the CQA captioner), and the CLI / LangChain faces of both."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from retrieval import FindingResult, Passage
from retrieval.__main__ import main

WPW_QUERY = "short PR interval with a delta wave slurring the upstroke of the QRS"


def test_wpw_query_returns_wpw_among_five_distinct_findings(built_store):
    findings = built_store.search_findings(WPW_QUERY, k=5)
    entries = [f.entry for f in findings]
    assert len(entries) == 5 and len(set(entries)) == 5
    assert "wpw" in entries and "short_pr" in entries
    for finding in findings:
        assert isinstance(finding, FindingResult) and 1 <= len(finding.passages) <= 2
        assert {p.entry for p in finding.passages} == {finding.entry}
        assert finding.text == finding.passages[0].text
    # the chunk view of the same query is what used to come back: one entry fills several places
    chunks = built_store.search(WPW_QUERY, k=5)
    assert all(isinstance(p, Passage) for p in chunks)
    assert max(Counter(p.entry for p in chunks).values()) >= 2


@pytest.mark.parametrize("query", ["ST elevation in the inferior leads", "broad QRS", "AF", "T wave changes",
                                   "sinus rhythm. possible left atrial enlargement"])
def test_findings_never_repeat_an_entry(built_store, query):
    findings = built_store.search_findings(query, k=10, passages=3)
    assert len(findings) == 10
    assert len({f.entry for f in findings}) == 10
    passage_ids = [p.id for f in findings for p in f.passages]
    assert len(passage_ids) == len(set(passage_ids))


def test_findings_many_matches_single(built_store):
    queries = ["sawtooth flutter waves", WPW_QUERY]
    for query, findings in zip(queries, built_store.search_findings_many(queries, k=4)):
        single = built_store.search_findings(query, k=4)
        assert [f.entry for f in findings] == [f.entry for f in single]
        assert [f.score for f in findings] == pytest.approx([f.score for f in single], abs=1e-6)


def test_linked_entries_surface_each_other(built_store):
    findings = built_store.search_findings("ventricular bigeminy", k=5)
    entries = [f.entry for f in findings]
    assert entries[0] == "ventricular_bigeminy" and "bigeminy" in entries
    assert "bigeminy" in findings[0].related
    dissociation = [f.entry for f in built_store.search_findings("AV dissociation", k=5)]
    assert dissociation[0] == "av_dissociation" and "complete_av_block" in dissociation
    potassium = [f.entry for f in built_store.search_findings("hyperkalaemia", k=5)]
    assert potassium[0] == "el" and "high_t" in potassium


def test_filters_apply_to_findings(built_store):
    findings = built_store.search_findings("tall R wave in V1", k=5, where={"category": "conduction"})
    assert findings and all(f.category == "conduction" for f in findings)
    assert all(p.category == "conduction" for f in findings for p in f.passages)
    only = built_store.search_findings("anything about the QRS", k=5, where={"entry": "crbbb"}, passages=3)
    assert [f.entry for f in only] == ["crbbb"] and len(only[0].passages) == 3
    assert built_store.search_findings("x", k=3, where={"code": "NO-SUCH-CODE"}) == []


def test_captioner_path_still_returns_chunks_of_one_entry(built_store):
    """cqa.caption.Captioner calls search(query, k=, where={"entry": id}) and reads ``.text`` of chunks."""
    passages = built_store.search("Complete right bundle branch block: waveform features on the 12-lead ECG",
                                  k=3, where={"entry": "crbbb"})
    assert len(passages) == 3 and all(isinstance(p, Passage) and p.entry == "crbbb" and p.text for p in passages)


def test_retriever_returns_findings_or_chunks(built_store):
    docs = built_store.retriever(k=4).invoke(WPW_QUERY)
    assert len(docs) == 4 and len({d.metadata["entry"] for d in docs}) == 4
    assert "wpw" in [d.metadata["entry"] for d in docs] and docs[0].metadata["passage_ids"]
    chunks = built_store.retriever(k=4, by_chunk=True).invoke(WPW_QUERY)
    assert len(chunks) == 4 and all("section" in d.metadata for d in chunks)
    assert max(Counter(d.metadata["entry"] for d in chunks).values()) >= 2


def test_cli_query_prints_findings_and_by_chunk_prints_chunks(built_store, capsys):
    assert main(["query", "--store", built_store.label, "-k", "5", "--json", WPW_QUERY]) == 0
    rows = json.loads(capsys.readouterr().out)
    entries = [r["entry"] for r in rows]
    assert len(rows) == 5 and len(set(entries)) == 5 and "wpw" in entries
    assert all(r["passages"] and r["passages"][0]["entry"] == r["entry"] for r in rows)
    assert main(["query", "--store", built_store.label, "-k", "5", "--json", "--by-chunk", WPW_QUERY]) == 0
    chunks = json.loads(capsys.readouterr().out)
    assert len(chunks) == 5 and "passages" not in chunks[0] and {"text", "section", "entry"} <= set(chunks[0])
    assert max(Counter(r["entry"] for r in chunks).values()) >= 2
    assert main(["query", "--store", built_store.label, "-k", "2", WPW_QUERY]) == 0
    text = capsys.readouterr().out
    assert text.startswith("1. [") and "\n2. [" in text and "\n3. [" not in text
    assert main(["query", "--store", built_store.label, "--max-per-entry", "1", WPW_QUERY]) == 2
    assert "--by-chunk" in capsys.readouterr().err
