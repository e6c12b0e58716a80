"""The ranking helpers (retrieval.ranking) and the fusion recomputed by hand on a tiny store (no model)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from retrieval import KnowledgeStore
from retrieval.ranking import (
    CAUSE_WEIGHT,
    RankingParams,
    TermIndex,
    Terms,
    entry_links,
    fold,
    mmr,
    propagate,
    ranks,
    rrf,
    term_tokens,
)

ENTRY = """---
id: {id}
name: {name}
category: {category}
aliases: [{aliases}]
scp_codes: []
snomed_codes: []
mimic_patterns: []
{extra}---
## Definition
{definition}

## Mechanism
{mechanism}

## Diagnostic criteria
- {criteria}

## Waveform features
- {features}

## Common confusions
- {confusions}
"""


def entry_file(folder: Path, entry_id: str, name: str, text: str, *, aliases: str = "", causes: str = "",
               category: str = "rhythm") -> Path:
    """A valid knowledge entry whose sections all repeat ``text`` with small variations."""
    path = folder / f"{entry_id}.md"
    path.write_text(ENTRY.format(id=entry_id, name=name, category=category, aliases=aliases,
                                 extra=f"causes: [{causes}]\n" if causes else "", definition=f"{name}: {text}.",
                                 mechanism=f"Why {text}.", criteria=f"{text} in two leads",
                                 features=f"II: {text}", confusions=f"not {text}"),
                    encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ pure helpers


def test_fold_and_term_tokens_make_spellings_and_numbers_meet():
    assert fold("Ischaemia, hyperkalaemia, repolarisation, oedema") == "ischemia, hyperkalemia, repolarization, edema"
    assert term_tokens("Q waves") == term_tokens("Q wave") == ["q", "wave"]
    assert term_tokens("ST-T abnormalities") == ["st", "t", "abnormality"]
    assert term_tokens("QRS axis") == ["qrs", "axis"]  # no stemming of short or -is words


def test_term_index_longest_match_abbreviations_negation_and_causes():
    index = TermIndex([
        Terms("crbbb", ("Complete right bundle branch block", "RBBB", "right bundle branch block")),
        Terms("irbbb", ("Incomplete right bundle branch block",)),
        Terms("el", ("Electrolyte disturbance", "EL", "hyperkalemia")),
        Terms("high_t", ("Tall T waves",), causes=("hyperkalaemia",)),
        Terms("wpw", ("WPW", "delta wave")),
    ])
    assert index.scores("incomplete right bundle branch block") == {"irbbb": 1.0}  # not also crbbb
    assert index.scores("RBBB") == {"crbbb": 1.0}
    assert index.scores("vänster el-axel") == {}  # "el" in lower case is not the abbreviation EL
    assert index.scores("EL") == {"el": 1.0}
    scores = index.scores("hyperkalaemia")  # British spelling folds onto the American alias
    assert scores == {"el": 1.0, "high_t": CAUSE_WEIGHT}
    assert index.scores("tall T waves without a delta wave") == {"high_t": pytest.approx(3 / 7)}
    assert index.scores("short PR with a delta wave") == {"wpw": pytest.approx(2 / 6)}
    assert index.scores("!!!") == {}


def test_entry_links_join_vocabularies_both_ways():
    links = entry_links([
        Terms("bigeminy", ("Bigeminal pattern", "bigeminy")),
        Terms("ventricular_bigeminy", ("Ventricular bigeminy", "VBig")),
        Terms("av_dissociation", ("AV dissociation",), causes=("complete heart block",)),
        Terms("complete_av_block", ("Complete AV block", "complete heart block", "CHB")),
        Terms("lvh", ("Left ventricular hypertrophy", "LVH")),
    ])
    assert links["bigeminy"] == {"ventricular_bigeminy"} and links["ventricular_bigeminy"] == {"bigeminy"}
    assert links["av_dissociation"] == {"complete_av_block"} and links["complete_av_block"] == {"av_dissociation"}
    assert links["lvh"] == set()


def test_rrf_is_the_weighted_sum_of_reciprocal_ranks():
    signals = {"dense": {"a": 0.9, "b": 0.5, "c": 0.1}, "lexical": {"c": 0.8, "a": 0.2}, "terms": {"b": 1.0}}
    weights = {"dense": 1.0, "lexical": 2.0, "terms": 3.0}
    fused = rrf(signals, weights, k=10)
    assert fused["a"] == pytest.approx(1 / 11 + 2 / 12)
    assert fused["b"] == pytest.approx(1 / 12 + 3 / 11)
    assert fused["c"] == pytest.approx(1 / 13 + 2 / 11)
    assert rrf(signals, {"dense": 1.0}, k=10) == {key: pytest.approx(1 / (10 + r))
                                                  for key, r in ranks(signals["dense"]).items()}


def test_propagate_and_mmr():
    assert propagate({"a": 1.0, "b": 0.1}, {"a": {"b", "c"}}, 0.5) == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert propagate({"a": 1.0}, {"a": {"b"}}, 0.0) == {"a": 1.0}
    vectors = {"a": np.array([1.0, 0.0]), "a2": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    scores = {"a": 1.0, "a2": 0.95, "b": 0.7}
    assert mmr(scores, vectors, 3, 1.0) == ["a", "a2", "b"]  # lambda 1: plain score order
    assert mmr(scores, vectors, 3, 0.5) == ["a", "b", "a2"]  # the near-duplicate waits
    assert mmr(scores, vectors, 2, 0.5) == ["a", "b"]


# ------------------------------------------------------------------------------------------ tiny store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, hash_embeddings):
    folder = tmp_path_factory.mktemp("tiny-knowledge")
    entry_file(folder, "flutter", "Atrial flutter", "sawtooth flutter waves at 300 per minute",
               aliases="AFL, flutter")
    entry_file(folder, "fib", "Atrial fibrillation", "irregularly irregular rhythm without P waves", aliases="AF")
    entry_file(folder, "peaked", "Peaked T waves", "tall narrow symmetric T waves", aliases="tall T waves",
               causes="hyperkalaemia", category="st-t")
    entry_file(folder, "lbbb", "Left bundle branch block", "broad notched R waves in V6", aliases="LBBB",
               category="conduction")
    store = KnowledgeStore.build(tmp_path_factory.mktemp("tiny-store"), embeddings=hash_embeddings(32),
                                 knowledge_dir=folder, progress=False)
    return store


def _recompute(store: KnowledgeStore, query: str) -> tuple[dict[str, float], dict[str, float]]:
    """Chunk and finding scores for ``query`` from scratch: every chunk is a candidate in a tiny store."""
    got = store.vectorstore.get(include=["documents", "metadatas", "embeddings"])
    ids, texts, metas = got["ids"], got["documents"], got["metadatas"]
    vectors = np.asarray(got["embeddings"], dtype=float)
    q = np.asarray(store.embeddings.embed_query(query), dtype=float)
    dense = {i: float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q))) for i, v in zip(ids, vectors)}
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, preprocessor=fold)
    matrix = vectorizer.fit_transform(texts)
    lexical = dict(zip(ids, (matrix @ vectorizer.transform([query]).T).toarray().ravel().tolist()))
    import json

    terms = TermIndex([Terms(m["entry"], tuple(json.loads(m["terms"])["names"]),
                             tuple(json.loads(m["terms"])["causes"])) for m in metas if m.get("terms")])
    term_scores = terms.scores(query)
    weights, k = store.ranking.weights, store.ranking.rrf_k
    entry_of = {i: m["entry"] for i, m in zip(ids, metas)}

    def rank_of(scores: dict[str, float]) -> dict[str, int]:
        return {key: n for n, key in enumerate(sorted(scores, key=lambda x: (-scores[x], x)), start=1)}

    d_rank, l_rank = rank_of(dense), rank_of({i: v for i, v in lexical.items() if v > 0})
    t_rank = rank_of({e: v for e, v in term_scores.items() if v > 0})
    chunk_scores = {}
    for i in ids:
        score = weights["dense"] / (k + d_rank[i])
        score += weights["lexical"] / (k + l_rank[i]) if i in l_rank else 0.0
        score += weights["terms"] / (k + t_rank[entry_of[i]]) if entry_of[i] in t_rank else 0.0
        chunk_scores[i] = score
    best_dense: dict[str, float] = {}
    best_lexical: dict[str, float] = {}
    for i in ids:
        e = entry_of[i]
        best_dense[e] = max(best_dense.get(e, -math.inf), dense[i])
        if lexical[i] > 0:
            best_lexical[e] = max(best_lexical.get(e, 0.0), lexical[i])
    finding_scores = {e: 0.0 for e in best_dense}
    for e, r in rank_of(best_dense).items():
        finding_scores[e] += weights["dense"] / (k + r)
    for e, r in rank_of(best_lexical).items():
        finding_scores[e] += weights["lexical"] / (k + r)
    for e, r in t_rank.items():
        finding_scores[e] += weights["terms"] / (k + r)
    return chunk_scores, finding_scores


@pytest.mark.parametrize("query", ["sawtooth waves in II", "tall T waves from hyperkalaemia", "AF", "LBBB in V6"])
def test_fusion_matches_a_recomputation_on_a_tiny_store(tiny, query):
    tiny.ranking = RankingParams(link_share=0.0, mmr_lambda=1.0)  # the two re-orderings are tested separately
    chunk_scores, finding_scores = _recompute(tiny, query)
    passages = tiny.search(query, k=len(chunk_scores))
    assert {p.id: p.score for p in passages} == pytest.approx(chunk_scores)
    assert [p.score for p in passages] == sorted(chunk_scores.values(), reverse=True)
    findings = tiny.search_findings(query, k=4, passages=3)
    assert [f.entry for f in findings] == sorted(finding_scores, key=lambda e: (-finding_scores[e], e))
    assert {f.entry: f.score for f in findings} == pytest.approx(finding_scores)
    for finding in findings:
        assert {p.entry for p in finding.passages} == {finding.entry}
        assert [p.score for p in finding.passages] == sorted((p.score for p in finding.passages), reverse=True)


def test_tiny_store_answers_named_findings_first(tiny):
    tiny.ranking = RankingParams()
    assert tiny.search_findings("AFL", k=1)[0].entry == "flutter"
    top = tiny.search_findings("hyperkalaemia", k=2)
    assert top[0].entry == "peaked" and top[0].term_score == pytest.approx(CAUSE_WEIGHT)


def test_stores_of_the_previous_chunk_format_are_stale(tiny):
    assert tiny.manifest["format"] == 2
    original, tiny.manifest = tiny.manifest, dict(tiny.manifest, format=1)
    try:
        assert tiny.is_stale()  # built before summary chunks carried terms: rebuild (incremental)
    finally:
        tiny.manifest = original
